"""MaxPool2D and AvgPool2D: pooling layers over 2-D windows (math in ``gpunn.math.pool``).

Outputs and gradients are kept in the memory order of the input (batch-innermost after a
Conv2D, see ``gpunn.nn.conv``). A MaxPool2D right after Conv2D -> ReLU is run by the Conv2D,
before the activation (arranged by ``ReLU.connect``); the layer then passes data through.
"""

from __future__ import annotations

from typing import Any

from gpunn.math.conv import IntPair, output_size, pair
from gpunn.math.pool import (
    avg_pool2d_backward,
    avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)
from gpunn.nn.conv import config_value, int_or_pair, pair_text
from gpunn.nn.layer import Array, Layer, memory_order


class Pool2D(Layer):
    """Base of the pooling layers: window size, stride (default: the window size), shapes."""

    input_rank = 3
    keeps_shape = False

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None) -> None:
        super().__init__()
        self.kernel_size = int_or_pair(kernel_size, f"{self.kind} kernel_size", low=1)
        given = stride is not None
        self.stride = int_or_pair(stride, f"{self.kind} stride", low=1) if given else None

    @property
    def steps(self) -> int | tuple[int, int]:
        """The stride in effect (the kernel size when none was given)."""
        return self.kernel_size if self.stride is None else self.stride

    def config(self) -> dict[str, Any]:
        stride = None if self.stride is None else config_value(self.stride)
        return {"kernel_size": config_value(self.kernel_size), "stride": stride}

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        C, H, W = in_shape
        (kh, kw), (sh, sw) = pair(self.kernel_size), pair(self.steps)
        if kh > H or kw > W:
            raise ValueError(f"a {kh}x{kw} window does not fit an {H}x{W} input")
        return (C, output_size(H, kh, sh), output_size(W, kw, sw))

    def describe(self) -> str:
        text = pair_text(self.kernel_size)
        if self.stride is not None and self.stride != self.kernel_size:
            text += f", stride {pair_text(self.stride, square=False)}"
        return f"{self.kind}({text})"


class MaxPool2D(Pool2D):
    """The maximum of each window; the gradient goes to the first maximum in row-major order
    within the window, as PyTorch sends it."""

    kind = "MaxPool2D"
    returns_scratch_output = True  # backward reads argmax, never y
    merged = False

    def bind(self, xp: Any, dtype: Any, params: dict[str, Array], grads: dict[str, Array]) -> None:
        super().bind(xp, dtype, params, grads)
        #: True when the Conv2D before the activation before this layer runs the pool
        #: (``pool``/``unpool``) and this layer passes data through (see ReLU.connect)
        self.merged = False

    def forward(self, x: Array, *, training: bool = True) -> Array:
        return x if self.merged else self.pool(x)

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        return dy if self.merged else self.unpool(dy)

    def pool(self, x: Array) -> Array:
        """y = max over each window of x (N, C, H, W), keeping the argmax for ``unpool``."""
        self.x_shape, self.x_order = x.shape, memory_order(x)
        shape = (x.shape[0], *self.output_shape(x.shape[1:]))
        y, self.argmax = max_pool2d_forward(
            x,
            self.kernel_size,
            self.steps,
            xp=self.xp,
            out=self.workspace("y", shape, order=self.x_order),
            argmax=self.workspace("argmax", shape, order=self.x_order, dtype=self._index_type()),
        )
        return y

    def unpool(self, dy: Array) -> Array:
        """dx (N, C, H, W): each window's dy at its argmax cell (the backward of ``pool``)."""
        return max_pool2d_backward(
            dy,
            self.argmax,
            self.x_shape,
            self.kernel_size,
            self.steps,
            xp=self.xp,
            out=self.workspace("dx", self.x_shape, order=self.x_order),
        )

    def _index_type(self) -> Any:
        kh, kw = pair(self.kernel_size)
        return self.xp.uint8 if kh * kw <= 256 else self.xp.int32


class AvgPool2D(Pool2D):
    """The mean of each window (no padding, so every window averages kh*kw cells)."""

    kind = "AvgPool2D"
    returns_scratch_output = True  # backward needs only the shapes

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self.x_shape, self.x_order = x.shape, memory_order(x)
        shape = (x.shape[0], *self.output_shape(x.shape[1:]))
        out = self.workspace("y", shape, order=self.x_order)
        return avg_pool2d_forward(x, self.kernel_size, self.steps, xp=self.xp, out=out)

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        out = self.workspace("dx", self.x_shape, order=self.x_order)
        return avg_pool2d_backward(
            dy, self.x_shape, self.kernel_size, self.steps, xp=self.xp, out=out
        )
