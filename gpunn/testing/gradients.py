"""Gradient checking by central differences: the test every layer and loss must pass.

Analytic gradients from ``backward`` are compared with

    dL/dθ ≈ (L(θ + ε) - L(θ - ε)) / (2ε)

element by element, in float64, where the difference quotient is accurate to about ε² (1e-10
for ε = 1e-5). A layer is checked inside a model whose loss is a fixed random projection
``L = sum(y * R)``, so every output element contributes a different weight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpunn.backend import Backend, get_backend
from gpunn.model import Sequential
from gpunn.nn import Array, Layer, Loss

__all__ = [
    "check_function_gradients",
    "check_layer_gradients",
    "check_loss_gradients",
    "check_model_gradients",
    "numerical_gradient",
    "relative_error",
]


def relative_error(analytic: Any, numeric: Any) -> float:
    """Worst |a - n| / max(|a|, |n|, floor) over elements, floor = 1e-3 * the largest |gradient|.

    The floor keeps entries whose true gradient is (nearly) zero from dividing rounding noise by
    zero; every entry of noticeable size is held to a true relative error.
    """
    xp = get_backend("numpy").xp
    a = xp.asarray(_host(analytic), dtype=xp.float64).ravel()
    n = xp.asarray(_host(numeric), dtype=xp.float64).ravel()
    if a.shape != n.shape:
        raise ValueError(f"gradient shapes differ: {a.shape} vs {n.shape}")
    if a.size == 0:
        return 0.0
    floor = max(1e-3 * float(max(xp.abs(a).max(), xp.abs(n).max())), 1e-30)
    return float((xp.abs(a - n) / xp.maximum(xp.maximum(xp.abs(a), xp.abs(n)), floor)).max())


def numerical_gradient(f: Callable[[], float], x: Array, eps: float) -> Any:
    """Central differences of the scalar f() with respect to every element of x (in place)."""
    flat = x.reshape(-1)  # a view: x is contiguous
    grad = [0.0] * flat.size
    for j in range(flat.size):
        old = float(flat[j])
        flat[j] = old + eps
        plus = f()
        flat[j] = old - eps
        minus = f()
        flat[j] = old
        grad[j] = (plus - minus) / (2 * eps)
    return get_backend("numpy").xp.asarray(grad).reshape(x.shape)


def check_model_gradients(
    model: Sequential,
    loss: Loss,
    x: Any,
    y: Any,
    *,
    eps: float = 1e-5,
    training: bool = False,
) -> dict[str, float]:
    """Worst relative error of every parameter's gradient and of dL/dx ("input").

    The model should be float64 (single precision cannot resolve the difference quotient).
    ``training=True`` runs the forward passes in training mode (BatchNorm then normalises with
    the batch's own statistics, and its gradient goes through them); it must leave the output
    a deterministic function of the input (no Dropout).
    """
    x = model.backend.asarray(x, dtype=model.dtype).copy()
    y = model.backend.asarray(y)

    def f() -> float:
        return float(loss.forward(model.forward(x, training=training), y))

    f()
    dx = model.backward(loss.backward(), input_grad=True)
    analytic = {k: model.backend.to_numpy(g).copy() for k, g in model.grads.items()}
    analytic["input"] = model.backend.to_numpy(dx).copy()
    errors = {}
    for key, p in model.params.items():
        errors[key] = relative_error(analytic[key], numerical_gradient(f, p, eps))
    errors["input"] = relative_error(analytic["input"], numerical_gradient(f, x, eps))
    return errors


class _Projection(Loss):
    """L = sum(z * R) for a fixed R: dL/dz = R. Turns any layer output into a scalar."""

    def __init__(self, R: Array) -> None:
        self.R = R

    def forward(self, logits: Array, y: Array) -> Array:
        return (logits * self.R).sum()

    def backward(self) -> Array:
        return self.R.copy()


def check_layer_gradients(
    layer: Layer,
    x: Any,
    *,
    backend: str | Backend = "numpy",
    seed: int = 0,
    eps: float = 1e-5,
    training: bool = False,
) -> dict[str, float]:
    """Gradient-check one layer on input x (N, ...) in float64; returns errors as above.

    ``training`` as for :func:`check_model_gradients`.
    """
    model = Sequential([layer], backend=backend, dtype="float64", seed=seed)
    out = model.forward(model.backend.asarray(x, dtype="float64"), training=training)
    R = model.backend.asarray(model.backend.host_rng(seed + 1).standard_normal(out.shape))
    return check_model_gradients(model, _Projection(R), x, R, eps=eps, training=training)


def check_loss_gradients(loss: Loss, logits: Any, y: Any, *, eps: float = 1e-5) -> float:
    """Worst relative error of ``loss.backward()`` against central differences of the loss."""
    xp = get_backend("numpy").xp
    z = xp.array(_host(logits), dtype=xp.float64)
    loss.forward(z, y)
    analytic = _host(loss.backward()).copy()
    numeric = numerical_gradient(lambda: float(loss.forward(z, y)), z, eps)
    return relative_error(analytic, numeric)


def check_function_gradients(
    forward: Callable[[Array], Array],
    backward: Callable[[Array], Array],
    x: Any,
    *,
    seed: int = 0,
    eps: float = 1e-5,
) -> float:
    """Check a forward/backward function pair: backward(dy) must be dL/dx for L = sum(y * R)."""
    xp = get_backend("numpy").xp
    x = xp.array(_host(x), dtype=xp.float64)
    R = get_backend("numpy").host_rng(seed).standard_normal(forward(x).shape)
    analytic = _host(backward(R)).copy()
    numeric = numerical_gradient(lambda: float((forward(x) * R).sum()), x, eps)
    return relative_error(analytic, numeric)


def _host(a: Any) -> Any:
    return a.get() if hasattr(a, "get") else a
