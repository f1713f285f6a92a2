"""Sequential: a stack of layers whose parameters live in one flat buffer on one backend.

All parameters sit in one contiguous array (``flat_params``) and all gradients in another
(``flat_grads``); every ``W`` and ``b`` is a view into them. An optimizer then updates the whole
model at once, and a data-parallel all-reduce is one call. State that is not trained
(BatchNorm's running statistics) sits in a third buffer, ``flat_state``, which no optimizer and
no gradient all-reduce touches.

A model knows the shape of one input sample (``input_shape``: ``(features,)`` for an MLP,
``(channels, height, width)`` for a CNN), given to the constructor, read off a first Dense
layer, or learnt from the data on first use; with it, every layer is checked to fit the one
before it before any data goes through.

What a model is does not depend on how it is trained or saved: this module imports the layers
(``gpunn.nn``) and the backend only. ``fit``, ``evaluate``, ``predict`` and ``save`` are thin
conveniences that hand the model to ``gpunn.training`` and ``gpunn.checkpoint``, which import
this module (their imports run inside the methods, when they are called).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gpunn.backend import Backend, get_backend
from gpunn.nn.layer import Array, Layer

DTYPES = ("float32", "float64")
ALIGN = 64  # each parameter starts on a 64-element boundary (256 bytes in float32)


class Sequential:
    """Layers applied in order. ``forward`` -> loss -> ``backward`` fills ``grads``.

    ``params`` and ``grads`` are dicts keyed ``"<layer index>.<name>"`` (``"0.W"``, ``"0.b"``,
    ``"2.W"``...) whose values are views into ``flat_params`` / ``flat_grads``; ``state``
    likewise holds the views into ``flat_state`` (``"1.running_mean"``...). Initial weights
    are drawn on the host from ``numpy.random.default_rng(seed)`` in float64, cast to ``dtype``
    and then moved to the backend, so a seed gives the same weights on every backend.

    ``input_shape`` is one sample's shape, without the batch axis (``(1, 28, 28)`` for MNIST
    images). Without it the model takes it from a first Dense layer, or else from the first
    data it is given (``fit``, ``evaluate``, ``predict``, or :meth:`set_input_shape`).

    Every method that allocates or computes runs with the backend's device current
    (``backend.activate()``), so a model on ``"cupy:1"`` keeps all its arrays on GPU 1 whichever
    device the caller has current.
    """

    def __init__(
        self,
        layers: list[Layer],
        backend: str | Backend | None = None,
        dtype: str = "float32",
        seed: int = 0,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.layers = list(layers)
        if not self.layers or not all(isinstance(layer, Layer) for layer in self.layers):
            raise ValueError("Sequential needs a non-empty list of gpunn layers")
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        self.dtype = self.xp.dtype(str(dtype))
        if seed is None:  # no seed: draw one, and keep it so that `to()` gives the same weights
            seed = int(self.backend.host_rng(None).integers(2**31))
        self.seed = seed
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self._check_widths()
        given = input_shape if input_shape is not None else self._first_dense_shape()
        if given is not None:
            self.set_input_shape(given)
        self._build(self._initial_params(seed))

    # --- construction -----------------------------------------------------------------------
    def _check_widths(self) -> None:
        """Check that each Dense layer gets the width the layer before it gives, as far as that
        is known without an input shape, and set ``out_features``.

        After a layer that reshapes samples (a convolution, Flatten) the width is unknown until
        the next Dense layer; :meth:`set_input_shape` checks every layer once the shape is known.
        """
        first = self._first_dense_shape()
        width = first[0] if first is not None else None
        for i, layer in enumerate(self.layers):
            need = getattr(layer, "in_features", None)
            if need is not None and width is not None and need != width:
                raise ValueError(f"layer {i} ({layer!r}) expects {need} inputs but gets {width}")
            if need is not None:  # a Dense layer: what comes out is known again
                width = layer.output_width(need)
            elif width is not None and layer.keeps_shape:  # activations, Dropout, BatchNorm1D
                width = layer.output_width(width)
            else:
                width = None
        self.out_features = width

    def _first_dense_shape(self) -> tuple[int, ...] | None:
        """``(in_features,)`` when the first layer that needs a shape is a Dense layer."""
        for layer in self.layers:
            if hasattr(layer, "in_features"):
                return (layer.in_features,)
            if layer.param_shapes() or not layer.keeps_shape or layer.input_rank is not None:
                return None
        return None

    @property
    def in_features(self) -> int | None:
        """Features per input sample when a sample is a vector (None otherwise, or unknown)."""
        shape = self.input_shape
        return shape[0] if shape is not None and len(shape) == 1 else None

    @property
    def input_rank(self) -> int | None:
        """How many axes one input sample has (1 for an MLP, 3 for a CNN); None when any
        number would do (a model that starts with Flatten)."""
        if self.input_shape is not None:
            return len(self.input_shape)
        for layer in self.layers:
            if layer.input_rank is not None:
                return layer.input_rank
            if not layer.keeps_shape:
                return None
        return 1  # activations only: rows of features, as always

    def set_input_shape(self, input_shape: tuple[int, ...]) -> None:
        """Fix the shape of one input sample, checking that every layer fits the one before.

        Raises ValueError naming the first layer that cannot take what it would be given, or
        when the model already has another input shape.
        """
        try:
            shape = tuple(int(d) for d in input_shape)
        except (TypeError, ValueError):
            raise ValueError(f"input_shape must be a tuple of sizes, got {input_shape!r}") from None
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"input_shape must be positive sizes, got {input_shape!r}")
        if self.input_shape is not None and shape != self.input_shape:
            raise ValueError(f"the model takes samples of shape {self.input_shape}, not {shape}")
        self.output_shape = self._shapes(shape)[-1]
        self.input_shape = shape
        if len(self.output_shape) == 1:
            self.out_features = self.output_shape[0]

    def _shapes(self, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Each layer's output shape for one sample of ``shape``; ValueError where one breaks."""
        shapes = []
        for i, layer in enumerate(self.layers):
            if layer.input_rank is not None and len(shape) != layer.input_rank:
                raise ValueError(_rank_problem(i, layer, shape))
            try:
                shape = tuple(layer.output_shape(shape))
            except ValueError as exc:
                raise ValueError(f"layer {i} ({layer!r}) {exc}") from None
            shapes.append(shape)
        return shapes

    def _initial_params(self, seed: int) -> dict[str, Any]:
        """Draw every layer's initial parameters on the host, in layer order."""
        rng = self.backend.host_rng(seed)
        values: dict[str, Any] = {}
        for i, layer in enumerate(self.layers):
            init = self._init_hint(i)
            for name, value in layer.init_params(rng, init).items():
                values[f"{i}.{name}"] = value
        return values

    def _init_hint(self, i: int) -> str:
        """The init for layer i's weights: from the first activation after it (looking past
        parameter-free layers such as Dropout), Glorot when none follows."""
        for layer in self.layers[i + 1 :]:
            if layer.init_hint is not None:
                return layer.init_hint
            if layer.param_shapes():
                break
        return "glorot"

    def _build(self, values: dict[str, Any]) -> None:
        """Allocate the flat buffers, bind each layer to its views, and fill in ``values``."""
        offsets: dict[str, tuple[int, tuple[int, ...]]] = {}
        size = 0
        for i, layer in enumerate(self.layers):
            for name, shape in layer.param_shapes().items():
                offsets[f"{i}.{name}"] = (size, shape)
                count = _prod(shape)
                size += -(-count // ALIGN) * ALIGN  # round up: padding stays 0 in both buffers
        xp = self.xp
        with self.backend.activate():  # the buffers, the copies and each layer's device state
            self.flat_params = xp.zeros(size, dtype=self.dtype)
            self.flat_grads = xp.zeros(size, dtype=self.dtype)
            self.layout = offsets
            self.params: dict[str, Array] = {}
            self.grads: dict[str, Array] = {}
            for key, (start, shape) in offsets.items():
                stop = start + _prod(shape)
                self.params[key] = self.flat_params[start:stop].reshape(shape)
                self.grads[key] = self.flat_grads[start:stop].reshape(shape)
                if key in values:
                    host = self.backend.to_numpy(values[key]).astype(self.dtype.name)
                    self.params[key][...] = self.backend.asarray(host)
            self._build_state()
            for i, layer in enumerate(self.layers):
                names = layer.param_shapes()
                layer.seed = self.seed * 1000 + i  # per-layer device RNG seed (Dropout)
                layer.bind(
                    xp,
                    self.dtype,
                    {n: self.params[f"{i}.{n}"] for n in names},
                    {n: self.grads[f"{i}.{n}"] for n in names},
                )
                layer.bind_state({n: self.state[f"{i}.{n}"] for n in layer.state_shapes()})
        # Each layer meets its neighbours, in order (a layer may change the one before it:
        # an activation takes over the bias of the Dense layer it follows).
        for i, layer in enumerate(self.layers):
            prev = self.layers[i - 1] if i > 0 else None
            nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
            layer.connect(prev, nxt)

    def min_train_batch(self) -> tuple[int, str]:
        """(the fewest samples a training batch may hold, the layer that asks for it): BatchNorm
        needs 2 values per channel; (1, "") when no layer minds or the input shape is unknown."""
        if self.input_shape is None:
            return 1, ""
        need, who = 1, ""
        shapes = [self.input_shape, *self._shapes(self.input_shape)]
        for i, layer in enumerate(self.layers):
            least = getattr(layer, "min_train_batch", None)
            if least is not None and least(shapes[i]) > need:
                need, who = least(shapes[i]), f"layer {i} ({layer.describe()})"
        return need, who

    def _build_state(self) -> None:
        """Allocate ``flat_state`` and its views ``state``, filled with each layer's initial
        state (BatchNorm: running mean 0, running variance 1)."""
        offsets: dict[str, tuple[int, tuple[int, ...]]] = {}
        size = 0
        for i, layer in enumerate(self.layers):
            for name, shape in layer.state_shapes().items():
                offsets[f"{i}.{name}"] = (size, shape)
                size += _prod(shape)
        self.flat_state = self.xp.zeros(size, dtype=self.dtype)
        self.state_layout = offsets
        self.state: dict[str, Array] = {}
        for key, (start, shape) in offsets.items():
            self.state[key] = self.flat_state[start : start + _prod(shape)].reshape(shape)
        for i, layer in enumerate(self.layers):
            for name, value in layer.init_state().items():
                host = self.backend.to_numpy(value).astype(self.dtype.name)
                self.state[f"{i}.{name}"][...] = self.backend.asarray(host)

    @property
    def num_params(self) -> int:
        return sum(_prod(shape) for _, shape in self.layout.values())

    # --- computation --------------------------------------------------------------------------
    def forward(self, x: Array, *, training: bool = True) -> Array:
        """Outputs (logits) for inputs x (N, *input_shape) -> (N, out), on the model's backend.

        The returned array is the model's own: it stays valid until the next ``forward``. A
        model that does not know its input shape yet learns it from x (see
        :meth:`set_input_shape`).
        """
        with self.backend.activate():  # workspaces and launches on this model's device
            x = self.backend.asarray(x, dtype=self.dtype)  # no copy when already in place
            if self.input_shape is None:  # the first data fixes the shape of a sample
                self.set_input_shape(x.shape[1:])
            for layer in self.layers:
                x = layer.forward(x, training=training)
        return x

    def backward(self, dlogits: Array, *, input_grad: bool = False) -> Array | None:
        """Backpropagate dL/dlogits (N, out) through every layer, overwriting ``grads``.

        Returns dL/dx (N, in) when ``input_grad`` is true; otherwise the layers before the
        first parameter are told not to compute input gradients nobody reads.
        """
        first = 0 if input_grad else self._first_param_layer()
        dy = dlogits
        with self.backend.activate():
            for i in range(len(self.layers) - 1, first - 1, -1):
                dy = self.layers[i].backward(dy, need_dx=input_grad or i > first)
        return dy if input_grad else None

    def _first_param_layer(self) -> int:
        for i, layer in enumerate(self.layers):
            if layer.param_shapes():
                return i
        return 0

    def predict(self, X: Any, batch_size: int | None = None) -> Array:
        """Outputs (logits) for X (N, in) -> (N, out) in inference mode, as a new array."""
        from gpunn.training import predict

        return predict(self, X, batch_size)

    def predict_proba(self, X: Any, loss: Any = None, batch_size: int | None = None) -> Array:
        """Class probabilities for X (N, in): softmax (N, C) or sigmoid (N, 1) of the logits,
        by the training loss; see :func:`gpunn.training.predict_proba`."""
        from gpunn.training import predict_proba

        return predict_proba(self, X, loss, batch_size)

    def fit(self, X: Any, y: Any, **kwargs: Any) -> Any:
        """Train on X, y; see :func:`gpunn.training.fit` for the arguments. Returns a History."""
        from gpunn.training import fit

        return fit(self, X, y, **kwargs)

    def evaluate(self, X: Any, y: Any, loss: Any = None) -> dict[str, float]:
        """Mean loss (and accuracy if it applies) on X, y; see :func:`gpunn.training.evaluate`."""
        from gpunn.training import evaluate

        return evaluate(self, X, y, loss)

    def zero_grad(self) -> None:
        """Set every gradient to 0 (``backward`` overwrites them, so this is rarely needed)."""
        with self.backend.activate():
            self.flat_grads[...] = 0

    # --- description --------------------------------------------------------------------------
    def summary(self, input_shape: tuple[int, ...] | None = None) -> str:
        """A table of the layers: each one's output shape (per sample) and parameter count.

        ``input_shape`` is one sample's shape (default: the model's ``input_shape``). Each layer
        reports its output shape through ``Layer.output_shape``, so any layer kind can join the
        table.
        """
        shape = input_shape if input_shape is not None else self.input_shape
        if shape is None:
            raise ValueError("this model does not know its input shape yet: pass input_shape")
        shape = tuple(int(d) for d in shape)
        rows = [("", "input", _shape_text(shape), "")]
        for i, (layer, out) in enumerate(zip(self.layers, self._shapes(shape), strict=True)):
            count = sum(_prod(s) for s in layer.param_shapes().values())
            rows.append((str(i), layer.describe(), _shape_text(out), f"{count:,}"))
        size = self.num_params * self.dtype.itemsize
        rows.append(("", "total", "", f"{self.num_params:,}"))
        header = ("#", "layer", "output shape", "parameters")
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(4)]
        lines = []
        for r in [header, *rows]:
            cells = [r[0].rjust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2])]
            lines.append("  ".join([*cells, r[3].rjust(widths[3])]).rstrip())
        lines[-1] += f"  ({self.dtype.name}, {_bytes_text(size)})"
        return "\n".join(lines)

    # --- moving and copying -------------------------------------------------------------------
    def to(self, backend: str | Backend) -> Sequential:
        """A copy of this model with the same weights on ``backend`` (this model is unchanged)."""
        layers = [type(layer)(**layer.config()) for layer in self.layers]
        clone = Sequential(
            layers,
            backend=backend,
            dtype=self.dtype.name,
            seed=self.seed,
            input_shape=self.input_shape,
        )
        with clone.backend.activate():  # through the host: the two devices need not see each other
            clone.flat_params[...] = clone.backend.asarray(self.backend.to_numpy(self.flat_params))
            clone.flat_state[...] = clone.backend.asarray(self.backend.to_numpy(self.flat_state))
        return clone

    def state_dict(self) -> dict[str, Any]:
        """Parameters and state (running statistics) as host NumPy arrays, keyed like
        ``params`` and ``state``."""
        tensors = {**self.params, **self.state}
        return {k: self.backend.to_numpy(v).copy() for k, v in tensors.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy parameters and state in (host or device arrays); every key and shape must match.

        A dict of parameters alone is accepted for a model without state. Everything is checked
        before anything is copied: a refused state leaves the model as it was.
        """
        targets = {**self.params, **self.state}
        if set(state) != set(targets):
            missing, extra = set(targets) - set(state), set(state) - set(targets)
            raise ValueError(
                f"parameter names differ: missing {sorted(missing)}, extra {sorted(extra)}"
            )
        for key, value in state.items():
            if tuple(value.shape) != targets[key].shape:
                what = "state" if key in self.state else "parameter"
                raise ValueError(
                    f"{what} {key} has shape {tuple(value.shape)}, "
                    f"the model expects {targets[key].shape}"
                )
        with self.backend.activate():
            for key, value in state.items():
                targets[key][...] = self.backend.asarray(self.backend.to_numpy(value))

    def save(self, path: str | os.PathLike[str], optimizer: Any = None, **kwargs: Any) -> Path:
        """Write this model (and ``optimizer``'s state) to a safe checkpoint file; see
        :func:`gpunn.checkpoint.save` for ``epoch``, ``step`` and ``extra``."""
        from gpunn.checkpoint import save  # a convenience: gpunn.checkpoint imports this module

        return save(self, path, optimizer, **kwargs)

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}], backend={self.backend.spec!r}, dtype={self.dtype.name!r})"


def _rank_problem(i: int, layer: Layer, shape: tuple[int, ...]) -> str:
    """Why layer i cannot take samples of ``shape`` (it needs another number of axes)."""
    need = layer.input_rank
    what = {1: "a vector of features", 3: "(channels, height, width) maps"}.get(
        need, f"{need} axes"
    )
    text = f"layer {i} ({layer!r}) takes samples of {what}, but gets shape {shape}"
    if need == 1 and len(shape) > 1:
        text += ": put a Flatten() before it"
    elif need == 3 and len(shape) == 1:
        text += ": give the model input_shape=(channels, height, width) and image-shaped data"
    return text


def _shape_text(shape: tuple[int, ...]) -> str:
    """``(128,)`` -> ``"128"``, ``(1, 28, 28)`` -> ``"1 x 28 x 28"``."""
    return " x ".join(str(d) for d in shape)


def _bytes_text(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:,.1f} KiB" if n < 1024**2 else f"{n / 1024**2:,.1f} MiB"


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
