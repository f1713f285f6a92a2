"""Activation layers: ReLU, LeakyReLU, Sigmoid and Tanh (math in ``gpunn.math.activations``).

The performance plumbing lives here, with the state that makes it safe. Right after a Dense
layer an activation adds that layer's bias in its own pass (``a = act(x @ W + b)`` becomes one
GEMM and one elementwise pass, a single fused kernel on CuPy), and ReLU works in place on its
neighbours' scratch arrays. Both are arranged in :meth:`Activation.connect`, which sees the two
neighbours; the math functions know nothing of it.
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
from gpunn.nn.dense import Dense
from gpunn.nn.layer import Array, Layer


class Activation(Layer):
    """Base of the elementwise activations: optional bias fusion and in-place work."""

    #: the activation's name in gpunn.kernels ("relu", ...)
    act: ClassVar[str]
    slope: float = 0.0  # LeakyReLU's; the others ignore it

    def __init__(self) -> None:
        super().__init__()
        #: the Dense layer right before this one, whose bias this layer adds (or None)
        self.bias_from: Dense | None = None
        #: forward's input is the previous layer's scratch output, and backward's gradient
        #: the next layer's scratch: this layer may write over them (ReLU does)
        self.may_overwrite_x = False
        self.may_overwrite_dy = False

    def connect(self, prev: Layer | None, nxt: Layer | None) -> None:
        self.bias_from = prev if isinstance(prev, Dense) else None
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
        b = self.bias_from.params["b"]
        return forward(z, b, self.act, slope=self.slope, xp=self.xp, out=out, keep_z=keep_z)

    def function(self, z: Array, out: Array) -> Array:
        """The plain activation a = act(z) (one of the ``gpunn.math.activations`` forwards)."""
        raise NotImplementedError

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

    def function(self, z: Array, out: Array) -> Array:
        return relu_forward(z, xp=self.xp, out=out)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self.z = x  # in place, x then holds a, which is positive exactly where z was
        in_place = training and self.may_overwrite_x
        out = x if in_place else self.workspace("a", x.shape)
        return self.activate(x, out, keep_z=not in_place)

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        out = dy if self.may_overwrite_dy else self.workspace("dz", dy.shape)
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
        return self.activate(x, self.workspace("a", x.shape), keep_z=True)

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        return self.gradient(dy, self.z, self.workspace("dz", dy.shape))


class Sigmoid(Activation):
    """Logistic sigmoid (stable for large |z|). Dense layers feeding it get Glorot init."""

    kind = "Sigmoid"
    init_hint = "glorot"
    act = "sigmoid"

    def function(self, z: Array, out: Array) -> Array:
        return sigmoid_forward(z, xp=self.xp, out=out)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self.a = self.activate(x, self.workspace("a", x.shape), keep_z=False)
        return self.a

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        return self.gradient(dy, self.a, self.workspace("dz", dy.shape))  # sigma' = a (1 - a)


class Tanh(Activation):
    """Hyperbolic tangent. Dense layers feeding it get Glorot initialisation."""

    kind = "Tanh"
    init_hint = "glorot"
    act = "tanh"

    def function(self, z: Array, out: Array) -> Array:
        return tanh_forward(z, xp=self.xp, out=out)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self.a = self.activate(x, self.workspace("a", x.shape), keep_z=False)
        return self.a

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        return self.gradient(dy, self.a, self.workspace("dz", dy.shape))  # tanh' = 1 - a^2
