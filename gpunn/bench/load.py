"""How much of the CPU other processes used while a point was timed.

Benchmarks on a shared machine are only as good as the quiet they ran in. This module compares
the whole machine's busy CPU time with this process's own CPU time (all its threads, BLAS
workers included) over the same interval; the rest is other work, reported as a fraction of all
cores (0.0: nothing else ran; 0.5: other processes kept half the cores busy). It needs psutil;
without it the fraction is None.
"""

from __future__ import annotations

import time

__all__ = ["OtherLoad"]


def _busy_seconds(times: object) -> float:
    """Non-idle CPU seconds in a ``psutil.cpu_times()`` record."""
    idle = getattr(times, "idle", 0.0) + getattr(times, "iowait", 0.0)
    return sum(times) - idle  # type: ignore[arg-type]


class OtherLoad:
    """Start measuring at construction; :meth:`fraction` reads the share so far."""

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError:
            self.psutil = None
            return
        self.psutil = psutil
        self.me = psutil.Process()
        self.cores = psutil.cpu_count() or 1
        self.start = time.monotonic()
        self.machine0 = _busy_seconds(psutil.cpu_times())
        own = self.me.cpu_times()
        self.own0 = own.user + own.system

    def fraction(self) -> float | None:
        if self.psutil is None:
            return None
        wall = time.monotonic() - self.start
        if wall <= 0:
            return 0.0
        machine = _busy_seconds(self.psutil.cpu_times()) - self.machine0
        own = self.me.cpu_times()
        other = machine - (own.user + own.system - self.own0)
        return round(min(1.0, max(0.0, other / (wall * self.cores))), 3)
