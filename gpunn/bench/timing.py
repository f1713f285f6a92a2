"""Timing done right: warm-up excluded, device synchronised before every clock read, repeated
until the spread is small, median reported with min and max.

One *repeat* is a block of ``calls`` back-to-back calls followed by one synchronisation; the
block is sized during warm-up so it lasts at least ``min_block_s`` (a single call of a tiny
model is only a few microseconds, too short to time alone, and on a GPU a synchronisation after
every call would measure launch latency rather than throughput). The per-call time of a repeat
is the block time divided by ``calls``.

Several callables can be timed *interleaved*, so slow drifts of the machine (other processes,
clock boosting, a noisy neighbour on a virtual machine) affect them alike and their ratios stay
meaningful: gpunn, the bare GEMMs and PyTorch are measured this way. Callables of one *group*
(one threading runtime: gpunn and its GEMMs share NumPy's BLAS threads, PyTorch has its own
OpenMP pool) alternate block by block; groups take turns of about ``turn_s``, with a pause of
``settle_s`` before each change of group. The pause matters on a small CPU: OpenBLAS and OpenMP
worker threads keep spinning for up to ~0.1 s after their last call, and on 2 cores the spinning
pool of one library halves the speed of the other (measured here: PyTorch's step at batch 1024
took 12 ms right after NumPy work instead of 6 ms).

Stopping rule: a callable is finished after at least ``min_repeats`` repeats once the relative
spread (interquartile range / median) is at most ``target_spread``, or the time spent timing it
reaches ``budget_s``, or ``max_repeats`` is reached; callables timed together are all timed until
every one of them is finished. ``Timing.converged`` says whether the spread target was met.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Policy", "Timed", "Timing", "time_call", "time_interleaved"]

Clock = Callable[[], float]


@dataclass(frozen=True)
class Policy:
    """How long and how often to time; the defaults keep a full CLI sweep to minutes."""

    warmup_calls: int = 2  # at least this many untimed calls ...
    warmup_s: float = 0.05  # ... lasting at least this long in total
    min_repeats: int = 7
    max_repeats: int = 500
    target_spread: float = 0.05  # interquartile range / median at which timing stops
    budget_s: float = 1.0  # time spent timing one callable at one point, after min_repeats
    min_block_s: float = 0.005  # a repeat lasts at least this long
    turn_s: float = 0.5  # a group times its callables this long before the next group's turn
    settle_s: float = 0.25  # pause before a group's turn, so other thread pools go idle


@dataclass
class Timed:
    """A callable to time and the synchronisation that waits for the work it queued.

    ``sync`` is the backend's ``synchronize`` (a no-op on NumPy, a device-wide wait on CuPy);
    it is called before the clock is started and before it is read.
    """

    name: str
    fn: Callable[[], object]
    sync: Callable[[], None]
    group: str = ""  # callables sharing a thread pool; groups take turns (module docstring)
    samples: list[float] = field(default_factory=list)
    calls: int = 1
    spent_s: float = 0.0


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median, min and max over the repeats."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    calls: int  # calls per repeat
    spread: float  # interquartile range / median
    converged: bool  # True: spread reached target_spread; False: stopped by budget/max_repeats

    def per_second(self, items: int) -> float:
        """Items (samples) per second at the median time."""
        return items / self.median_s if self.median_s > 0 else math.inf

    def as_dict(self, prefix: str) -> dict[str, float | int | bool]:
        return {
            f"{prefix}_s": self.median_s,
            f"{prefix}_min_s": self.min_s,
            f"{prefix}_max_s": self.max_s,
            f"{prefix}_repeats": self.repeats,
            f"{prefix}_spread": self.spread,
        }


def relative_spread(samples: Sequence[float]) -> float:
    """Interquartile range / median (robust to the odd outlier a busy machine produces)."""
    if len(samples) < 2:
        return math.inf
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    med = statistics.median(samples)
    return (q3 - q1) / med if med > 0 else 0.0


def _summary(t: Timed, policy: Policy) -> Timing:
    spread = relative_spread(t.samples)
    return Timing(
        median_s=statistics.median(t.samples),
        min_s=min(t.samples),
        max_s=max(t.samples),
        repeats=len(t.samples),
        calls=t.calls,
        spread=spread,
        converged=spread <= policy.target_spread,
    )


def _warm_up(t: Timed, policy: Policy, clock: Clock) -> None:
    """Untimed calls (first-call allocations, caches, cuBLAS handles); sizes the block."""
    t.sync()
    start = clock()
    n = 0
    while True:
        t.fn()
        t.sync()
        n += 1
        elapsed = clock() - start
        if n >= policy.warmup_calls and elapsed >= policy.warmup_s:
            break
    per_call = elapsed / n
    t.calls = max(1, math.ceil(policy.min_block_s / per_call)) if per_call > 0 else 1


def _repeat(t: Timed, clock: Clock) -> float:
    """Time one block: synchronise, start the clock, run, synchronise, read the clock."""
    fn = t.fn
    t.sync()  # work queued earlier must not be billed to this block
    start = clock()
    for _ in range(t.calls):
        fn()
    t.sync()  # a GPU returns before the kernels finish: wait before reading the clock
    return clock() - start


def _finished(t: Timed, policy: Policy) -> bool:
    n = len(t.samples)
    if n < policy.min_repeats:
        return False
    return (
        n >= policy.max_repeats
        or t.spent_s >= policy.budget_s
        or relative_spread(t.samples) <= policy.target_spread
    )


def time_interleaved(
    entries: Sequence[Timed],
    policy: Policy = Policy(),
    *,
    clock: Clock = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    between: Callable[[], None] | None = None,
) -> dict[str, Timing]:
    """Time every entry until each one meets the stopping rule; see the module docstring.

    ``between`` runs after every block, outside the timed region (used to sample memory).
    """
    collecting = gc.isenabled()
    gc.disable()  # as timeit does: a collection triggered by one callable must not bill another
    try:
        _time_rounds(entries, policy, clock, sleep, between)
    finally:
        if collecting:
            gc.enable()
    return {t.name: _summary(t, policy) for t in entries}


def _time_rounds(
    entries: Sequence[Timed],
    policy: Policy,
    clock: Clock,
    sleep: Callable[[float], None],
    between: Callable[[], None] | None,
) -> None:
    groups: dict[str, list[Timed]] = {}
    for t in entries:
        groups.setdefault(t.group, []).append(t)
    several = len(groups) > 1
    for members in groups.values():
        if several:
            sleep(policy.settle_s)
        for t in members:
            _warm_up(t, policy, clock)
    # Every callable keeps being timed until all of them meet the stopping rule, so their
    # medians cover the same stretch of time (a fast phase of the machine for one and a slow
    # phase for the other would make their ratio meaningless).
    while not all(_finished(t, policy) for t in entries):
        for members in groups.values():
            active = [t for t in members if len(t.samples) < policy.max_repeats]
            if not active:
                continue
            if several:
                sleep(policy.settle_s)
            turn_s = 0.0  # timed seconds in this turn (the clock is only read around blocks)
            while active:
                for t in active:
                    elapsed = _repeat(t, clock)
                    t.samples.append(elapsed / t.calls)
                    t.spent_s += elapsed
                    turn_s += elapsed
                    if between is not None:
                        between()
                if all(_finished(t, policy) for t in entries):
                    break
                active = [t for t in active if len(t.samples) < policy.max_repeats]
                if several and turn_s >= policy.turn_s:
                    break  # the other group's turn


def time_call(
    fn: Callable[[], object],
    sync: Callable[[], None],
    policy: Policy = Policy(),
    *,
    clock: Clock = time.perf_counter,
) -> Timing:
    """Time one callable (see :func:`time_interleaved`)."""
    return time_interleaved([Timed("fn", fn, sync)], policy, clock=clock)["fn"]
