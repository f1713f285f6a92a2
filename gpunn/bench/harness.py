"""The sweep: every (model, batch size, backend) point timed against its GEMM limit and PyTorch.

A model is an MLP (layer widths) or a convolutional preset such as LeNet-5
(:mod:`gpunn.bench.workload`); PyTorch runs the same network layer for layer
(:func:`gpunn.bench.torch_ref.torch_network`).

At each point the gpunn training step, gpunn inference, the bare GEMMs of the step and (when
PyTorch is there) torch's training step and inference on the matching device (NumPy <-> torch
CPU, CuPy <-> torch CUDA) are timed *interleaved* (:func:`gpunn.bench.timing.time_interleaved`),
so their ratios come from the same minutes of the same machine. Each point yields one gpunn row
and, with PyTorch, one torch row, with the fields listed in :mod:`gpunn.bench.results`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from gpunn.backend import Backend
from gpunn.bench.crossover import crossover
from gpunn.bench.load import OtherLoad
from gpunn.bench.memory import MemoryPeak, host_rss_bytes
from gpunn.bench.results import flag_ratios
from gpunn.bench.timing import Policy, Timed, time_interleaved
from gpunn.bench.torch_ref import TorchWorkload
from gpunn.bench.workload import (
    OPTIMIZERS,
    ConvNet,
    GemmWorkload,
    GpunnWorkload,
    Model,
    im2col_bytes,
    model_label,
    model_name,
)

__all__ = [
    "CONV_BATCH_SIZES",
    "DEFAULT_BATCH_SIZES",
    "SweepConfig",
    "compute_crossovers",
    "default_batch_sizes",
    "run_sweep",
]

#: powers of 4 from 1 to 16384 (the issue's sweep), for the MLPs
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 4, 16, 64, 256, 1024, 4096, 16384)
#: powers of 2 from 16 to 256, for the convolutional presets (a LeNet-5 step at batch 16384
#: would hold over 2 GB of im2col columns)
CONV_BATCH_SIZES: tuple[int, ...] = (16, 32, 64, 128, 256)


def default_batch_sizes(model: Model) -> list[int]:
    """The batch sizes a model is swept over when none are given."""
    return list(CONV_BATCH_SIZES if isinstance(model, ConvNet) else DEFAULT_BATCH_SIZES)


@dataclass
class SweepConfig:
    """What to measure. ``torch`` is the imported module, or None to skip the comparison."""

    backends: list[Backend]
    models: list[Model]
    batch_sizes: list[int] | None = None  # None: each model's default_batch_sizes
    dtype: str = "float32"
    optimizer: str = "sgd"
    policy: Policy = field(default_factory=Policy)
    torch: Any = None
    seed: int = 0
    clock: Callable[[], float] | None = None  # None: time.perf_counter (tests pass a fake)

    def batches(self, model: Model) -> list[int]:
        """The batch sizes ``model`` is measured at."""
        return list(self.batch_sizes) if self.batch_sizes else default_batch_sizes(model)

    def settings(self) -> dict[str, Any]:
        """The JSON ``settings`` record."""
        return {
            "backends": [b.spec for b in self.backends],
            "models": [model_label(m) for m in self.models],
            "batch_sizes": sorted({b for m in self.models for b in self.batches(m)}),
            "batch_sizes_per_model": {model_label(m): self.batches(m) for m in self.models},
            "dtype": self.dtype,
            "optimizer": self.optimizer,
            "optimizer_hyperparams": OPTIMIZERS[self.optimizer],
            "activation": "ReLU",
            "loss": "softmax cross-entropy",
            "compare_torch": self.torch is not None,
            "policy": asdict(self.policy),
            "seed": self.seed,
        }


def _torch_device(backend: Backend, torch: Any) -> str | None:
    """The torch device that matches a gpunn backend, or None when torch has none."""
    if torch is None:
        return None
    if not backend.is_gpu:
        return "cpu"
    return f"cuda:{backend.device}" if torch.cuda.is_available() else None


def _free_gpu(backend: Backend, torch: Any) -> None:
    """Return cached device memory so each point's pool figures are its own."""
    gc.collect()
    if backend.is_gpu:
        backend.xp.get_default_memory_pool().free_all_blocks()
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def _base_row(model: Model, batch: int, cfg: SweepConfig) -> dict[str, Any]:
    return {
        "model": model_label(model),
        "model_name": model_name(model),
        "batch": batch,
        "dtype": cfg.dtype,
        "optimizer": cfg.optimizer.upper() if cfg.optimizer == "sgd" else cfg.optimizer.title(),
    }


