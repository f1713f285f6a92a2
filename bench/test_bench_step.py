"""Benchmarks of one (model, batch size, backend) point: gpunn's training step and inference,
the bare GEMMs of the step, and PyTorch's step and inference on the matching device (the same
network, MLP or LeNet-5, layer for layer).

Every timed callable ends with the device synchronisation (the backend's ``synchronize``, or
``torch.cuda.synchronize``), so pytest-benchmark's clock reads see finished work.
"""

from __future__ import annotations

from typing import Any

import pytest

from gpunn.bench.torch_ref import TorchWorkload
from gpunn.bench.workload import OPTIMIZERS, GemmWorkload, GpunnWorkload, model_label


def _synced(fn: Any, sync: Any) -> Any:
    def call() -> None:
        fn()
        sync()

    return call


def _record(benchmark: Any, point: tuple, engine: str) -> None:
    model, batch, backend = point
    benchmark.group = f"{model_label(model)} batch={batch} {backend}"
    benchmark.extra_info.update({"engine": engine, "batch": batch, "backend": backend})


def _samples_per_s(benchmark: Any, batch: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # absent under --benchmark-disable
        benchmark.extra_info["samples_per_s"] = batch / stats.stats.median


def test_gpunn_train_step(benchmark: Any, point: tuple, backend_of: Any, prepare: Any) -> None:
    model, batch, spec = point
    w = GpunnWorkload.create(model, batch, backend_of(spec))
    _record(benchmark, point, "gpunn train")
    benchmark(prepare(_synced(w.train_step, w.sync)))
    _samples_per_s(benchmark, batch)


def test_gpunn_inference(benchmark: Any, point: tuple, backend_of: Any, prepare: Any) -> None:
    model, batch, spec = point
    w = GpunnWorkload.create(model, batch, backend_of(spec))
    _record(benchmark, point, "gpunn infer")
    benchmark(prepare(_synced(w.infer, w.sync)))
    _samples_per_s(benchmark, batch)


def test_bare_gemms(benchmark: Any, point: tuple, backend_of: Any, prepare: Any) -> None:
    """The limit: only the matrix products of one training step, same library and layouts."""
    model, batch, spec = point
    g = GemmWorkload(model, batch, backend_of(spec))
    _record(benchmark, point, "bare GEMMs")
    benchmark(prepare(_synced(g.run, g.sync)))
    _samples_per_s(benchmark, batch)


def _torch_workload(torch: Any, point: tuple, backend_of: Any) -> TorchWorkload:
    model, batch, spec = point
    backend = backend_of(spec)
    if backend.is_gpu and not torch.cuda.is_available():
        pytest.skip("this PyTorch has no usable CUDA device")
    device = f"cuda:{backend.device}" if backend.is_gpu else "cpu"
    w = GpunnWorkload.create(model, batch, backend)  # same weights and batch as gpunn's
    return TorchWorkload(
        torch,
        w.model.state_dict(),
        backend.to_numpy(w.x),
        backend.to_numpy(w.y),
        device=device,
        lr=OPTIMIZERS["sgd"]["lr"],
        layers=w.model.layers,
    )


def test_torch_train_step(
    benchmark: Any, point: tuple, backend_of: Any, prepare: Any, torch_module: Any
) -> None:
    t = _torch_workload(torch_module, point, backend_of)
    _record(benchmark, point, "torch train")
    benchmark(prepare(_synced(t.train_step, t.sync)))
    _samples_per_s(benchmark, point[1])


def test_torch_inference(
    benchmark: Any, point: tuple, backend_of: Any, prepare: Any, torch_module: Any
) -> None:
    t = _torch_workload(torch_module, point, backend_of)
    _record(benchmark, point, "torch infer")
    benchmark(prepare(_synced(t.infer, t.sync)))
    _samples_per_s(benchmark, point[1])
