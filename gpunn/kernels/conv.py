"""col2im and max-pool backward in one launch each (CUDA source: conv.cu).

Both references (``gpunn.math.conv.col2im``, ``gpunn.math.pool.max_pool2d_backward``) zero the
image gradient and then make one strided elementwise pass over it per window cell: kh*kw + 1
launches for col2im (36 + 1 for LeNet-5's second layer, whose fused conv + pool takes 6x6
patches), 2*kh*kw (or 3*kh*kw with temporaries where windows overlap) for max-pool backward,
each pass reading and writing the whole gradient again. The kernel gives every input pixel one
thread that adds up, in the references' order, what those passes would add onto it: one launch,
each input read once and the result written once (docs/gpu.md counts it per training step).

The fused forms take the references' arguments and return the same values (bit for bit, up to
the sign of a zero and float32 flush-to-zero); like the references they accept views of any
strides, and write into the references' workspaces (``padded``, ``out``) when given.
"""

from __future__ import annotations

from typing import Any

from gpunn.backend import host_rng
from gpunn.kernels.cuda_source import read_cu
from gpunn.kernels.spec import Array, KernelSpec, cached
from gpunn.math.conv import IntPair, col2im, output_size, pair, zeros_nchw
from gpunn.math.pool import max_pool2d_backward, max_pool2d_forward

CU_FILE = "conv.cu"
THREADS = 256  # per block: one thread per input pixel, no shared memory, no barrier
MAX_BLOCKS = 1 << 16  # the kernels loop over pixels (grid stride) beyond this many blocks
FLOAT_TYPES = ("float32", "float64")
INDEX_TYPES = ("uint8", "int32")  # what max_pool2d_forward stores in argmax


