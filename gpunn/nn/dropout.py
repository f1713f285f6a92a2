"""Dropout: the inverted-dropout layer (math in ``gpunn.math.dropout``)."""

from __future__ import annotations

from typing import Any

from gpunn.math.dropout import dropout_backward, dropout_forward, dropout_mask
from gpunn.nn.layer import Array, Layer


class Dropout(Layer):
    """Inverted dropout: zero each input with probability p during training, scale the rest by
    1 / (1 - p); ``predict`` and ``evaluate`` pass inputs through unchanged.

    Masks are drawn on the device from a generator seeded once per model and layer, so a run is
    repeatable on one backend; NumPy and CuPy draw different masks from the same seed.
    """

    kind = "Dropout"

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= float(p) < 1:
            raise ValueError(f"Dropout p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.seed = 0

    def config(self) -> dict[str, Any]:
        return {"p": self.p}

    def bind(self, xp: Any, dtype: Any, params: dict[str, Array], grads: dict[str, Array]) -> None:
        super().bind(xp, dtype, params, grads)
        self.rng = xp.random.default_rng(self.seed)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        if not training or self.p == 0.0:
            self.mask = None
            return x
        u = self.rng.random(x.shape, dtype=self.dtype)  # uniform in [0, 1)
        self.mask = dropout_mask(u, self.p, xp=self.xp, out=self.workspace("mask", x.shape))
        return dropout_forward(x, self.mask, xp=self.xp, out=self.workspace("y", x.shape))

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        if self.mask is None:
            return dy
        return dropout_backward(dy, self.mask, xp=self.xp, out=self.workspace("dx", dy.shape))
