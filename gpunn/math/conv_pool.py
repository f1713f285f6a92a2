"""Conv2D (stride 1) then a 2x2 max-pool, computed as one GEMM over 2x2 blocks of outputs.

The same function as ``conv2d_forward`` followed by ``max_pool2d_forward(.., 2)`` (and the same
backward), regrouped so that it moves less memory. A 2x2 block of convolution outputs, rows
2r + di and columns 2s + dj (di, dj in {0, 1}), reads one (kh+1) x (kw+1) input patch at (2r, 2s).
So ``im2col`` with kernel (kh+1, kw+1) and stride 2 gathers, in one copy, everything a block
needs, and one weight matrix W4 -- W shifted by (di, dj) inside a zero (kh+1) x (kw+1) frame,
rows (o, di, dj) -- computes all four outputs of every block in one GEMM:

    z4 = W4 (4*O, C*(kh+1)*(kw+1)) @ cols (C*(kh+1)*(kw+1), blocks)

The pool is then the maximum over each block's four rows, done by ``max_pool2d_forward`` on a
view whose 2x2 "window" is those rows, so the tie rule (first maximum in row-major order) is
the same code. For a 5x5 kernel the columns hold 9*C values per output pixel instead of 25*C:
2.8x less to copy, for BLAS to pack, and for col2im to add back, against 1.44x the multiply-adds
of the GEMM (the frame's zeros) -- a good trade where the GEMM is bound by memory, as on a CPU.
Floor mode comes out right by construction: a (Ho, Wo) output has Ho // 2 x Wo // 2 blocks.
"""

from __future__ import annotations

from typing import Any

from gpunn.math.conv import Array, IntPair, col2im, im2col, output_size, pair
from gpunn.math.pool import max_pool2d_backward, max_pool2d_forward


def expand_weights(W: Array, *, xp: Any, out: Array | None = None) -> Array:
    """W (O, C, kh, kw) -> W4 (O, 2, 2, C, kh+1, kw+1), W4[o, di, dj] = W[o] moved by (di, dj).

    ``out`` must be zero outside the four shifted copies (made by ``xp.zeros`` and only ever
    written here): every call writes the same cells.
    """
    O, C, kh, kw = W.shape
    if out is None:
        out = xp.zeros((O, 2, 2, C, kh + 1, kw + 1), dtype=W.dtype)
    for di in range(2):
        for dj in range(2):
            out[:, di, dj, :, di : di + kh, dj : dj + kw] = W
    return out


def fold_weight_grad(dW4: Array, *, out: Array) -> Array:
    """Adjoint of expand_weights: dW[o] = sum over (di, dj) of dW4[o, di, dj] at its shift."""
    kh, kw = out.shape[2:]
    out[...] = dW4[:, 0, 0, :, :kh, :kw]
    for di, dj in ((0, 1), (1, 0), (1, 1)):
        out += dW4[:, di, dj, :, di : di + kh, dj : dj + kw]
    return out


def _blocks_as_windows(rows: Array, O: int) -> Array:
    """(4*O, P) rows ordered (o, di, dj) -> view (P, O, 2, 2): each block's 4 outputs a window."""
    return rows.reshape(O, 2, 2, -1).transpose(3, 0, 1, 2)


def _rows_as_nchw(rows: Array, N: int, H: int, W: int, batch_last: bool) -> Array:
    """(O, N*H*W) rows, columns ordered as im2col orders them -> (N, O, H, W) view."""
    O = rows.shape[0]
    if batch_last:
        return rows.reshape(O, H, W, N).transpose(3, 0, 1, 2)  # of (O, H, W, N)
    return rows.reshape(O, N, H, W).transpose(1, 0, 2, 3)  # of (O, N, H, W)


def _nchw_as_rows(a: Array, batch_last: bool) -> Array:
    """(N, O, H, W) -> (O, N*H*W) rows ordered as im2col orders columns (a view if stored so)."""
    t = a.transpose(1, 2, 3, 0) if batch_last else a.transpose(1, 0, 2, 3)  # (O, ...)
    return t.reshape(a.shape[1], -1)


