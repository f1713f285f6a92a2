"""The crossover batch size: from which batch size on the GPU trains faster than the CPU.

Given samples/s per batch size for a CPU and a GPU series, the crossover is the smallest
measured batch size ``b`` such that the GPU is faster at ``b`` *and at every larger measured
batch size* (a GPU that wins once at a lucky point and loses again has not overtaken). The CPU
series may come from another run (a baseline file) with a different grid: CPU values at the
GPU's batch sizes are then interpolated linearly in log-log space, never extrapolated.

``estimate`` refines the grid answer: the batch size where log(gpu / cpu) crosses zero, by
log-log interpolation between the last losing and the first winning grid point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

__all__ = ["Crossover", "crossover", "interpolate_loglog"]


@dataclass(frozen=True)
class Crossover:
    """``batch``: grid crossover (None: the GPU never stays ahead); see the module docstring."""

    batch: int | None
    estimate: float | None
    gpu_always_faster: bool  # faster already at the smallest compared batch size
    compared: tuple[int, ...]  # the batch sizes both series cover

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["compared"] = list(self.compared)
        return d


def interpolate_loglog(series: Mapping[int, float], batch: int) -> float | None:
    """``series`` at ``batch``: exact, or log-log linear between neighbours; None outside."""
    if batch in series:
        return series[batch]
    below = [b for b in series if b < batch]
    above = [b for b in series if b > batch]
    if not below or not above:
        return None
    b0, b1 = max(below), min(above)
    y0, y1 = series[b0], series[b1]
    if y0 <= 0 or y1 <= 0:
        return None
    t = (math.log(batch) - math.log(b0)) / (math.log(b1) - math.log(b0))
    return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))


def crossover(cpu: Mapping[int, float], gpu: Mapping[int, float]) -> Crossover:
    """Where ``gpu`` (samples/s by batch size) overtakes ``cpu`` for good."""
    ratios: list[tuple[int, float]] = []
    for b in sorted(gpu):
        c = interpolate_loglog(cpu, b)
        if c is not None and c > 0 and gpu[b] > 0:
            ratios.append((b, gpu[b] / c))
    compared = tuple(b for b, _ in ratios)
    if not ratios:
        return Crossover(None, None, False, compared)
    first = None  # index of the first point of the final winning run
    for i in range(len(ratios) - 1, -1, -1):
        if ratios[i][1] > 1.0:
            first = i
        else:
            break
    if first is None:
        return Crossover(None, None, False, compared)
    batch = ratios[first][0]
    if first == 0:
        return Crossover(batch, float(batch), True, compared)
    (b0, r0), (b1, r1) = ratios[first - 1], ratios[first]
    # log(ratio) is linear in log(batch) between the two points; solve for log(ratio) = 0
    t = -math.log(r0) / (math.log(r1) - math.log(r0)) if r1 != r0 else 1.0
    estimate = math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
    return Crossover(batch, estimate, False, compared)
