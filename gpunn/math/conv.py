"""2-D convolution as im2col + one GEMM: its forward, and directly below it, its backward.

Shapes follow PyTorch: activations (N, C, H, W), weights W (O, C, kh, kw), bias b (O,);
``kernel_size``, ``stride`` and ``padding`` are an int or a (rows, columns) pair, and an output
axis has floor((size + 2 * padding - kernel) / stride) + 1 positions (windows that would run
past the bottom or right edge are dropped). "Convolution" is cross-correlation, as everywhere.

How it is computed:

* ``im2col`` copies every kh x kw patch of the (zero-padded) input into one column of a matrix
  cols (C*kh*kw, N*Ho*Wo): the patches are one strided *view* of the input, so this is a single
  copy with no loop over samples or pixels. The convolution is then one GEMM,
  W (O, C*kh*kw) @ cols -> z (O, N*Ho*Wo).
* The backward is two GEMMs (dW = dz @ cols^T, dcols = W^T @ dz) and ``col2im``, the adjoint of
  im2col: one strided add per kernel offset (i, j), each over every sample, channel and pixel at
  once. For a fixed offset two columns never land on the same input pixel, so a plain ``+=``
  is right and no scatter (``np.add.at``, which CuPy lacks) is needed.

Every function takes the array module as ``xp`` and uses only what NumPy and CuPy both have
(slicing, ``xp.lib.stride_tricks.as_strided``, ``matmul``, ufuncs with ``out=``). Inputs may have
any strides and ``out=`` workspaces any strides, so a caller may keep activations in whichever
memory order is fastest. The GEMM writes channel-major memory, and ``conv2d_forward`` returns it
as an (N, O, Ho, Wo) *view* rather than copying it into C order. ``batch_last`` orders the
columns (ho, wo, n) instead of (n, ho, wo): that memory is then (O, Ho, Wo, N), the batch
innermost, which makes the copies of im2col and col2im stream long contiguous runs.
"""

from __future__ import annotations

from typing import Any

Array = Any  # a numpy.ndarray or a cupy.ndarray
IntPair = int | tuple[int, int]


def pair(value: IntPair | list[int]) -> tuple[int, int]:
    """An int or an (int, int) as a (rows, columns) pair."""
    if isinstance(value, int):
        return value, value
    rows, cols = value
    return int(rows), int(cols)


