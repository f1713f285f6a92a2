"""Activation layers: ReLU, LeakyReLU, Sigmoid and Tanh (math in ``gpunn.math.activations``).

The performance plumbing lives here, with the state that makes it safe. Right after a Dense
or Conv2D layer an activation adds that layer's bias in its own pass (``a = act(x @ W + b)``
becomes one GEMM and one elementwise pass, a single fused kernel on CuPy), and ReLU works in
place on its neighbours' scratch arrays. Between a Conv2D and a MaxPool2D, ReLU moves the pool
before itself (see :meth:`ReLU.connect`). All of it is arranged in :meth:`Activation.connect`,
which sees the two neighbours; the math functions know nothing of it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gpunn import kernels
from gpunn.math.activations import (
    leaky_relu_forward,
    relu_forward,
    sigmoid_forward,
    tanh_forward,
)
from gpunn.nn.conv import Conv2D
from gpunn.nn.dense import Dense
from gpunn.nn.layer import Array, Layer, memory_order
from gpunn.nn.pool import MaxPool2D


class Activation(Layer):
    """Base of the elementwise activations: optional bias fusion and in-place work."""

    #: the activation's name in gpunn.kernels ("relu", ...)
    act: ClassVar[str]
    slope: float = 0.0  # LeakyReLU's; the others ignore it

    def __init__(self) -> None:
        super().__init__()
        #: the Dense or Conv2D layer right before this one, whose bias this layer adds (or None)
        self.bias_from: Dense | Conv2D | None = None
        #: forward's input is the previous layer's scratch output, and backward's gradient
        #: the next layer's scratch: this layer may write over them (ReLU does)
        self.may_overwrite_x = False
        self.may_overwrite_dy = False

    def connect(self, prev: Layer | None, nxt: Layer | None) -> None:
        self.bias_from = prev if isinstance(prev, (Dense, Conv2D)) else None
        if self.bias_from is not None:
            self.bias_from.defer_bias = True  # its forward stops at x @ W; this layer adds b
        self.may_overwrite_x = prev is not None and prev.returns_scratch_output
        self.may_overwrite_dy = nxt is not None and nxt.returns_scratch_grad

    def activate(self, z: Array, out: Array, *, keep_z: bool) -> Array:
        """a = act(z), or act(z + b) with the bias of ``bias_from``, written into ``out``.

        With a bias and ``keep_z``, z becomes z + b (for a backward that reads the
        pre-activation). The bias add and the activation are one fused kernel on CuPy.
        """
        if self.bias_from is None:
            return self.function(z, out)
        forward = kernels.get("bias_activation_forward", self.xp)
        b = self.bias_from.deferred_bias()  # shaped to broadcast over z: (out,) or (O, 1, 1)
        return forward(z, b, self.act, slope=self.slope, xp=self.xp, out=out, keep_z=keep_z)

    def function(self, z: Array, out: Array) -> Array:
        """The plain activation a = act(z) (one of the ``gpunn.math.activations`` forwards)."""
        raise NotImplementedError

    def scratch(self, name: str, like: Array) -> Array:
        """A workspace of ``like``'s shape, stored in its memory order (a convolution's
        batch-innermost maps stay batch-innermost, so the elementwise pass streams)."""
        if like.ndim <= 2:
            return self.workspace(name, like.shape)
        return self.workspace(name, like.shape, order=memory_order(like))

    def gradient(self, dy: Array, s: Array, out: Array) -> Array:
        """dz = dy * act'(.) from s (z or a, as the subclass keeps it): the ``*_backward`` math,
        or its fused kernel on CuPy."""
        backward = kernels.get("activation_backward", self.xp)
        return backward(dy, s, self.act, slope=self.slope, xp=self.xp, out=out)


class ReLU(Activation):
    """Rectified linear unit. Dense layers feeding it get He initialisation.

    Between two Dense layers of a Sequential it works in place on their scratch arrays: a
    training forward overwrites z (the previous Dense's output) with a, and backward masks the
    incoming gradient (the next Dense's dx) instead of writing new arrays. That is two arrays
    of the batch's size less to stream through memory per step. Backward only needs where
    z > 0, which is where a > 0. An inference forward leaves z intact (readable as ``z``).
    """

    kind = "ReLU"
    init_hint = "he"
    act = "relu"

    def connect(self, prev: Layer | None, nxt: Layer | None) -> None:
        """As every activation, plus: in Conv2D -> ReLU -> MaxPool2D the pool moves first.

        relu(max(z) + b) = max(relu(z + b)) for a per-channel bias b, because ReLU never
        decreases: so the Conv2D runs the pool on its output, this layer adds the bias and
        applies ReLU to the pooled (4x smaller for a 2x2 pool) array, and the MaxPool2D passes
        data through. Backward gives the same gradients: a window whose maximum z is <= -b
        passes no gradient either way, and any other sends it to the same first maximum.
        Only ReLU: a function that can map two different inputs to the same float (a
        saturated sigmoid) could change which tied cell wins.
        """
        super().connect(prev, nxt)
        if isinstance(prev, Conv2D) and isinstance(nxt, MaxPool2D):
            prev.merged_pool, nxt.merged = nxt, True

    def function(self, z: Array, out: Array) -> Array:
        return relu_forward(z, xp=self.xp, out=out)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self.z = x  # in place, x then holds a, which is positive exactly where z was
        in_place = training and self.may_overwrite_x
        out = x if in_place else self.scratch("a", x)
        return self.activate(x, out, keep_z=not in_place)

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        out = dy if self.may_overwrite_dy else self.scratch("dz", self.z)
        return self.gradient(dy, self.z, out)


class LeakyReLU(Activation):
    """ReLU with a small slope for negative inputs, so no unit is ever completely dead."""

    kind = "LeakyReLU"
    init_hint = "he"
    act = "leaky_relu"

    def __init__(self, slope: float = 0.01) -> None:
        super().__init__()
        if not 0 <= float(slope) < 1:
            raise ValueError(f"LeakyReLU slope must be in [0, 1), got {slope!r}")
        self.slope = float(slope)

    def config(self) -> dict[str, Any]:
        return {"slope": self.slope}

    def function(self, z: Array, out: Array) -> Array:
        return leaky_relu_forward(z, self.slope, xp=self.xp, out=out)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self.z = x  # with a bias, x becomes z + b in place (keep_z), which backward reads
        return self.activate(x, self.scratch("a", x), keep_z=True)

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        return self.gradient(dy, self.z, self.scratch("dz", self.z))


class Sigmoid(Activation):
    """Logistic sigmoid (stable for large |z|). Dense layers feeding it get Glorot init."""

    kind = "Sigmoid"
    init_hint = "glorot"
    act = "sigmoid"

    def function(self, z: Array, out: Array) -> Array:
        return sigmoid_forward(z, xp=self.xp, out=out)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self.a = self.activate(x, self.scratch("a", x), keep_z=False)
        return self.a

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        return self.gradient(dy, self.a, self.scratch("dz", self.a))  # sigma' = a (1 - a)


class Tanh(Activation):
    """Hyperbolic tangent. Dense layers feeding it get Glorot initialisation."""

    kind = "Tanh"
    init_hint = "glorot"
    act = "tanh"

    def function(self, z: Array, out: Array) -> Array:
        return tanh_forward(z, xp=self.xp, out=out)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self.a = self.activate(x, self.scratch("a", x), keep_z=False)
        return self.a

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        return self.gradient(dy, self.a, self.scratch("dz", self.a))  # tanh' = 1 - a^2