def measure_point(
    model: Model, batch: int, backend: Backend, cfg: SweepConfig
) -> list[dict[str, Any]]:
    """Time one (model, batch size, backend) point; returns the gpunn row and the torch row."""
    if backend.is_gpu:
        with backend.xp.cuda.Device(backend.device):  # workspaces are made on the current device
            return _measure_point(model, batch, backend, cfg)
    return _measure_point(model, batch, backend, cfg)


def _measure_point(
    model: Model, batch: int, backend: Backend, cfg: SweepConfig
) -> list[dict[str, Any]]:
    _free_gpu(backend, cfg.torch)
    mem = MemoryPeak(backend)
    gw = GpunnWorkload.create(
        model, batch, backend, dtype=cfg.dtype, optimizer=cfg.optimizer, seed=cfg.seed
    )
    initial = gw.model.state_dict()  # PyTorch starts from these same weights
    gw.train_step()  # the first step allocates the workspaces: part of the footprint
    gw.infer()
    backend.synchronize()
    mem.sample()
    gpunn_setup, gpu_used, gpu_total = mem.growth, mem.gpu_used, mem.gpu_total
    cols = im2col_bytes(gw.model) if isinstance(model, ConvNet) else None

    entries = [
        Timed("train", gw.train_step, gw.sync, group="gpunn"),
        Timed("infer", gw.infer, gw.sync, group="gpunn"),
    ]
    gemm = GemmWorkload(model, batch, backend, cfg.dtype)
    entries.append(Timed("gemm", gemm.run, gemm.sync, group="gpunn"))

    tw = None
    device = _torch_device(backend, cfg.torch)
    if device is not None:
        rss0 = host_rss_bytes()
        x, y = backend.to_numpy(gw.x), backend.to_numpy(gw.y)
        lr = OPTIMIZERS[cfg.optimizer]["lr"]
        tw = TorchWorkload(
            cfg.torch,
            initial,
            x,
            y,
            device=device,
            optimizer=cfg.optimizer,
            lr=lr,
            layers=gw.model.layers,
        )
        tw.reset_peak_memory()
        tw.train_step()
        tw.infer()
        tw.sync()
        torch_setup = max(0, host_rss_bytes() - rss0)
        entries += [Timed("torch_train", tw.train_step, tw.sync, group="torch")]
        entries += [Timed("torch_infer", tw.infer, tw.sync, group="torch")]

    clock = {"clock": cfg.clock} if cfg.clock is not None else {}
    load = OtherLoad()
    t = time_interleaved(entries, cfg.policy, between=mem.sample, **clock)
    other_cpu = load.fraction()

    row = _base_row(model, batch, cfg)
    row |= {"params": gw.model.num_params, "engine": "gpunn", "device": backend.spec}
    row |= _throughput(t["train"], t["infer"], batch)
    row |= t["gemm"].as_dict("gemm") | {"gemm_count": gemm.count}
    row["limit_fraction"] = t["gemm"].median_s / t["train"].median_s
    row["limit_fraction_best"] = t["gemm"].min_s / t["train"].min_s
    row |= {"rss_peak_bytes": mem.rss, "rss_setup_bytes": gpunn_setup}
    row |= {"gpu_used_bytes": gpu_used, "gpu_total_bytes": gpu_total, "im2col_bytes": cols}
    row["other_cpu"] = other_cpu
    rows = [row]
    if tw is not None:
        trow = _base_row(model, batch, cfg)
        trow |= {"params": row["params"], "engine": "torch", "device": device}
        trow |= _throughput(t["torch_train"], t["torch_infer"], batch)
        trow |= {"rss_peak_bytes": mem.rss, "rss_setup_bytes": torch_setup}
        used, total = tw.gpu_memory()
        trow |= {"gpu_used_bytes": used, "gpu_total_bytes": total, "other_cpu": other_cpu}
        row["vs_torch_train"] = row["train_samples_per_s"] / trow["train_samples_per_s"]
        row["vs_torch_infer"] = row["infer_samples_per_s"] / trow["infer_samples_per_s"]
        row["vs_torch_train_best"] = trow["train_min_s"] / row["train_min_s"]
        rows.append(trow)
    row |= flag_ratios(row, rows[1] if tw is not None else None)  # *_noisy, *_disturbed
    return rows