def output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Window positions along one axis (floor mode, as PyTorch)."""
    return (size + 2 * padding - kernel) // stride + 1


def zeros_nchw(shape: tuple[int, ...], dtype: Any, *, xp: Any, batch_last: bool = False) -> Array:
    """Zeros of shape (N, C, H, W), stored (C, H, W, N) in memory when batch_last."""
    if not batch_last:
        return xp.zeros(shape, dtype=dtype)
    N, C, H, W = shape
    return xp.zeros((C, H, W, N), dtype=dtype).transpose(3, 0, 1, 2)  # (N, C, H, W) view


def windows_at(x: Array, i: int, j: int, out_hw: tuple[int, int], stride: IntPair) -> Array:
    """Cell (i, j) of every window: x (N, C, H, W) -> view (N, C, Ho, Wo)."""
    (Ho, Wo), (sh, sw) = out_hw, pair(stride)
    return x[:, :, i : i + sh * (Ho - 1) + 1 : sh, j : j + sw * (Wo - 1) + 1 : sw]


# ------------------------------------------------------------------------------------------
# Zero padding
# ------------------------------------------------------------------------------------------


def pad2d(
    x: Array, padding: IntPair, *, xp: Any, out: Array | None = None, batch_last: bool = False
) -> Array:
    """x (N, C, H, W) inside a zero border -> (N, C, H + 2ph, W + 2pw); x itself for no padding.

    ``out`` must already have a zero border (made by ``xp.zeros`` and only ever written here):
    only its interior is written. A buffer made here is stored batch-innermost when batch_last.
    """
    ph, pw = pair(padding)
    if ph == 0 and pw == 0:
        return x
    N, C, H, W = x.shape
    if out is None:
        out = zeros_nchw((N, C, H + 2 * ph, W + 2 * pw), x.dtype, xp=xp, batch_last=batch_last)
    out[:, :, ph : ph + H, pw : pw + W] = x  # (N, C, H, W) interior
    return out


# ------------------------------------------------------------------------------------------
# im2col and its adjoint col2im
# ------------------------------------------------------------------------------------------


def im2col(
    x: Array,
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair = 0,
    *,
    xp: Any,
    out: Array | None = None,
    padded: Array | None = None,
    batch_last: bool = False,
) -> Array:
    """Every kh x kw patch of x (N, C, H, W) as a column -> cols (C*kh*kw, N*Ho*Wo).

    Row (c, i, j), column (n, ho, wo) -- or (ho, wo, n) when batch_last -- holds
    x_padded[n, c, ho*sh + i, wo*sw + j]. Rows ordered (c, i, j) make W.reshape(O, C*kh*kw) @ cols
    the convolution, with both GEMM operands C-contiguous. ``padded`` is an optional
    zero-bordered workspace for :func:`pad2d`; ``out`` an optional (C*kh*kw, N*Ho*Wo) one.
    """
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    N, C, H, W = x.shape
    Ho, Wo = output_size(H, kh, sh, ph), output_size(W, kw, sw, pw)
    xpad = pad2d(x, (ph, pw), xp=xp, out=padded, batch_last=batch_last)  # (N, C, Hp, Wp)
    sN, sC, sH, sW = xpad.strides  # in bytes, on both backends
    # patches[c, i, j, ..., ho, wo] = xpad[n, c, ho*sh + i, wo*sw + j]: a view, nothing copied
    if batch_last:
        shape, strides = (C, kh, kw, Ho, Wo, N), (sC, sH, sW, sH * sh, sW * sw, sN)
    else:
        shape, strides = (C, kh, kw, N, Ho, Wo), (sC, sH, sW, sN, sH * sh, sW * sw)
    patches = xp.lib.stride_tricks.as_strided(xpad, shape=shape, strides=strides)
    if out is None:
        out = xp.empty((C * kh * kw, N * Ho * Wo), dtype=x.dtype)  # (K, P)
    out.reshape(shape)[...] = patches  # the one copy
    return out


def col2im(
    cols: Array,
    x_shape: tuple[int, int, int, int],
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair = 0,
    *,
    xp: Any,
    padded: Array | None = None,
    batch_last: bool = False,
) -> Array:
    """Adjoint of im2col: add each column back onto the patch it came from -> (N, C, H, W).

    An input pixel covered by several patches receives the sum of their entries. One strided
    add per kernel offset (i, j); the patches of one offset never overlap, so no scatter.
    ``padded`` is an optional (N, C, Hp, Wp) workspace of any strides (zeroed here); the result
    is a view of its interior. ``batch_last`` says how cols' columns are ordered, as in im2col.
    """
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    N, C, H, W = x_shape
    Ho, Wo = output_size(H, kh, sh, ph), output_size(W, kw, sw, pw)
    if padded is None:
        shape = (N, C, H + 2 * ph, W + 2 * pw)
        padded = zeros_nchw(shape, cols.dtype, xp=xp, batch_last=batch_last)  # (N, C, Hp, Wp)
    else:
        padded.fill(0)
    if batch_last:  # (N, C, kh, kw, Ho, Wo) views of the columns
        patches = cols.reshape(C, kh, kw, Ho, Wo, N).transpose(5, 0, 1, 2, 3, 4)
    else:
        patches = cols.reshape(C, kh, kw, N, Ho, Wo).transpose(3, 0, 1, 2, 4, 5)
    for i in range(kh):
        for j in range(kw):
            dx_ij = windows_at(padded, i, j, (Ho, Wo), (sh, sw))  # (N, C, Ho, Wo) view
            dx_ij += patches[:, :, i, j]
    return padded[:, :, ph : ph + H, pw : pw + W]  # (N, C, H, W) view


# ------------------------------------------------------------------------------------------
# Conv2D: y[n, o] = sum_c x[n, c] (*) W[o, c] + b[o]
# ------------------------------------------------------------------------------------------


def conv2d_forward(
    x: Array,
    W: Array,
    b: Array | None,
    *,
    stride: IntPair = 1,
    padding: IntPair = 0,
    xp: Any,
    cols: Array | None = None,
    padded: Array | None = None,
    z: Array | None = None,
    batch_last: bool = False,
) -> tuple[Array, Array]:
    """x (N, C, H, W), W (O, C, kh, kw), b (O,) -> (y (N, O, Ho, Wo), cols for the backward).

    One GEMM, W (O, K) @ cols (K, P) -> z (O, P) with K = C*kh*kw and P = N*Ho*Wo; y is z viewed
    as (N, O, Ho, Wo), so its memory is channel-major: (O, N, Ho, Wo), or (O, Ho, Wo, N) when
    batch_last. ``cols``, ``padded`` and ``z`` are optional workspaces. ``b=None`` leaves the bias
    to the caller (who may add it later in another pass over the data).
    """
    O, C, kh, kw = W.shape
    N, _, H, Wd = x.shape
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    Ho, Wo = output_size(H, kh, sh, ph), output_size(Wd, kw, sw, pw)
    cols = im2col(
        x, (kh, kw), (sh, sw), (ph, pw), xp=xp, out=cols, padded=padded, batch_last=batch_last
    )  # (K, P)
    z = xp.matmul(W.reshape(O, C * kh * kw), cols, out=z)  # (O, K) @ (K, P) -> (O, P)
    if batch_last:
        y = z.reshape(O, Ho, Wo, N).transpose(3, 0, 1, 2)  # (N, O, Ho, Wo) view
    else:
        y = z.reshape(O, N, Ho, Wo).transpose(1, 0, 2, 3)  # (N, O, Ho, Wo) view
    if b is not None:
        y += b.reshape(O, 1, 1)  # one bias per output channel, over samples and pixels
    return y, cols


def conv2d_backward(
    dy: Array,
    cols: Array,
    W: Array,
    x_shape: tuple[int, int, int, int],
    *,
    stride: IntPair = 1,
    padding: IntPair = 0,
    xp: Any,
    dW: Array,
    db: Array | None,
    need_dx: bool = True,
    dz: Array | None = None,
    dcols: Array | None = None,
    padded: Array | None = None,
    ones: Array | None = None,
    batch_last: bool = False,
) -> Array | None:
    """Write dL/dW (O, C, kh, kw) and dL/db (O,); return dL/dx (N, C, H, W) if ``need_dx``.

    From z = Wm @ cols + b (Wm = W as (O, K)):  dWm = dz @ cols^T,  db = dz @ 1,
    dcols = Wm^T @ dz,  dx = col2im(dcols). dy (N, O, Ho, Wo) becomes dz (O, P), its columns
    ordered like cols, by a transpose that is a view when dy is stored that way (as
    conv2d_forward's output is) and a copy otherwise (into ``dz`` when given). ``dcols``,
    ``padded`` and ``ones`` ((P,) ones) are optional workspaces; ``db=None`` skips the bias.
    """
    O, C, kh, kw = W.shape
    N, _, Ho, Wo = dy.shape
    dy_t = dy.transpose(1, 2, 3, 0) if batch_last else dy.transpose(1, 0, 2, 3)  # (O, ...)
    if dz is None:
        dz = dy_t.reshape(O, N * Ho * Wo)  # a view when dy is stored like that, else a copy
    else:
        dz.reshape(dy_t.shape)[...] = dy_t
    Wm = W.reshape(O, C * kh * kw)  # (O, K)
    xp.matmul(dz, cols.T, out=dW.reshape(O, C * kh * kw))  # (O, P) @ (P, K) -> (O, K)
    if db is not None:
        if ones is None:
            ones = xp.ones(N * Ho * Wo, dtype=dz.dtype)
        xp.matmul(dz, ones, out=db)  # (O, P) @ (P,) -> (O,): a GEMV sums each row
    if not need_dx:
        return None  # a network's first layer: skip a GEMM and col2im nobody needs
    dcols = xp.matmul(Wm.T, dz, out=dcols)  # (K, O) @ (O, P) -> (K, P)
    return col2im(
        dcols, x_shape, (kh, kw), stride, padding, xp=xp, padded=padded, batch_last=batch_last
    )  # (N, C, H, W)
