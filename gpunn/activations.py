"""Elementwise activations: each forward function sits directly above its backward.

The functions are plain math on arrays and ``xp`` (NumPy or CuPy): ``*_forward(z)`` returns the
activation ``a``, ``*_backward(da, ...)`` returns ``dz = da * a'(z)``. The layer classes below
keep what the backward needs and reuse their output arrays from step to step.
"""

from __future__ import annotations

from typing import Any

from gpunn import kernels
from gpunn.layer import Array, Layer

# ------------------------------------------------------------------------------------------
# ReLU
# ------------------------------------------------------------------------------------------


def relu_forward(z: Array, *, xp: Any, out: Array | None = None) -> Array:
    """a = max(z, 0), shape of z."""
    # Against a row of zeros broadcast over the batch rather than the scalar 0: NumPy has a
    # vectorised maximum loop only for two arrays (2x faster here for 1024 x 256).
    zero = xp.zeros(z.shape[-1:], dtype=z.dtype)
    return xp.maximum(z, zero, out=out)


def relu_backward(da: Array, z: Array, *, xp: Any, out: Array | None = None) -> Array:
    """dz = da * 1[z > 0]  (the kink at 0 takes derivative 0, as PyTorch does).

    ``z`` may be the forward's input or its output a = max(z, 0): both are > 0 at the same places.
    """
    return xp.multiply(da, z > 0, out=out)


# ------------------------------------------------------------------------------------------
# Leaky ReLU
# ------------------------------------------------------------------------------------------


def leaky_relu_forward(z: Array, slope: float, *, xp: Any, out: Array | None = None) -> Array:
    """a = z for z > 0, slope * z otherwise."""
    return _into(xp.where(z > 0, z, slope * z), out)


def leaky_relu_backward(
    da: Array, z: Array, slope: float, *, xp: Any, out: Array | None = None
) -> Array:
    """dz = da for z > 0, slope * da otherwise."""
    return _into(xp.where(z > 0, da, slope * da), out)


# ------------------------------------------------------------------------------------------
# Sigmoid
# ------------------------------------------------------------------------------------------


def sigmoid_forward(z: Array, *, xp: Any, out: Array | None = None) -> Array:
    """a = 1 / (1 + exp(-z)), computed without overflow for any z.

    With e = exp(-|z|) <= 1: sigmoid(z) = 1 / (1 + e) for z >= 0 and e / (1 + e) for z < 0, so
    exp never sees a large positive argument (the naive form overflows for z < -88 in float32).
    """
    e = xp.exp(-xp.abs(z))
    return xp.divide(xp.where(z >= 0, 1, e), 1 + e, out=out)


def sigmoid_backward(da: Array, a: Array, *, xp: Any, out: Array | None = None) -> Array:
    """dz = da * a * (1 - a), from the forward's output a."""
    out = xp.multiply(da, a, out=out)
    out *= 1 - a
    return out


# ------------------------------------------------------------------------------------------
# Tanh
# ------------------------------------------------------------------------------------------


def tanh_forward(z: Array, *, xp: Any, out: Array | None = None) -> Array:
    """a = tanh(z)."""
    return xp.tanh(z, out=out)


def tanh_backward(da: Array, a: Array, *, xp: Any, out: Array | None = None) -> Array:
    """dz = da * (1 - a^2), from the forward's output a."""
    out = xp.multiply(a, a, out=out)
    xp.subtract(1, out, out=out)
    out *= da
    return out


def _into(result: Array, out: Array | None) -> Array:
    """Copy ``result`` into ``out`` when one is given (for ops without an ``out=`` form)."""
    if out is None:
        return result
    out[...] = result
    return out


# ------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------


class ReLU(Layer):
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

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self.z = x  # in place, x then holds a, which is positive exactly where z was
        in_place = training and self.may_overwrite_x
        out = x if in_place else self.workspace("a", x.shape)
        if self.bias_from is not None:  # x = h @ W: add the Dense bias and apply, one pass
            return self.bias_and_activation(x, out, keep_z=not in_place)
        return relu_forward(x, xp=self.xp, out=out)

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        out = dy if self.may_overwrite_dy else self.workspace("dz", dy.shape)
        backward = kernels.get("activation_backward", self.xp)  # relu_backward, or fused
        return backward(dy, self.z, "relu", xp=self.xp, out=out)


class LeakyReLU(Layer):
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

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self.z = x
        out = self.workspace("a", x.shape)
        if self.bias_from is not None:
            return self.bias_and_activation(x, out, keep_z=True, slope=self.slope)
        return leaky_relu_forward(x, self.slope, xp=self.xp, out=out)

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        out = self.workspace("dz", dy.shape)
        backward = kernels.get("activation_backward", self.xp)  # leaky_relu_backward, or fused
        return backward(dy, self.z, "leaky_relu", slope=self.slope, xp=self.xp, out=out)


class Sigmoid(Layer):
    """Logistic sigmoid (stable for large |z|). Dense layers feeding it get Glorot init."""

    kind = "Sigmoid"
    init_hint = "glorot"
    act = "sigmoid"

    def forward(self, x: Array, *, training: bool = True) -> Array:
        out = self.workspace("a", x.shape)
        if self.bias_from is not None:
            self.a = self.bias_and_activation(x, out, keep_z=False)
        else:
            self.a = sigmoid_forward(x, xp=self.xp, out=out)
        return self.a

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        out = self.workspace("dz", dy.shape)
        backward = kernels.get("activation_backward", self.xp)  # sigmoid_backward, or fused
        return backward(dy, self.a, "sigmoid", xp=self.xp, out=out)


class Tanh(Layer):
    """Hyperbolic tangent. Dense layers feeding it get Glorot initialisation."""

    kind = "Tanh"
    init_hint = "glorot"
    act = "tanh"

    def forward(self, x: Array, *, training: bool = True) -> Array:
        out = self.workspace("a", x.shape)
        if self.bias_from is not None:
            self.a = self.bias_and_activation(x, out, keep_z=False)
        else:
            self.a = tanh_forward(x, xp=self.xp, out=out)
        return self.a

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        out = self.workspace("dz", dy.shape)
        backward = kernels.get("activation_backward", self.xp)  # tanh_backward, or fused
        return backward(dy, self.a, "tanh", xp=self.xp, out=out)
