"""What is timed: a gpunn network's training step and inference, and the bare GEMMs of a step.

Models are ReLU MLPs written as layer widths, ``"784-256-10"`` (Dense 784->256, ReLU, Dense
256->10), or by preset name: the MLP presets of :data:`MODELS`, and the convolutional presets of
:data:`CONV_MODELS` (``"lenet5"``: LeNet-5 on 1x28x28 images, :func:`gpunn.presets.lenet5`).
Inputs and labels are drawn on the host once and moved to the device before timing, so no
transfer is ever timed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpunn import presets
from gpunn.backend import Backend
from gpunn.model import Sequential
from gpunn.nn import SGD, Adam, Dense, Layer, Optimizer, ReLU, SoftmaxCrossEntropy

__all__ = [
    "CONV_MODELS",
    "MODELS",
    "OPTIMIZERS",
    "ConvNet",
    "GemmWorkload",
    "GpunnWorkload",
    "Model",
    "build_model",
    "gemm_shapes",
    "im2col_bytes",
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


@dataclass(frozen=True)
class ConvNet:
    """A convolutional preset: its name, one sample's (C, H, W) and the number of classes."""

    name: str
    input_shape: tuple[int, int, int]
    classes: int

    def layers(self) -> list[Layer]:
        """The preset's layers (:mod:`gpunn.presets`), fresh."""
        channels, size, _ = self.input_shape
        return presets.lenet5(in_channels=channels, image_size=size, classes=self.classes)


#: the convolutional presets, by name; batch sizes default to :data:`CONV_BATCH_SIZES`
CONV_MODELS: dict[str, ConvNet] = {"lenet5": ConvNet("lenet5", (1, 28, 28), 10)}

#: a model of the benchmark: MLP layer widths, or a convolutional preset
Model = tuple[int, ...] | ConvNet


def parse_model(spec: str) -> Model:
    """``"mnist"``, ``"784-256-10"`` -> layer widths; ``"lenet5"`` -> its :class:`ConvNet`."""
    text = spec.strip().lower()
    if text in MODELS:
        return MODELS[text]
    if text in CONV_MODELS:
        return CONV_MODELS[text]
    try:
        widths = tuple(int(part) for part in text.split("-"))
    except ValueError:
        widths = ()
    if len(widths) < 2 or min(widths) < 1:
        names = ", ".join([*MODELS, *CONV_MODELS])
        raise ValueError(f"model {spec!r} is neither a preset ({names}) nor widths like 784-256-10")
    return widths


def model_label(model: Model) -> str:
    """``"784-256-10"`` for an MLP, ``"lenet5-1x28x28"`` for a convolutional preset."""
    if isinstance(model, ConvNet):
        return f"{model.name}-" + "x".join(str(d) for d in model.input_shape)
    return "-".join(str(w) for w in model)


def model_name(model: Model) -> str:
    """The preset name of this model, or "" for a custom MLP."""
    if isinstance(model, ConvNet):
        return model.name
    return next((name for name, w in MODELS.items() if w == model), "")


def sample_shape(model: Model) -> tuple[int, ...]:
    """One input sample's shape: (features,) for an MLP, (C, H, W) for a CNN."""
    return model.input_shape if isinstance(model, ConvNet) else (model[0],)


def n_classes(model: Model) -> int:
    return model.classes if isinstance(model, ConvNet) else model[-1]


def build_model(
    model: Model, backend: Backend, dtype: str = "float32", seed: int = 0
) -> Sequential:
    """The network: Dense -> ReLU -> ... -> Dense (logits) for widths, or the preset's layers;
    initialised from ``seed``."""
    if isinstance(model, ConvNet):
        return Sequential(
            model.layers(), backend=backend, dtype=dtype, seed=seed, input_shape=model.input_shape
        )
    widths = model
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
    model: Model, batch: int, dtype: str = "float32", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Host inputs (batch, *sample) ~ N(0, 1) and integer labels in [0, classes)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *sample_shape(model))).astype(dtype)
    y = rng.integers(0, n_classes(model), size=batch, dtype=np.int64)
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
        spec: Model,
        batch: int,
        backend: Backend,
        *,
        dtype: str = "float32",
        optimizer: str = "sgd",
        seed: int = 0,
    ) -> GpunnWorkload:
        model = build_model(spec, backend, dtype, seed)
        x, y = make_batch(spec, batch, dtype, seed)
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


@dataclass(frozen=True)
class Gemm:
    """One matrix product of a training step: ``a (m, k) @ b (k, n)``; a transposed operand is
    a transposed view of a C-ordered array, as in the step itself."""

    role: str  # "fwd0", "dW0", "dx1", ... (the number counts the layers with weights)
    a: tuple[int, int]
    b: tuple[int, int]
    a_transposed: bool = False
    b_transposed: bool = False

    def describe(self) -> tuple[str, str, str]:
        return (self.role, f"({self.a[0]},{self.a[1]})", f"({self.b[0]},{self.b[1]})")


