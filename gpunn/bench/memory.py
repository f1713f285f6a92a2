"""Peak memory per configuration: the process's host RSS and the CuPy memory pool on the GPU.

RSS comes from psutil (current resident set size) and falls back to ``resource``'s
``ru_maxrss`` (the lifetime peak) where psutil is missing. The GPU figures are the CuPy default
pool's ``used_bytes()`` (held by live arrays) and ``total_bytes()`` (held by the pool), read
through ``backend.xp`` so nothing here imports CuPy.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["MemoryPeak", "host_rss_bytes"]


def host_rss_bytes() -> int:
    """Resident set size of this process in bytes."""
    try:
        import psutil
    except ImportError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: KiB
    return int(psutil.Process().memory_info().rss)


def _cupy_pool(backend: Any) -> Any:
    if backend is None or not getattr(backend, "is_gpu", False):
        return None
    return backend.xp.get_default_memory_pool()


class MemoryPeak:
    """Tracks the largest RSS and pool sizes seen by :meth:`sample` (called between blocks)."""

    def __init__(self, backend: Any = None) -> None:
        self.pool = _cupy_pool(backend)
        self.start_rss = host_rss_bytes()
        self.rss = self.start_rss
        self.gpu_used: int | None = None
        self.gpu_total: int | None = None
        self.sample()

    def sample(self) -> None:
        self.rss = max(self.rss, host_rss_bytes())
        if self.pool is not None:
            self.gpu_used = max(self.gpu_used or 0, int(self.pool.used_bytes()))
            self.gpu_total = max(self.gpu_total or 0, int(self.pool.total_bytes()))

    @property
    def growth(self) -> int:
        """RSS added since this tracker was made (what the configuration itself allocated)."""
        return max(0, self.rss - self.start_rss)
