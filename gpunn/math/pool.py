"""Max and average pooling over 2-D windows: each forward, and directly below it, its backward.

x (N, C, H, W) -> y (N, C, Ho, Wo), one window per output cell, ``stride`` defaulting to the
kernel size, no padding, floor mode (cells past the last whole window are never pooled). Each
function loops over the kh*kw cells of a window; every step is one elementwise operation over a
strided view holding that cell of *every* window, on NumPy and CuPy alike. Inputs and ``out=``
workspaces may have any strides; temporaries are made in the input's memory order
(``empty_like`` of a view keeps it), because an elementwise pass over operands stored in
different orders walks one of them with large strides.
"""

from __future__ import annotations

from typing import Any

from gpunn.math.conv import Array, IntPair, output_size, pair, windows_at


def pool_output_shape(
    x_shape: tuple[int, ...], kernel_size: IntPair, stride: IntPair | None = None
) -> tuple[int, int, int, int]:
    """(N, C, Ho, Wo) for pooling x_shape (N, C, H, W)."""
    (kh, kw), (sh, sw) = pair(kernel_size), pair(kernel_size if stride is None else stride)
    N, C, H, W = x_shape
    return N, C, output_size(H, kh, sh), output_size(W, kw, sw)


# ------------------------------------------------------------------------------------------
# MaxPool2D: y = max over the window
# ------------------------------------------------------------------------------------------


def max_pool2d_forward(
    x: Array,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    *,
    xp: Any,
    out: Array | None = None,
    argmax: Array | None = None,
) -> tuple[Array, Array]:
    """x (N, C, H, W) -> (y (N, C, Ho, Wo), argmax (N, C, Ho, Wo)): each window's maximum.

    argmax holds the winning cell i*kw + j of each window (uint8 for windows of at most 256
    cells, else int32). Ties go to the *first* maximum in row-major window order, where PyTorch
    sends the gradient too: a later cell replaces the running maximum only when strictly
    greater. NaN: y is NaN as in PyTorch (``maximum`` propagates it), but argmax stays on the
    last number before it, so the gradient goes there rather than to the NaN.
    """
    (kh, kw), (sh, sw) = pair(kernel_size), pair(kernel_size if stride is None else stride)
    _, _, Ho, Wo = pool_output_shape(x.shape, (kh, kw), (sh, sw))
    first = windows_at(x, 0, 0, (Ho, Wo), (sh, sw))  # (N, C, Ho, Wo) view: cell 0 of each window
    if out is None:
        out = xp.empty_like(first)  # (N, C, Ho, Wo) in x's memory order
    if argmax is None:
        argmax = xp.empty_like(first, dtype=xp.uint8 if kh * kw <= 256 else xp.int32)
    greater = xp.empty_like(first, dtype=bool)  # (N, C, Ho, Wo)
    candidate = xp.empty_like(first, dtype=argmax.dtype)  # (N, C, Ho, Wo)
    out[...] = first
    argmax.fill(0)
    for k in range(1, kh * kw):
        v = windows_at(x, k // kw, k % kw, (Ho, Wo), (sh, sw))  # (N, C, Ho, Wo) view
        xp.greater(v, out, out=greater)  # strictly: an equal later cell does not win
        xp.maximum(out, v, out=out)
        # argmax = k where v won, else unchanged. Cells come in increasing order, so k exceeds
        # every index stored so far: max(argmax, greater * k) is that, in two cheap passes
        # (a masked copy, copyto(where=), is 7x slower in NumPy).
        xp.multiply(greater, argmax.dtype.type(k), out=candidate)
        xp.maximum(argmax, candidate, out=argmax)
    return out, argmax


def max_pool2d_backward(
    dy: Array,
    argmax: Array,
    x_shape: tuple[int, int, int, int],
    kernel_size: IntPair,
    stride: IntPair | None = None,
    *,
    xp: Any,
    out: Array | None = None,
) -> Array:
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): each window's dy goes to its argmax cell.

    y = x[argmax] per window, so dy/dx is 1 at that cell and 0 elsewhere; where windows overlap
    the contributions add. One step per window cell k: dx at cell k of every window gets
    dy * (argmax == k). Windows that do not overlap (stride >= kernel) touch each input cell at
    most once, so those steps write instead of add. ``out`` is an optional workspace.
    """
    (kh, kw), (sh, sw) = pair(kernel_size), pair(kernel_size if stride is None else stride)
    _, _, H, W = x_shape
    Ho, Wo = dy.shape[2:]
    overlap = sh < kh or sw < kw
    tiles = (sh, sw) == (kh, kw) and (Ho * kh, Wo * kw) == (H, W)  # every cell in one window
    if out is None:
        out = (xp.empty if tiles else xp.zeros)(x_shape, dtype=dy.dtype)  # (N, C, H, W)
    elif not tiles:
        out.fill(0)  # cells outside every window (floor mode, stride > kernel) get 0
    for k in range(kh * kw):
        dx_k = windows_at(out, k // kw, k % kw, (Ho, Wo), (sh, sw))  # (N, C, Ho, Wo) view
        if overlap:
            dx_k += dy * (argmax == k)
        else:
            xp.multiply(dy, argmax == k, out=dx_k)
    return out


# ------------------------------------------------------------------------------------------
# AvgPool2D: y = mean over the window
# ------------------------------------------------------------------------------------------


def avg_pool2d_forward(
    x: Array,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    *,
    xp: Any,
    out: Array | None = None,
) -> Array:
    """x (N, C, H, W) -> y (N, C, Ho, Wo): the mean of each window."""
    (kh, kw), (sh, sw) = pair(kernel_size), pair(kernel_size if stride is None else stride)
    _, _, Ho, Wo = pool_output_shape(x.shape, (kh, kw), (sh, sw))
    first = windows_at(x, 0, 0, (Ho, Wo), (sh, sw))  # (N, C, Ho, Wo) view
    if out is None:
        out = xp.empty_like(first)  # (N, C, Ho, Wo) in x's memory order
    out[...] = first
    for k in range(1, kh * kw):
        out += windows_at(x, k // kw, k % kw, (Ho, Wo), (sh, sw))
    out *= 1.0 / (kh * kw)  # a Python float keeps x's dtype
    return out


def avg_pool2d_backward(
    dy: Array,
    x_shape: tuple[int, int, int, int],
    kernel_size: IntPair,
    stride: IntPair | None = None,
    *,
    xp: Any,
    out: Array | None = None,
) -> Array:
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): every cell of a window gets dy / (kh*kw)."""
    (kh, kw), (sh, sw) = pair(kernel_size), pair(kernel_size if stride is None else stride)
    Ho, Wo = dy.shape[2:]
    if out is None:
        out = xp.zeros(x_shape, dtype=dy.dtype)  # (N, C, H, W)
    else:
        out.fill(0)
    share = dy * (1.0 / (kh * kw))  # (N, C, Ho, Wo): d mean / d cell = 1 / (kh*kw)
    for k in range(kh * kw):
        dx_k = windows_at(out, k // kw, k % kw, (Ho, Wo), (sh, sw))  # (N, C, Ho, Wo) view
        dx_k += share
    return out