def step_gemms(layers: list[Layer], input_shape: tuple[int, ...], batch: int) -> list[Gemm]:
    """The GEMMs of one training step of ``layers`` on a batch of ``batch`` samples.

    Dense (i -> o), N rows: forward ``x (N,i) @ W (i,o)``, weight gradient ``x^T (i,N) @ dz
    (N,o)``, input gradient ``dz (N,o) @ W^T (o,i)``. Conv2D (C -> O channels, kh x kw kernel,
    Ho x Wo outputs) as im2col: with K = C*kh*kw and M = N*Ho*Wo, forward ``W (O,K) @ cols
    (K,M)``, weight gradient ``dz (O,M) @ cols^T (M,K)``, input gradient ``W^T (K,O) @ dz
    (O,M)`` (then col2im). The first layer with weights has no input gradient (nobody reads it).
    Pooling, Flatten, BatchNorm and activations have no GEMM.
    """
    gemms: list[Gemm] = []
    shape = tuple(input_shape)
    weighted = 0
    for layer in layers:
        out = tuple(layer.output_shape(shape))
        if layer.kind == "Dense":
            i, o, n = layer.in_features, layer.out_features, batch
            gemms.append(Gemm(f"fwd{weighted}", (n, i), (i, o)))
            gemms.append(Gemm(f"dW{weighted}", (i, n), (n, o), a_transposed=True))
            if weighted:
                gemms.append(Gemm(f"dx{weighted}", (n, o), (o, i), b_transposed=True))
            weighted += 1
        elif layer.kind == "Conv2D":
            O, C, kh, kw = layer.param_shapes()["W"]
            k, m = C * kh * kw, batch * out[1] * out[2]
            gemms.append(Gemm(f"fwd{weighted}", (O, k), (k, m)))
            gemms.append(Gemm(f"dW{weighted}", (O, m), (m, k), b_transposed=True))
            if weighted:
                gemms.append(Gemm(f"dx{weighted}", (k, O), (O, m), a_transposed=True))
            weighted += 1
        shape = out
    return gemms


def gemm_shapes(model: Model, batch: int) -> list[tuple[str, str, str]]:
    """The matrix products of one training step, as ``(role, a-shape, b-shape)`` descriptions.

    For an MLP, per layer l with input width i and output width o: forward ``x (N,i) @ W
    (i,o)``, weight gradient ``x^T (i,N) @ dz (N,o)``, and (for every layer but the first, whose
    input gradient is never used) input gradient ``dz (N,o) @ W^T (o,i)``: 3L - 1 products,
    five for 2 layers. For a CNN the convolutions add theirs as im2col GEMMs (see
    :func:`step_gemms`): 14 for LeNet-5 (2 + 3 for the convolutions, 3 x 3 for the Dense layers).
    """
    layers = model.layers() if isinstance(model, ConvNet) else build_layers(model)
    return [g.describe() for g in step_gemms(layers, sample_shape(model), batch)]


def build_layers(widths: tuple[int, ...]) -> list[Layer]:
    """Dense / ReLU layers of an MLP of these widths (not bound to any backend)."""
    layers: list[Layer] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(Dense(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(ReLU())
    return layers


class GemmWorkload:
    """The bare GEMMs of a training step (:func:`step_gemms`), with the array library of the
    backend, the operand layouts gpunn uses (transposes are views) and preallocated outputs."""

    def __init__(self, model: Model, batch: int, backend: Backend, dtype: str = "float32") -> None:
        xp = backend.xp
        rng = np.random.default_rng(1)

        def arr(shape: tuple[int, int], transposed: bool) -> Any:
            # random operands: GEMM speed does not depend on the values, NaNs aside
            stored = shape[::-1] if transposed else shape
            a = backend.asarray(rng.standard_normal(stored).astype(dtype))
            return a.T if transposed else a

        layers = model.layers() if isinstance(model, ConvNet) else build_layers(model)
        self.gemms = step_gemms(layers, sample_shape(model), batch)
        self.calls: list[tuple[Any, Any, Any, Any]] = []
        for g in self.gemms:
            a, b = arr(g.a, g.a_transposed), arr(g.b, g.b_transposed)
            # gpunn's own choice for a Dense dW at batch 1 (see gpunn.math.dense.dense_backward)
            outer = g.role.startswith("dW") and g.a[1] == 1 and g.a_transposed
            product = xp.dot if outer else xp.matmul
            self.calls.append((product, a, b, xp.empty((g.a[0], g.b[1]), dtype=dtype)))
        self.xp = xp
        self.sync = backend.synchronize
        self.count = len(self.calls)

    def run(self) -> None:
        for product, a, b, out in self.calls:
            product(a, b, out=out)


def im2col_bytes(model: Sequential) -> int:
    """Bytes of the im2col matrices (``cols`` and ``dcols``, and the 2x2-block ``cols4`` and
    ``dcols4`` of a convolution fused with its max-pool) that the model's Conv2D layers hold.

    Measured from the arrays themselves after a training step. The layers allocate them once
    per batch size and keep them from step to step, so this is also their peak.
    """
    names = ("cols", "dcols", "cols4", "dcols4")
    return sum(
        int(buf.nbytes)
        for layer in model.layers
        if layer.kind == "Conv2D"
        for name, buf in layer._ws.items()
        if name.split("@")[0] in names
    )