def grid_size(total: int) -> int:
    """Blocks for ``total`` pixels: enough for one thread each, at most MAX_BLOCKS."""
    return max(1, min(-(-total // THREADS), MAX_BLOCKS))


def memory_order(a: Array) -> tuple[int, int, int, int]:
    """The axes of a 4-D array from the largest stride to the smallest (ties in axis order): the
    kernel walks pixels in this order, so that neighbouring threads write neighbouring
    addresses."""
    return tuple(sorted(range(4), key=lambda k: (-abs(a.strides[k]), k)))  # type: ignore[return-value]


def element_strides(a: Array) -> tuple[int, ...]:
    """``a.strides`` in elements (CuPy and NumPy both give bytes)."""
    return tuple(s // a.itemsize for s in a.strides)


def _function(xp: Any, owner: str, name: str) -> Any:
    """The RawKernel ``name``, looked up once (see softmax_xent.py) in the RawModule that kernel
    ``owner`` ("col2im" or "max_pool2d_backward") built from conv.cu.

    One RawModule object per fused kernel, so each self-check builds and launches its own (the
    tests attribute launches to modules). CuPy compiles and loads the shared source only once:
    its module cache is keyed by the code and options.
    """

    def module() -> Any:
        return xp.RawModule(code=read_cu(CU_FILE), options=("--std=c++17",))

    key = f"{CU_FILE}[{owner}]"
    return cached(xp, f"{key}:{name}", lambda: cached(xp, key, module).get_function(name))


def _order_args(xp: Any, dx: Array) -> tuple[Any, ...]:
    """N, C, H, W and the walk order o0..o3, as the kernels take them."""
    return (*(xp.int64(d) for d in dx.shape), *(xp.int32(k) for k in memory_order(dx)))


# ------------------------------------------------------------------------------------------
# col2im
# ------------------------------------------------------------------------------------------


def _build_col2im(xp: Any) -> Any:
    def col2im_fused(
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
        """Fused form of gpunn.math.conv.col2im (one RawKernel): -> (N, C, H, W)."""
        (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
        N, C, H, W = x_shape
        Ho, Wo = output_size(H, kh, sh, ph), output_size(W, kw, sw, pw)
        P = N * Ho * Wo
        if cols.dtype.name not in FLOAT_TYPES or N * C * H * W == 0 or Ho < 1 or Wo < 1:
            # nothing to launch, or a type the kernel lacks: the reference
            return col2im(
                cols,
                x_shape,
                kernel_size,
                stride,
                padding,
                xp=xp,
                padded=padded,
                batch_last=batch_last,
            )
        if cols.shape != (C * kh * kw, P):
            raise ValueError(f"col2im: cols {cols.shape} does not fit x {x_shape} and the kernel")
        cols = xp.ascontiguousarray(cols)  # (K, P) rows: the kernel indexes row * P + column
        if padded is not None:  # the reference's workspace: write its interior
            dx = padded[:, :, ph : ph + H, pw : pw + W]  # (N, C, H, W) view
        else:
            dx = zeros_nchw(x_shape, cols.dtype, xp=xp, batch_last=batch_last)  # (N, C, H, W)
        # where column (n, ho, wo) sits among the P columns
        col_strides = (1, Wo * N, N) if batch_last else (Ho * Wo, Wo, 1)
        total = N * C * H * W
        args = (
            cols,
            dx,
            xp.int64(total),
            *_order_args(xp, dx),
            *(xp.int32(v) for v in (kh, kw, sh, sw, ph, pw, Ho, Wo)),
            xp.int64(P),
            *(xp.int64(s) for s in col_strides),
            *(xp.int64(s) for s in element_strides(dx)),
        )
        _function(xp, "col2im", f"gpunn_col2im_{cols.dtype.name}")(
            (grid_size(total),), (THREADS,), args
        )
        return dx

    return col2im_fused


def _probe_col2im(impl: Any, xp: Any) -> list[Any]:
    rng = host_rng(2024)
    outs = []
    # (x_shape, kernel, stride, padding): overlapping windows with padding, stride > 1 with odd
    # sizes (a pixel no window reaches), the 6x6 stride-2 patches of the fused conv + pool, and
    # windows that tile the image (one term per pixel)
    cases = (
        ((2, 3, 5, 6), 3, 1, 1),
        ((1, 2, 7, 5), (3, 2), (2, 3), (0, 1)),
        ((3, 2, 8, 8), 6, 2, 0),
        ((2, 1, 4, 6), 2, 2, 0),
    )
    for dtype in FLOAT_TYPES:
        for x_shape, k, s, p in cases:
            (kh, kw), (sh, sw), (ph, pw) = pair(k), pair(s), pair(p)
            N, C, H, W = x_shape
            P = N * output_size(H, kh, sh, ph) * output_size(W, kw, sw, pw)
            for batch_last in (False, True):
                cols = xp.asarray(rng.standard_normal((C * kh * kw, P)), dtype=dtype)
                outs.append(impl(cols, x_shape, k, s, p, xp=xp, batch_last=batch_last))
    return outs


COL2IM = KernelSpec(
    name="col2im",
    repeats=("gpunn.math.conv.col2im",),
    reference=col2im,
    build_fused=_build_col2im,
    probe=_probe_col2im,
)


# ------------------------------------------------------------------------------------------
# max-pool backward
# ------------------------------------------------------------------------------------------


def _build_max_pool_backward(xp: Any) -> Any:
    def max_pool2d_backward_fused(
        dy: Array,
        argmax: Array,
        x_shape: tuple[int, int, int, int],
        kernel_size: IntPair,
        stride: IntPair | None = None,
        *,
        xp: Any,
        out: Array | None = None,
    ) -> Array:
        """Fused form of gpunn.math.pool.max_pool2d_backward (one RawKernel): -> (N, C, H, W)."""
        (kh, kw), (sh, sw) = pair(kernel_size), pair(kernel_size if stride is None else stride)
        N, C, H, W = x_shape
        Ho, Wo = dy.shape[2:]
        total = N * C * H * W
        if (
            dy.dtype.name not in FLOAT_TYPES
            or argmax.dtype.name not in INDEX_TYPES
            or total == 0
            or dy.size == 0
        ):
            return max_pool2d_backward(
                dy, argmax, x_shape, kernel_size, stride, xp=xp, out=out
            )  # nothing to launch, or types the kernel lacks: the reference
        if argmax.shape != dy.shape or dy.shape[:2] != (N, C):
            raise ValueError(
                f"max-pool backward: dy {dy.shape} and argmax {argmax.shape} do not fit x {x_shape}"
            )
        if out is None:
            out = xp.empty(x_shape, dtype=dy.dtype)  # every pixel is written (0 where no window)
        args = (
            dy,
            argmax,
            out,
            xp.int64(total),
            *_order_args(xp, out),
            *(xp.int32(v) for v in (kh, kw, sh, sw, Ho, Wo)),
            *(xp.int64(s) for s in element_strides(dy)),
            *(xp.int64(s) for s in element_strides(argmax)),
            *(xp.int64(s) for s in element_strides(out)),
        )
        name = f"gpunn_max_pool_backward_{dy.dtype.name}_{argmax.dtype.name}"
        _function(xp, "max_pool2d_backward", name)((grid_size(total),), (THREADS,), args)
        return out

    return max_pool2d_backward_fused


def _probe_max_pool_backward(impl: Any, xp: Any) -> list[Any]:
    rng = host_rng(77)
    outs = []
    # (x_shape, kernel, stride): 2x2 tiles, overlapping 3x3 windows of stride 2 with odd sizes,
    # gaps between windows (stride > kernel: pixels no window covers), and a 17x17 window (289
    # cells: int32 argmax)
    cases = (((2, 3, 4, 6), 2, 2), ((1, 2, 7, 9), 3, (2, 1)), ((2, 1, 7, 8), 2, 3))
    cases += (((1, 2, 17, 18), 17, 1),)
    for dtype in FLOAT_TYPES:
        for x_shape, k, s in cases:
            # few distinct values: many ties, which the forward resolves (first maximum)
            x = xp.asarray(rng.integers(-2, 3, size=x_shape), dtype=dtype)
            _, argmax = max_pool2d_forward(x, k, s, xp=xp)
            dy = xp.asarray(rng.standard_normal(argmax.shape), dtype=dtype)
            outs.append(impl(dy, argmax, x_shape, k, s, xp=xp))
    return outs


MAX_POOL2D_BACKWARD = KernelSpec(
    name="max_pool2d_backward",
    repeats=("gpunn.math.pool.max_pool2d_backward",),
    reference=max_pool2d_backward,
    build_fused=_build_max_pool_backward,
    probe=_probe_max_pool_backward,
)
