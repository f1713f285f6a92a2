"""Fused bias + activation forward and activation backward: one elementwise pass each.

After ``z = x @ W`` (one GEMM), the unfused forward makes two more passes over z: ``z += b``
(``gpunn.math.dense.dense_forward``) and ``a = act(z)`` (``gpunn.math.activations.*_forward``). The
fused kernel reads z once and writes a (and, with ``keep_z``, the pre-activation z + b back into
z).

ReLU and LeakyReLU backward may be given the *output* a instead of z: for slope >= 0, a > 0
exactly when z > 0, so ``relu_backward(da, a)`` equals ``relu_backward(da, z)`` bit for bit. That
is why the forward need not keep z when the next layer only needs the activation's output.
"""

from __future__ import annotations

from typing import Any

from gpunn.backend import host_rng
from gpunn.kernels.spec import Array, Elementwise, KernelSpec, elementwise
from gpunn.math import activations

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")


def _check_act(act: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


# ------------------------------------------------------------------------------------------
# CUDA: a = act(x) and dz = da * act'(.), per element (T is float or double)
# ------------------------------------------------------------------------------------------

# x is the pre-activation z + b; each line writes a.
_FORWARD_OPS = {
    # relu_forward: max(x, 0), and NaN stays NaN as in xp.maximum
    "relu": "a = (x > (T)0 || x != x) ? x : (T)0;",
    # leaky_relu_forward: x for x > 0, slope * x otherwise
    "leaky_relu": "a = x > (T)0 ? x : slope * x;",
    # sigmoid_forward: with e = exp(-|x|) <= 1, sigmoid = 1/(1+e) for x >= 0 and e/(1+e) below
    "sigmoid": "const T e = exp(-fabs(x));\na = (x >= (T)0 ? (T)1 : e) / ((T)1 + e);",
    # tanh_forward
    "tanh": "a = tanh(x);",
}

# s is z (relu, leaky_relu; a works too, see the module docstring) or a (sigmoid, tanh).
_BACKWARD_OPS = {
    # relu_backward: da * 1[z > 0] (a product, not a select: NaN/inf in da propagate the same)
    "relu": "dz = da * (T)(s > (T)0);",
    # leaky_relu_backward: da for z > 0, slope * da otherwise
    "leaky_relu": "dz = s > (T)0 ? da : slope * da;",
    # sigmoid_backward: sigma' = a (1 - a)
    "sigmoid": "dz = da * s * ((T)1 - s);",
    # tanh_backward: tanh' = 1 - a^2
    "tanh": "dz = ((T)1 - s * s) * da;",
}


def forward_source(act: str, keep_z: bool) -> Elementwise:
    """The ElementwiseKernel for a = act(z + b); with ``keep_z`` z is updated to z + b too."""
    if keep_z:  # z is read and written: an output parameter
        return Elementwise(
            f"gpunn_bias_{act}_keep_z",
            "T b, T slope",
            "T z, T a",
            "z = z + b;\nconst T x = z;\n" + _FORWARD_OPS[act],
        )
    return Elementwise(
        f"gpunn_bias_{act}", "T z, T b, T slope", "T a", "const T x = z + b;\n" + _FORWARD_OPS[act]
    )


def backward_source(act: str) -> Elementwise:
    """The ElementwiseKernel for dz = da * act'(.) from s (z or a, see _BACKWARD_OPS)."""
    return Elementwise(f"gpunn_{act}_backward", "T da, T s, T slope", "T dz", _BACKWARD_OPS[act])


SOURCES = [forward_source(a, k) for a in ACTIVATIONS for k in (False, True)] + [
    backward_source(a) for a in ACTIVATIONS
]


# ------------------------------------------------------------------------------------------
# Bias + activation forward
# ------------------------------------------------------------------------------------------


def bias_activation_forward_reference(
    z: Array,
    b: Array,
    act: str,
    *,
    slope: float = 0.0,
    xp: Any,
    out: Array | None = None,
    keep_z: bool = False,
) -> Array:
    """a = act(z + b): z (N, out) = x @ W, b (out,) -> a (N, out), written into ``out``.

    Reference: the bias add of ``gpunn.math.dense.dense_forward`` followed by
    ``gpunn.math.activations.<act>_forward``. With ``keep_z`` z becomes z + b in place (as the core
    does); otherwise z is left unchanged by this reference unless ``out`` is z itself (the
    fused form may leave it either way: read it only with ``keep_z``). ``slope`` is LeakyReLU's
    and ignored by the others.
    """
    _check_act(act)
    # (N, out) pre-activation; in place when z is kept or is about to be overwritten anyway
    x = xp.add(z, b, out=z) if keep_z or out is z else z + b
    if act == "relu":
        return activations.relu_forward(x, xp=xp, out=out)
    if act == "leaky_relu":
        return activations.leaky_relu_forward(x, slope, xp=xp, out=out)
    if act == "sigmoid":
        return activations.sigmoid_forward(x, xp=xp, out=out)
    return activations.tanh_forward(x, xp=xp, out=out)


def _build_forward(xp: Any) -> Any:
    def bias_activation_forward_fused(
        z: Array,
        b: Array,
        act: str,
        *,
        slope: float = 0.0,
        xp: Any,
        out: Array | None = None,
        keep_z: bool = False,
    ) -> Array:
        """Fused form of bias_activation_forward_reference: one elementwise kernel."""
        _check_act(act)
        kernel = elementwise(xp, forward_source(act, keep_z))
        if keep_z:
            a = out if out is not None else xp.empty_like(z)
            kernel(b, slope, z, a)  # z, a are outputs: z <- z + b, a <- act(z)
            return a
        if out is None:
            return kernel(z, b, slope)
        kernel(z, b, slope, out)
        return out

    return bias_activation_forward_fused


def _probe_forward(impl: Any, xp: Any) -> list[Any]:
    rng = host_rng(1234)
    outs = []
    for dtype in ("float32", "float64"):
        for act in ACTIVATIONS:
            for keep_z in (False, True):
                z = xp.asarray(rng.standard_normal((7, 33)) * 3, dtype=dtype)
                b = xp.asarray(rng.standard_normal(33), dtype=dtype)
                a = impl(z, b, act, slope=0.1, xp=xp, keep_z=keep_z)
                outs += [a, z] if keep_z else [a]
    return outs


BIAS_ACTIVATION_FORWARD = KernelSpec(
    name="bias_activation_forward",
    repeats=(
        "gpunn.math.dense.dense_forward",
        *(f"gpunn.math.activations.{a}_forward" for a in ACTIVATIONS),
    ),
    reference=bias_activation_forward_reference,
    build_fused=_build_forward,
    probe=_probe_forward,
)


# ------------------------------------------------------------------------------------------
# Activation backward
# ------------------------------------------------------------------------------------------


def activation_backward_reference(
    da: Array, s: Array, act: str, *, slope: float = 0.0, xp: Any, out: Array | None = None
) -> Array:
    """dz = da * act'(.) (N, out), from s = z or a for relu/leaky_relu, s = a for sigmoid/tanh.

    Reference: ``gpunn.math.activations.<act>_backward``.
    """
    _check_act(act)
    if act == "relu":
        return activations.relu_backward(da, s, xp=xp, out=out)
    if act == "leaky_relu":
        return activations.leaky_relu_backward(da, s, slope, xp=xp, out=out)
    if act == "sigmoid":
        return activations.sigmoid_backward(da, s, xp=xp, out=out)
    return activations.tanh_backward(da, s, xp=xp, out=out)


def _build_backward(xp: Any) -> Any:
    def activation_backward_fused(
        da: Array, s: Array, act: str, *, slope: float = 0.0, xp: Any, out: Array | None = None
    ) -> Array:
        """Fused form of activation_backward_reference: one elementwise kernel."""
        _check_act(act)
        kernel = elementwise(xp, backward_source(act))
        if out is None:
            return kernel(da, s, slope)
        kernel(da, s, slope, out)
        return out

    return activation_backward_fused


def _probe_backward(impl: Any, xp: Any) -> list[Any]:
    rng = host_rng(4321)
    outs = []
    for dtype in ("float32", "float64"):
        for act in ACTIVATIONS:
            da = xp.asarray(rng.standard_normal((5, 19)), dtype=dtype)
            z = xp.asarray(rng.standard_normal((5, 19)) * 3, dtype=dtype)
            if act == "sigmoid":  # sigmoid and tanh are given their output a
                s = 1 / (1 + xp.exp(-z))
            elif act == "tanh":
                s = xp.tanh(z)
            else:
                s = z
            outs.append(impl(da, s, act, slope=0.1, xp=xp))
    return outs


ACTIVATION_BACKWARD = KernelSpec(
    name="activation_backward",
    repeats=tuple(f"gpunn.math.activations.{a}_backward" for a in ACTIVATIONS),
    reference=activation_backward_reference,
    build_fused=_build_backward,
    probe=_probe_backward,
)
