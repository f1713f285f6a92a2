"""The pytest-benchmark suite's grid: models x batch sizes x backends, from the environment.

Run it with ``pytest bench/ --benchmark-only`` (the normal test run never collects ``bench/``:
``testpaths = ["tests"]``). The grid is the one ``gpunn bench`` sweeps, narrowed with:

* ``GPUNN_BENCH_MODELS``: comma list of presets or widths (default ``small,mnist,wide,lenet5``),
* ``GPUNN_BENCH_BATCHES``: comma list of batch sizes (default: each model's own, as
  ``gpunn bench``: ``1,4,16,...,16384`` for an MLP, ``16,32,64,128,256`` for lenet5),
* ``GPUNN_BENCH_BACKENDS``: comma list (default ``numpy``, plus ``cupy`` when a GPU is usable),
* ``GPUNN_BENCH_SMOKE=1``: a tiny grid (a small MLP at batch sizes 2 and 8, LeNet-5 at 2) that
  checks the suite still works; ``tests/test_bench.py`` runs it in the normal tests.

Benchmarks are grouped by model and batch size, so each group of pytest-benchmark's table
compares gpunn's step, its inference, the bare GEMMs and PyTorch at one point.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import pytest

from gpunn.backend import Backend, available_backends, get_backend
from gpunn.bench.env import blas_threads
from gpunn.bench.harness import default_batch_sizes
from gpunn.bench.torch_ref import load_torch
from gpunn.bench.workload import CONV_MODELS, MODELS, Model, model_label, parse_model

SMOKE = os.environ.get("GPUNN_BENCH_SMOKE", "") not in ("", "0")
SETTLE_S = 0.0 if SMOKE else 0.25  # let the other library's worker threads go idle (timing.py)


def _grid() -> list[tuple[Model, int, str]]:
    """The (model, batch size, backend) points to benchmark."""
    if SMOKE:
        return [
            ((16, 8, 4), 2, "numpy"),
            ((16, 8, 4), 8, "numpy"),
            (CONV_MODELS["lenet5"], 2, "numpy"),
        ]
    models = os.environ.get("GPUNN_BENCH_MODELS", ",".join([*MODELS, *CONV_MODELS]))
    batches = os.environ.get("GPUNN_BENCH_BATCHES", "")
    default_backends = ["numpy"] + [
        s.name for s in available_backends() if s.name.startswith("cupy") and s.usable
    ][:1]
    backends = os.environ.get("GPUNN_BENCH_BACKENDS", ",".join(default_backends))
    chosen = [int(b) for b in batches.split(",") if b.strip()]
    return [
        (model, batch, backend.strip())
        for model in (parse_model(m) for m in models.split(",") if m.strip())
        for batch in (chosen or default_batch_sizes(model))
        for backend in backends.split(",")
        if backend.strip()
    ]


POINTS = _grid()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every benchmark that asks for ``point`` over the grid."""
    if "point" in metafunc.fixturenames:
        ids = [f"{model_label(m)}-b{b}-{be}" for m, b, be in POINTS]
        metafunc.parametrize("point", POINTS, ids=ids)


@pytest.fixture
def backend_of() -> Any:
    def get(spec: str) -> Backend:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_backend(spec)

    return get


@pytest.fixture(scope="session")
def torch_module() -> Any:
    """PyTorch with as many threads as NumPy's BLAS, or a skip naming why it is missing."""
    torch, why = load_torch()
    if torch is None:
        pytest.skip(why)
    threads = blas_threads()
    if threads:
        torch.set_num_threads(threads)
    return torch


@pytest.fixture
def prepare() -> Any:
    """Warm a callable up (untimed) and let idle thread pools settle; returns the callable."""

    def run(fn: Any, calls: int = 3) -> Any:
        for _ in range(calls):
            fn()
        time.sleep(SETTLE_S)
        return fn

    return run