def conv2d_maxpool2_forward(
    x: Array,
    W: Array,
    b: Array | None,
    *,
    padding: IntPair = 0,
    xp: Any,
    batch_last: bool = False,
    w4: Array | None = None,
    cols: Array | None = None,
    padded: Array | None = None,
    z: Array | None = None,
    out: Array | None = None,
    argmax: Array | None = None,
) -> tuple[Array, Array, Array]:
    """maxpool2x2(conv(x, W)) + b: x (N, C, H, W) -> (y (N, O, Ho//2, Wo//2), argmax, cols).

    Equals ``max_pool2d_forward(conv2d_forward(x, W, b, padding=padding)[0], 2)``: b is added
    after the maximum, which a per-channel constant commutes with (``b=None``: not at all).
    argmax (N, O, Ho//2, Wo//2) holds the winning cell 2*di + dj of each window, as
    max_pool2d_forward's does. y and argmax are views of (O, blocks) memory, like
    conv2d_forward's output. ``w4``, ``cols``, ``padded``, ``z`` ((4*O, blocks)), ``out`` ((O,
    blocks)) and ``argmax`` ((O, blocks), uint8) are optional workspaces.
    """
    O, C, kh, kw = W.shape
    N, _, H, Wd = x.shape
    ph, pw = pair(padding)
    Bh, Bw = output_size(H, kh, 1, ph) // 2, output_size(Wd, kw, 1, pw) // 2  # blocks
    if Bh < 1 or Bw < 1:
        raise ValueError(f"a 2x2 pool needs a conv output of at least 2x2, got input {x.shape}")
    P = N * Bh * Bw
    w4 = expand_weights(W, xp=xp, out=w4)  # (O, 2, 2, C, kh+1, kw+1)
    cols = im2col(
        x, (kh + 1, kw + 1), 2, (ph, pw), xp=xp, out=cols, padded=padded, batch_last=batch_last
    )  # (C*(kh+1)*(kw+1), P): the input patch of every 2x2 block of outputs
    z = xp.matmul(w4.reshape(4 * O, -1), cols, out=z)  # (4*O, P), rows (o, di, dj)
    if out is None:
        out = xp.empty((O, P), dtype=x.dtype)  # (O, P)
    if argmax is None:
        argmax = xp.empty((O, P), dtype=xp.uint8)  # (O, P)
    max_pool2d_forward(
        _blocks_as_windows(z, O),
        2,
        xp=xp,
        out=out.T[:, :, None, None],  # (P, O, 1, 1) views: indexing never copies
        argmax=argmax.T[:, :, None, None],
    )  # the maximum of each block's 4 rows, into out and argmax (O, P)
    if b is not None:
        out += b.reshape(O, 1)
    y = _rows_as_nchw(out, N, Bh, Bw, batch_last)
    return y, _rows_as_nchw(argmax, N, Bh, Bw, batch_last), cols


def conv2d_maxpool2_backward(
    dy: Array,
    argmax: Array,
    cols: Array,
    W: Array,
    x_shape: tuple[int, int, int, int],
    *,
    padding: IntPair = 0,
    xp: Any,
    dW: Array,
    db: Array | None,
    need_dx: bool = True,
    batch_last: bool = False,
    w4: Array | None = None,
    dz: Array | None = None,
    dw4: Array | None = None,
    dcols: Array | None = None,
    padded: Array | None = None,
) -> Array | None:
    """Write dL/dW and dL/db; return dL/dx (N, C, H, W) if ``need_dx``. dy: (N, O, Ho//2, Wo//2).

    Each block's dy goes to its argmax row (max_pool2d_backward on the block view), giving dz
    (4*O, blocks); then as in conv2d_backward: dW4 = dz @ cols^T folded back onto W's cells,
    db = sum of dy (b was added to every block's maximum), dx = col2im(W4^T @ dz) with the
    (kh+1) x (kw+1) stride-2 patches. ``w4`` is the forward's expanded weights (made again
    when None); ``dz``, ``dw4``, ``dcols`` and ``padded`` are optional workspaces.
    """
    O, C, kh, kw = W.shape
    dy_rows = _nchw_as_rows(dy, batch_last)  # (O, P): a view when dy is stored like y
    am_rows = _nchw_as_rows(argmax, batch_last)  # (O, P)
    P = dy_rows.shape[1]
    if dz is None:
        dz = xp.empty((4 * O, P), dtype=dy.dtype)  # (4*O, P)
    max_pool2d_backward(
        dy_rows.T[:, :, None, None],  # (P, O, 1, 1)
        am_rows.T[:, :, None, None],
        (P, O, 2, 2),
        2,
        xp=xp,
        out=_blocks_as_windows(dz, O),
    )  # dz row (o, di, dj): dy where that cell won its block, else 0
    if dw4 is None:
        dw4 = xp.empty((O, 2, 2, C, kh + 1, kw + 1), dtype=dy.dtype)
    xp.matmul(dz, cols.T, out=dw4.reshape(4 * O, -1))  # (4*O, P) @ (P, K4) -> (4*O, K4)
    fold_weight_grad(dw4, out=dW)
    if db is not None:
        xp.sum(dy_rows, axis=1, out=db)  # (O,)
    if not need_dx:
        return None
    if w4 is None:
        w4 = expand_weights(W, xp=xp)
    dcols = xp.matmul(w4.reshape(4 * O, -1).T, dz, out=dcols)  # (K4, 4*O) @ (4*O, P) -> (K4, P)
    return col2im(
        dcols, x_shape, (kh + 1, kw + 1), 2, padding, xp=xp, padded=padded, batch_last=batch_last
    )  # (N, C, H, W)
