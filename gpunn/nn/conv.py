"""Conv2D: the 2-D convolution layer (math in ``gpunn.math.conv`` and ``gpunn.math.conv_pool``).

Three decisions live here rather than in the math, because each needs state to be safe; with
them a LeNet-5 training step on a 2-core CPU runs 1.4-1.9x as fast as PyTorch's (docs/cnn.md,
``bench/lenet_step.py``):

* **Batch-innermost memory.** The 4-D activations of the convolution and pooling layers are
  stored as (C, H, W, N) and handed on as (N, C, H, W) views (``BATCH_LAST``). The convolution's
  GEMM writes that order directly when the im2col columns are ordered (ho, wo, n), and the
  copies of im2col, col2im and pooling then stream runs of Wo*N or N contiguous floats instead
  of rows of Wo (5 to 28 in LeNet). Measured on LeNet's second layer (CPU time, N = 64): im2col
  0.29 ms instead of 1.36 ms in (N, C, H, W) order, col2im 1.18 ms instead of 4.11 ms. Inputs
  may come in any order (the first layer's are the user's C-ordered images); a layer copies
  what it reads many times into its order.
* **Max-pool before bias and ReLU.** In Conv2D -> ReLU -> MaxPool2D, ReLU's ``connect`` moves
  the pool before itself: relu(max(z) + b) = max(relu(z + b)) because the bias is one constant
  per channel and ReLU never decreases, so bias and ReLU (and their backward) touch a 4x smaller
  array. The gradients are the same: where a window's maximum is <= -b both orders give 0, and
  otherwise the winning cell is the same first maximum. The conv runs the pool
  (:meth:`MaxPool2D.pool`) and the pool layer passes data through.
* **Conv + 2x2 max-pool as one GEMM.** When that pool is 2x2 with stride 2 and the convolution
  has stride 1, the pair is computed by ``conv2d_maxpool2_forward`` (see its module): 23-30 %
  less CPU time per LeNet-5 step from batch 32 on (2 % more at batch 16).

Workspaces are kept per batch size, so a training step allocates (almost) nothing.
"""

from __future__ import annotations

from typing import Any

from gpunn.math.conv import IntPair, conv2d_backward, conv2d_forward, output_size, pair
from gpunn.math.conv_pool import conv2d_maxpool2_backward, conv2d_maxpool2_forward
from gpunn.nn.dense import INITS
from gpunn.nn.layer import Array, Layer

#: memory order of the spatial layers' 4-D activations: (N, C, H, W) stored as (C, H, W, N)
BATCH_LAST = (1, 2, 3, 0)


def is_batch_last(a: Array) -> bool:
    """Whether an (N, C, H, W) array is stored as a C-ordered (C, H, W, N) block."""
    return bool(a.transpose(1, 2, 3, 0).flags.c_contiguous)


def int_or_pair(value: Any, name: str, *, low: int) -> int | tuple[int, int]:
    """A layer argument that is an int or a pair of ints, each >= low (a pair of equal values
    is kept as one int, which is how ``config()`` reports it)."""
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        rows, cols = (items[0], items[0]) if len(items) == 1 else items
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    for v in (rows, cols):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int or a pair of ints >= {low}, got {value!r}")
    return rows if rows == cols else (rows, cols)


def pair_text(value: int | tuple[int, int], *, square: bool = True) -> str:
    """3 -> "3x3" (or "3" when not ``square``), (3, 2) -> "3x2"."""
    rows, cols = pair(value)
    return f"{rows}x{cols}" if square or rows != cols else str(rows)


def config_value(value: int | tuple[int, int]) -> int | list[int]:
    """An int, or a pair as a JSON-friendly list."""
    return value if isinstance(value, int) else list(value)


