"""Flatten: each sample's axes joined into one, in C order (PyTorch's), and its backward."""

from __future__ import annotations

from typing import Any

Array = Any  # a numpy.ndarray or a cupy.ndarray


def flatten_forward(x: Array, *, xp: Any, out: Array | None = None) -> Array:
    """x (N, d1, d2, ...) -> (N, d1*d2*...), the last axis varying fastest (C order).

    A view when x is C-ordered; otherwise (a channel-major or batch-innermost layout) one
    copy, into ``out`` (N, d1*d2*...) when given.
    """
    if out is None:
        return x.reshape(x.shape[0], -1)  # NumPy and CuPy copy only when they must
    out.reshape(x.shape)[...] = x  # out is C-ordered: this writes the flattened order
    return out


def flatten_backward(dy: Array, x_shape: tuple[int, ...], *, xp: Any) -> Array:
    """dy (N, d1*d2*...) -> dx (N, d1, d2, ...): flattening only renames the elements."""
    return dy.reshape(x_shape)
