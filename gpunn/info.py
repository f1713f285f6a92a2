"""What `gpunn info` reports: backends and why they are (not) usable, versions, GPU and BLAS."""

from __future__ import annotations

import platform
from typing import Any

import numpy

from gpunn._version import __version__
from gpunn.backend import _import_cupy, available_backends


def blas_info() -> str:
    """The BLAS library NumPy calls, with its thread count where threadpoolctl can tell."""
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            p = pools[0]
            return f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)"
    except Exception:  # threadpoolctl is optional
        pass
    try:
        config: Any = numpy.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:
        return "unknown"


def collect() -> dict[str, Any]:
    """Everything `gpunn info` prints, as a dict (also used by the benchmarks)."""
    report: dict[str, Any] = {
        "gpunn": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "blas": blas_info(),
        "backends": [
            {"name": s.name, "usable": s.usable, "reason": s.reason, "detail": s.detail}
            for s in available_backends()
        ],
    }
    try:
        cupy = _import_cupy()
        report["cupy"] = cupy.__version__
    except Exception as exc:
        report["cupy"] = f"not available ({type(exc).__name__})"
        return report
    report["gpus"] = []
    try:
        runtime = cupy.cuda.runtime
        report["cuda_runtime"] = _cuda_version(runtime.runtimeGetVersion())
        report["cuda_driver"] = _cuda_version(runtime.driverGetVersion())
        for device in range(runtime.getDeviceCount()):
            props = runtime.getDeviceProperties(device)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            mem = props["totalGlobalMem"] / 2**30
            report["gpus"].append({"device": device, "name": name, "memory_gib": round(mem, 1)})
    except Exception as exc:
        report["cuda_error"] = f"{type(exc).__name__}: {exc}"
    return report


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}" if v else "none"


def render(report: dict[str, Any]) -> str:
    """The report as aligned text lines."""
    lines = [f"gpunn {report['gpunn']}  (Python {report['python']}, {report['platform']})"]
    lines.append("backends:")
    for b in report["backends"]:
        state = f"usable ({b['detail']})" if b["usable"] else f"not usable: {b['reason']}"
        lines.append(f"  {b['name']:<8} {state}")
    lines.append(f"numpy    {report['numpy']}   BLAS: {report['blas']}")
    lines.append(f"cupy     {report['cupy']}")
    for key in ("cuda_runtime", "cuda_driver", "cuda_error"):
        if key in report:
            lines.append(f"{key.replace('_', ' '):<8} {report[key]}")
    for gpu in report.get("gpus", []):
        lines.append(f"gpu {gpu['device']}    {gpu['name']}, {gpu['memory_gib']} GiB")
    return "\n".join(lines)
