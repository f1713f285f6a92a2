"""The environment a benchmark ran in: CPU, BLAS and its threads, GPU, driver, library versions.

Every probe is best-effort: a missing library or file gives ``None`` (or an ``"error"`` entry),
never an exception, because an environment report must not stop a benchmark.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

from gpunn._version import __version__
from gpunn.backend import Backend

__all__ = ["blas_threads", "cpu_model", "environment"]


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> dict[str, int | None]:
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {"logical": os.cpu_count(), "physical": physical, "usable": usable}


def _load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages when the report is made: other work on the machine."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _blas_pools() -> list[dict[str, Any]]:
    """NumPy's BLAS as threadpoolctl sees it: library, version, architecture, threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    pools = []
    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        pools.append(
            {
                "library": info.get("internal_api"),
                "version": info.get("version"),
                "threads": info.get("num_threads"),
                "architecture": info.get("architecture"),
                "threading_layer": info.get("threading_layer"),
                "file": os.path.basename(str(info.get("filepath", ""))),
            }
        )
    return pools


def blas_threads() -> int | None:
    """Threads of NumPy's BLAS (the first BLAS pool threadpoolctl finds), or None."""
    pools = _blas_pools()
    return pools[0]["threads"] if pools else None


def _numpy_blas_build() -> str | None:
    """The BLAS NumPy was built against (NumPy >= 1.26 reports it as a dict)."""
    try:
        config = np.show_config(mode="dicts")
        return str(config["Build Dependencies"]["blas"]["name"])
    except Exception:  # older NumPy prints instead of returning
        return None


def _gpu(backend: Backend) -> dict[str, Any]:
    """Name, memory, compute capability, driver and runtime versions of a CuPy backend."""
    xp = backend.xp
    try:
        runtime = xp.cuda.runtime
        props = runtime.getDeviceProperties(backend.device)
        free, total = xp.cuda.Device(backend.device).mem_info
        return {
            "backend": backend.spec,
            "name": backend.gpu_name,
            "memory_total_bytes": int(total),
            "memory_free_bytes": int(free),
            "compute_capability": f"{props.get('major')}.{props.get('minor')}",
            "multiprocessors": props.get("multiProcessorCount"),
            "driver_version": _cuda_version(runtime.driverGetVersion()),
            "cuda_runtime_version": _cuda_version(runtime.runtimeGetVersion()),
            "cupy_version": xp.__version__,
            "tf32": backend.tf32,
        }
    except Exception as exc:
        return {"backend": backend.spec, "error": f"{type(exc).__name__}: {exc}"}


def _cuda_version(v: int) -> str:
    """12040 -> "12.4"."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def _torch(torch: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "mkl": bool(torch.backends.mkl.is_available()),
        "cuda_available": bool(torch.cuda.is_available()),
        "cuda_version": torch.version.cuda,
    }
    if info["cuda_available"]:
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def environment(backends: list[Backend], torch: Any = None, torch_note: str = "") -> dict[str, Any]:
    """The environment record stored in bench.json (see :mod:`gpunn.bench.results`)."""
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": _cores(),
        "load_average": _load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpunn_version": __version__,
        "numpy_version": np.__version__,
        "numpy_blas_build": _numpy_blas_build(),
        "blas": _blas_pools(),
        "gpus": [_gpu(b) for b in backends if b.is_gpu],
        "torch": _torch(torch) if torch is not None else None,
        "torch_note": torch_note,
    }
