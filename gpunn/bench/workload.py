"""What is timed: a gpunn ReLU MLP's training step and inference, and the bare GEMMs of a step.

Models are written as layer widths, ``"784-256-10"`` (Dense 784->256, ReLU, Dense 256->10), or
by preset name (:data:`MODELS`). Inputs and labels are drawn on the host once and moved to the
device before timing, so no transfer is ever timed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpunn.backend import Backend
from gpunn.model import Sequential
from gpunn.nn import SGD, Adam, Dense, Optimizer, ReLU, SoftmaxCrossEntropy

__all__ = [
    "MODELS",
    "OPTIMIZERS",
    "GemmWorkload",
    "GpunnWorkload",
    "build_model",
    "gemm_shapes",
    "make_batch",
    "model_label",
    "parse_model",
]

#: the three model sizes of the issue, by name
MODELS: dict[str, tuple[int, ...]] = {
    "small": (64, 64, 10),
    "mnist": (784, 256, 10),
    "wide": (784, 2048, 2048, 10),
}

#: optimizer name -> (gpunn factory, hyperparameters shared with torch.optim)
OPTIMIZERS: dict[str, dict[str, float]] = {"sgd": {"lr": 0.01}, "adam": {"lr": 1e-3}}


def parse_model(spec: str) -> tuple[int, ...]:
    """``"mnist"`` or ``"784-256-10"`` -> layer widths (at least input and output)."""
    text = spec.strip().lower()
    if text in MODELS:
        return MODELS[text]
    try:
        widths = tuple(int(part) for part in text.split("-"))
    except ValueError:
        widths = ()
    if len(widths) < 2 or min(widths) < 1:
        names = ", ".join(MODELS)
        raise ValueError(f"model {spec!r} is neither a preset ({names}) nor widths like 784-256-10")
    return widths


def model_label(widths: tuple[int, ...]) -> str:
    return "-".join(str(w) for w in widths)


def model_name(widths: tuple[int, ...]) -> str:
    """The preset name of these widths, or "" for a custom model."""
    return next((name for name, w in MODELS.items() if w == widths), "")


def build_model(
    widths: tuple[int, ...], backend: Backend, dtype: str = "float32", seed: int = 0
) -> Sequential:
    """Dense -> ReLU -> ... -> Dense (logits), He-initialised from ``seed``."""
    layers: list[Any] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(Dense(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(ReLU())
    return Sequential(layers, backend=backend, dtype=dtype, seed=seed)


def make_optimizer(name: str) -> Optimizer:
    hp = OPTIMIZERS[name]
    return SGD(hp["lr"]) if name == "sgd" else Adam(hp["lr"])


def make_batch(
    widths: tuple[int, ...], batch: int, dtype: str = "float32", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Host inputs (batch, widths[0]) ~ N(0, 1) and integer labels in [0, widths[-1])."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, widths[0])).astype(dtype)
    y = rng.integers(0, widths[-1], size=batch, dtype=np.int64)
    return x, y


@dataclass
class GpunnWorkload:
    """A gpunn model, loss, optimizer and one batch already on the device."""

    model: Sequential
    loss: SoftmaxCrossEntropy
    opt: Optimizer
    x: Any
    y: Any

    @classmethod
    def create(
        cls,
        widths: tuple[int, ...],
        batch: int,
        backend: Backend,
        *,
        dtype: str = "float32",
        optimizer: str = "sgd",
        seed: int = 0,
    ) -> GpunnWorkload:
        model = build_model(widths, backend, dtype, seed)
        x, y = make_batch(widths, batch, dtype, seed)
        return cls(
            model,
            SoftmaxCrossEntropy(),
            make_optimizer(optimizer),
            backend.asarray(x),
            backend.asarray(y),
        )

    def train_step(self) -> None:
        """forward, loss, backward, optimizer step: the step the issue measures."""
        logits = self.model.forward(self.x)
        self.loss.forward(logits, self.y)
        self.model.backward(self.loss.backward())
        self.opt.step(self.model)

    def infer(self) -> None:
        self.model.forward(self.x, training=False)

    @property
    def sync(self) -> Callable[[], None]:
        return self.model.backend.synchronize


def gemm_shapes(widths: tuple[int, ...], batch: int) -> list[tuple[str, str, str]]:
    """The matrix products of one training step, as ``(role, a-shape, b-shape)`` descriptions.

    Per layer l with input width i and output width o: forward ``x (N,i) @ W (i,o)``, weight
    gradient ``x^T (i,N) @ dz (N,o)``, and (for every layer but the first, whose input gradient
    is never used) input gradient ``dz (N,o) @ W^T (o,i)``: 3L - 1 products, five for 2 layers.
    """
    shapes = []
    n = batch
    for l, (i, o) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        shapes.append((f"fwd{l}", f"({n},{i})", f"({i},{o})"))
        shapes.append((f"dW{l}", f"({i},{n})", f"({n},{o})"))
        if l > 0:
            shapes.append((f"dx{l}", f"({n},{o})", f"({o},{i})"))
    return shapes


class GemmWorkload:
    """The bare GEMMs of a training step (:func:`gemm_shapes`), with the array library of the
    backend, the operand layouts gpunn uses (transposes are views) and preallocated outputs."""

    def __init__(
        self, widths: tuple[int, ...], batch: int, backend: Backend, dtype: str = "float32"
    ) -> None:
        xp = backend.xp
        rng = np.random.default_rng(1)
        host = {}  # random operands: GEMM speed does not depend on the values, NaNs aside

        def arr(shape: tuple[int, ...]) -> Any:
            host[shape] = rng.standard_normal(shape).astype(dtype)
            return backend.asarray(host[shape])

        # gpunn's own choice for dW at batch 1 (see gpunn.math.dense.dense_backward)
        outer = xp.dot if batch == 1 else xp.matmul
        self.calls: list[tuple[Any, Any, Any, Any]] = []
        for l, (i, o) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            x, W, dz = arr((batch, i)), arr((i, o)), arr((batch, o))
            self.calls.append((xp.matmul, x, W, xp.empty((batch, o), dtype=dtype)))  # x @ W
            self.calls.append((outer, x.T, dz, xp.empty((i, o), dtype=dtype)))  # dW = x^T @ dz
            if l > 0:
                dx = xp.empty((batch, i), dtype=dtype)
                self.calls.append((xp.matmul, dz, W.T, dx))  # dx = dz @ W^T
        self.xp = xp
        self.sync = backend.synchronize
        self.count = len(self.calls)

    def run(self) -> None:
        for product, a, b, out in self.calls:
            product(a, b, out=out)
