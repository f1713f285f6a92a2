"""Sequential: a stack of layers whose parameters live in one flat buffer on one backend.

All parameters sit in one contiguous array (``flat_params``) and all gradients in another
(``flat_grads``); every ``W`` and ``b`` is a view into them. An optimizer then updates the whole
model at once, and a data-parallel all-reduce is one call.

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
    ``"2.W"``...) whose values are views into ``flat_params`` / ``flat_grads``. Initial weights
    are drawn on the host from ``numpy.random.default_rng(seed)`` in float64, cast to ``dtype``
    and then moved to the backend, so a seed gives the same weights on every backend.
    """

    def __init__(
        self,
        layers: list[Layer],
        backend: str | Backend | None = None,
        dtype: str = "float32",
        seed: int = 0,
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
        self._check_widths()
        self._build(self._initial_params(seed))

    # --- construction -----------------------------------------------------------------------
    def _check_widths(self) -> None:
        """Check that each Dense layer gets the width the layer before it gives."""
        width = self.in_features
        for i, layer in enumerate(self.layers):
            need = getattr(layer, "in_features", None)
            if need is not None and width is not None and need != width:
                raise ValueError(f"layer {i} ({layer!r}) expects {need} inputs but gets {width}")
            width = layer.output_width(width) if width is not None else need
        self.out_features = width

    @property
    def in_features(self) -> int | None:
        """Features per input sample (None for a model of activations only)."""
        for layer in self.layers:
            if hasattr(layer, "in_features"):
                return layer.in_features
            if layer.param_shapes():
                return None
        return None

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
        for i, layer in enumerate(self.layers):
            names = layer.param_shapes()
            layer.seed = self.seed * 1000 + i  # per-layer device RNG seed (Dropout)
            layer.bind(
                xp,
                self.dtype,
                {n: self.params[f"{i}.{n}"] for n in names},
                {n: self.grads[f"{i}.{n}"] for n in names},
            )
        # Each layer meets its neighbours, in order (a layer may change the one before it:
        # an activation takes over the bias of the Dense layer it follows).
        for i, layer in enumerate(self.layers):
            prev = self.layers[i - 1] if i > 0 else None
            nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
            layer.connect(prev, nxt)

    @property
    def num_params(self) -> int:
        return sum(_prod(shape) for _, shape in self.layout.values())

    # --- computation --------------------------------------------------------------------------
    def forward(self, x: Array, *, training: bool = True) -> Array:
        """Outputs (logits) for inputs x (N, in) -> (N, out), on the model's backend.

        The returned array is the model's own: it stays valid until the next ``forward``.
        """
        x = self.backend.asarray(x, dtype=self.dtype)  # no copy when already in place
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
        self.flat_grads[...] = 0

    # --- moving and copying -------------------------------------------------------------------
    def to(self, backend: str | Backend) -> Sequential:
        """A copy of this model with the same weights on ``backend`` (this model is unchanged)."""
        layers = [type(layer)(**layer.config()) for layer in self.layers]
        clone = Sequential(layers, backend=backend, dtype=self.dtype.name, seed=self.seed)
        clone.flat_params[...] = clone.backend.asarray(self.backend.to_numpy(self.flat_params))
        return clone

    def state_dict(self) -> dict[str, Any]:
        """Parameters as host NumPy arrays keyed like ``params``."""
        return {k: self.backend.to_numpy(v).copy() for k, v in self.params.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy parameters in (host or device arrays); every key and shape must match.

        Everything is checked before anything is copied: a refused state leaves the model as
        it was.
        """
        if set(state) != set(self.params):
            missing, extra = set(self.params) - set(state), set(state) - set(self.params)
            raise ValueError(
                f"parameter names differ: missing {sorted(missing)}, extra {sorted(extra)}"
            )
        for key, value in state.items():
            if tuple(value.shape) != self.params[key].shape:
                raise ValueError(
                    f"parameter {key} has shape {tuple(value.shape)}, "
                    f"the model expects {self.params[key].shape}"
                )
        for key, value in state.items():
            self.params[key][...] = self.backend.asarray(self.backend.to_numpy(value))

    def save(self, path: str | os.PathLike[str], optimizer: Any = None, **kwargs: Any) -> Path:
        """Write this model (and ``optimizer``'s state) to a safe checkpoint file; see
        :func:`gpunn.checkpoint.save` for ``epoch``, ``step`` and ``extra``."""
        from gpunn.checkpoint import save  # a convenience: gpunn.checkpoint imports this module

        return save(self, path, optimizer, **kwargs)

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}], backend={self.backend.spec!r}, dtype={self.dtype.name!r})"


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
