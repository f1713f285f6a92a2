"""Inverted dropout: zero each input with probability p in training and scale the rest by
1 / (1 - p), so that inference is the identity. Forward above backward."""

from __future__ import annotations

from typing import Any

Array = Any  # a numpy.ndarray or a cupy.ndarray


def dropout_mask(u: Array, p: float, *, xp: Any, out: Array | None = None) -> Array:
    """mask = 1[u < 1 - p] / (1 - p) from uniform draws u in [0, 1), shape of u."""
    keep = 1.0 - p
    return xp.multiply(u < keep, 1.0 / keep, out=out)


def dropout_forward(x: Array, mask: Array, *, xp: Any, out: Array | None = None) -> Array:
    """y = x * mask, where mask holds 0 or 1 / (1 - p) per element."""
    return xp.multiply(x, mask, out=out)


def dropout_backward(dy: Array, mask: Array, *, xp: Any, out: Array | None = None) -> Array:
    """dx = dy * mask (the same mask: dropped units pass no gradient)."""
    return xp.multiply(dy, mask, out=out)