class Conv2D(Layer):
    """2-D convolution: x (N, C, H, W) -> (N, O, Ho, Wo), y = W * x + b per output channel.

    ``W`` has shape (out_channels, in_channels, kh, kw) and ``b`` (out_channels,), as PyTorch's
    ``Conv2d.weight`` and ``bias``. ``kernel_size``, ``stride`` and ``padding`` (zeros) are an
    int or a (rows, columns) pair. ``init`` as for :class:`Dense` (fan-in C*kh*kw, fan-out
    O*kh*kw); biases start at 0.
    """

    kind = "Conv2D"
    input_rank = 3
    keeps_shape = False
    # its output is a workspace it never reads again (backward uses the im2col columns), and
    # so is its input gradient
    returns_scratch_output = True
    returns_scratch_grad = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        init: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Conv2D {name} must be a positive integer, got {value!r}")
        if init is not None and init not in INITS:
            raise ValueError(f"Conv2D init must be one of {INITS} or None, got {init!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = int_or_pair(kernel_size, "Conv2D kernel_size", low=1)
        self.stride = int_or_pair(stride, "Conv2D stride", low=1)
        self.padding = int_or_pair(padding, "Conv2D padding", low=0)
        self.init = init
        #: True when the activation after this layer adds the bias (see gpunn.nn.activations)
        self.defer_bias = False
        #: the MaxPool2D this layer runs, before the activation (set by ReLU.connect)
        self.merged_pool: Any = None

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": config_value(self.kernel_size),
            "stride": config_value(self.stride),
            "padding": config_value(self.padding),
            "init": self.init,
        }

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        kh, kw = pair(self.kernel_size)
        return {"W": (self.out_channels, self.in_channels, kh, kw), "b": (self.out_channels,)}

    def init_params(self, rng: Any, init: str) -> dict[str, Any]:
        shape = self.param_shapes()["W"]
        area = shape[2] * shape[3]
        fan_in, fan_out = self.in_channels * area, self.out_channels * area
        if (self.init or init) == "he":
            W = rng.standard_normal(shape) * (2.0 / fan_in) ** 0.5
        else:
            limit = (6.0 / (fan_in + fan_out)) ** 0.5
            W = rng.uniform(-limit, limit, size=shape)
        return {"W": W}  # b starts at zero

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        C, H, W = in_shape
        if self.in_channels != C:
            raise ValueError(f"expects {self.in_channels} input channels but gets {C}")
        (kh, kw), (sh, sw), (ph, pw) = pair(self.kernel_size), pair(self.stride), pair(self.padding)
        Ho, Wo = output_size(H, kh, sh, ph), output_size(W, kw, sw, pw)
        if Ho < 1 or Wo < 1:
            raise ValueError(
                f"a {kh}x{kw} kernel with padding {pair_text(self.padding, square=False)} does "
                f"not fit an "
                f"{H}x{W} input"
            )
        return (self.out_channels, Ho, Wo)

    def describe(self) -> str:
        parts = [pair_text(self.kernel_size)]
        if self.stride != 1:
            parts.append(f"stride {pair_text(self.stride, square=False)}")
        if self.padding != 0:
            parts.append(f"pad {pair_text(self.padding, square=False)}")
        if self.init:
            parts.append(f"init={self.init}")
        return f"Conv2D({', '.join(parts)})"

    def connect(self, prev: Layer | None, nxt: Layer | None) -> None:
        self.defer_bias = False  # until an activation after this layer takes the bias over
        self.merged_pool = None  # ... or moves the max-pool after it before itself

    def deferred_bias(self) -> Array:
        """b as (O, 1, 1), for the activation that adds it (broadcasts over (N, O, H, W))."""
        return self.params["b"].reshape(-1, 1, 1)

    # --- computation --------------------------------------------------------------------------
    def _fuses_pool(self) -> bool:
        """Whether this layer and its pool run as conv2d_maxpool2_forward (stride-1 conv, then
        a 2x2 pool of stride 2)."""
        pool = self.merged_pool
        return (
            pool is not None
            and pair(self.stride) == (1, 1)
            and pair(pool.kernel_size) == (2, 2)
            and pair(pool.steps) == (2, 2)
        )

    def _stored_batch_last(self, a: Array, name: str) -> Array:
        """``a`` (N, C, H, W) itself when stored batch-innermost, else a copy that is."""
        if is_batch_last(a):
            return a
        out = self.workspace(name, a.shape, order=BATCH_LAST)
        out[...] = a
        return out

    def _padded(self, x_shape: tuple[int, ...], name: str) -> Array | None:
        """A zero-bordered (N, C, H + 2ph, W + 2pw) workspace, or None without padding."""
        (ph, pw), (N, C, H, W) = pair(self.padding), x_shape
        if ph == 0 and pw == 0:
            return None
        return self.workspace(name, (N, C, H + 2 * ph, W + 2 * pw), order=BATCH_LAST, zero=True)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        W = self.params["W"]
        b = None if self.defer_bias else self.params["b"]
        self.x_shape = x.shape
        padded = self._padded(x.shape, "padded")
        if padded is None:  # with padding, pad2d's copy puts x in this order anyway
            x = self._stored_batch_last(x, "x")
        O, C, kh, kw = W.shape
        N = x.shape[0]
        if self._fuses_pool():
            _, Bh, Bw = self.merged_pool.output_shape(self.output_shape(x.shape[1:]))
            P = N * Bh * Bw
            self.w4 = self.workspace("w4", (O, 2, 2, C, kh + 1, kw + 1), order=None, zero=True)
            y, self.argmax, self.cols = conv2d_maxpool2_forward(
                x,
                W,
                b,
                padding=self.padding,
                xp=self.xp,
                batch_last=True,
                w4=self.w4,
                cols=self.workspace("cols4", (C * (kh + 1) * (kw + 1), P)),
                padded=padded,
                z=self.workspace("z4", (4 * O, P)),
                out=self.workspace("pooled", (O, P)),
                argmax=self.workspace("argmax", (O, P), dtype=self.xp.uint8),
            )  # (N, O, Ho//2, Wo//2) view of (O, Ho//2, Wo//2, N) memory
            return y
        _, Ho, Wo = self.output_shape(x.shape[1:])
        P = N * Ho * Wo
        y, self.cols = conv2d_forward(
            x,
            W,
            b,
            stride=self.stride,
            padding=self.padding,
            xp=self.xp,
            cols=self.workspace("cols", (C * kh * kw, P)),
            padded=padded,
            z=self.workspace("z", (O, P)),
            batch_last=True,
        )  # (N, O, Ho, Wo) view of (O, Ho, Wo, N) memory
        if self.merged_pool is not None:
            y = self.merged_pool.pool(y)  # moved here from after the activation (see ReLU.connect)
        return y

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array | None:
        W = self.params["W"]
        O, C, kh, kw = W.shape
        dpadded = None
        if need_dx:
            N, _, H, Wd = self.x_shape
            (ph, pw) = pair(self.padding)
            shape = (N, C, H + 2 * ph, Wd + 2 * pw)
            dpadded = self.workspace("dpadded", shape, order=BATCH_LAST)
        if self._fuses_pool():
            dy = self._stored_batch_last(dy, "dy")  # so that its rows are views
            P = self.cols.shape[1]
            return conv2d_maxpool2_backward(
                dy,
                self.argmax,
                self.cols,
                W,
                self.x_shape,
                padding=self.padding,
                xp=self.xp,
                dW=self.grads["W"],
                db=self.grads["b"],
                need_dx=need_dx,
                batch_last=True,
                w4=self.w4,  # W expanded by the forward (W has not changed since)
                dz=self.workspace("dz4", (4 * O, P)),
                dw4=self.workspace("dw4", self.w4.shape),
                dcols=self.workspace("dcols4", self.cols.shape) if need_dx else None,
                padded=dpadded,
            )
        if self.merged_pool is not None:
            dy = self.merged_pool.unpool(dy)
        dy = self._stored_batch_last(dy, "dy")  # so that conv2d_backward's dz is a view
        P = self.cols.shape[1]
        return conv2d_backward(
            dy,
            self.cols,
            W,
            self.x_shape,
            stride=self.stride,
            padding=self.padding,
            xp=self.xp,
            dW=self.grads["W"],
            db=self.grads["b"],
            need_dx=need_dx,
            dcols=self.workspace("dcols", self.cols.shape) if need_dx else None,
            padded=dpadded,
            ones=self._ones(P),
            batch_last=True,
        )

    def _ones(self, n: int) -> Array:
        """A vector of n ones for the bias gradient (a GEMV), made once per batch size."""
        ones = self._ws.get("ones")
        if ones is None or ones.shape != (n,):
            ones = self._ws["ones"] = self.xp.ones(n, dtype=self.dtype)
        return ones