def _throughput(train: Any, infer: Any, batch: int) -> dict[str, Any]:
    return (
        train.as_dict("train")
        | {"train_samples_per_s": train.per_second(batch)}
        | infer.as_dict("infer")
        | {"infer_samples_per_s": infer.per_second(batch)}
    )


def run_sweep(
    cfg: SweepConfig, progress: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Every point of the grid, model by model, batch by batch; ``progress`` gets each row."""
    rows: list[dict[str, Any]] = []
    for model in cfg.models:
        for batch in cfg.batches(model):
            for backend in cfg.backends:
                for row in measure_point(model, batch, backend, cfg):
                    rows.append(row)
                    if progress is not None:
                        progress(row)
    return rows


def series_name(row: dict[str, Any]) -> str:
    """The line a row belongs to in tables and plots, e.g. ``"gpunn numpy"``, ``"torch cpu"``."""
    return f"{row['engine']} {row['device']}"


def _is_gpu_row(row: dict[str, Any]) -> bool:
    return str(row["device"]).startswith(("cupy", "cuda"))


def compute_crossovers(
    rows: list[dict[str, Any]],
    baseline_rows: list[dict[str, Any]] | None = None,
    baseline_source: str = "",
) -> list[dict[str, Any]]:
    """Crossover entries (JSON ``crossovers``) for every GPU series against the CPU series of the
    same engine, model, dtype and optimizer, from this run and from a baseline file."""
    sources = [("this run", rows)]
    if baseline_rows:
        sources.append((baseline_source or "baseline", baseline_rows))
    out = []
    for gpu_row_key in sorted({_key(r) for r in rows if _is_gpu_row(r)}):
        engine, device, model, dtype, optimizer = gpu_row_key
        gpu = {r["batch"]: r["train_samples_per_s"] for r in rows if _key(r) == gpu_row_key}
        for source, candidates in sources:
            cpu_rows = [
                r
                for r in candidates
                if not _is_gpu_row(r)
                and (r["engine"], r["model"], r["dtype"], r["optimizer"])
                == (engine, model, dtype, optimizer)
            ]
            if not cpu_rows:
                continue
            cpu = {r["batch"]: r["train_samples_per_s"] for r in cpu_rows}
            result = crossover(cpu, gpu)
            out.append(
                {
                    "model": model,
                    "dtype": dtype,
                    "optimizer": optimizer,
                    "gpu": f"{engine} {device}",
                    "cpu": series_name(cpu_rows[0]),
                    "cpu_source": source,
                    "metric": "train_samples_per_s",
                }
                | result.as_dict()
            )
    return out


def _key(row: dict[str, Any]) -> tuple[str, str, str, str, str]:
    return (row["engine"], row["device"], row["model"], row["dtype"], row["optimizer"])
