"""Dense: the fully connected layer z = x @ W + b (math in ``gpunn.math.dense``)."""

from __future__ import annotations

from typing import Any

from gpunn.math.dense import dense_backward, dense_forward
from gpunn.nn.layer import Array, Layer

INITS = ("he", "glorot")


class Dense(Layer):
    """Fully connected layer z = x @ W + b with W of shape (in_features, out_features).

    ``init`` chooses the initial weights: ``"he"`` (normal, std sqrt(2 / in), for ReLU-family
    layers), ``"glorot"`` (uniform in +-sqrt(6 / (in + out)), for sigmoid/tanh), or None to let
    the model pick from the activation that follows (Glorot when none does). Biases start at 0.
    """

    kind = "Dense"
    input_rank = 1
    keeps_shape = False
    # z and dx are this layer's workspaces and it never reads them again (backward uses x)
    returns_scratch_output = True
    returns_scratch_grad = True

    def __init__(self, in_features: int, out_features: int, init: str | None = None) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Dense {name} must be a positive integer, got {value!r}")
        if init is not None and init not in INITS:
            raise ValueError(f"Dense init must be one of {INITS} or None, got {init!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.init = init
        #: True when the activation after this layer adds the bias, fused with its own pass
        #: (set by that activation's ``connect``; see ``gpunn.nn.activations``)
        self.defer_bias = False

    def config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "init": self.init,
        }

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"W": (self.in_features, self.out_features), "b": (self.out_features,)}

    def init_params(self, rng: Any, init: str) -> dict[str, Any]:
        n_in, n_out = self.in_features, self.out_features
        if (self.init or init) == "he":
            W = rng.standard_normal((n_in, n_out)) * (2.0 / n_in) ** 0.5
        else:
            limit = (6.0 / (n_in + n_out)) ** 0.5
            W = rng.uniform(-limit, limit, size=(n_in, n_out))
        return {"W": W}  # b starts at zero

    def output_width(self, in_width: int) -> int:
        return self.out_features

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        (width,) = in_shape  # a vector per sample (Sequential checks the number of axes)
        if width != self.in_features:
            raise ValueError(f"expects {self.in_features} inputs but gets {width}")
        return (self.out_features,)

    def describe(self) -> str:
        # the widths show in the summary's shapes; only an explicit init is worth a word
        return f"Dense(init={self.init})" if self.init else "Dense"

    def connect(self, prev: Layer | None, nxt: Layer | None) -> None:
        self.defer_bias = False  # until an activation after this layer takes the bias over

    def deferred_bias(self) -> Array:
        """b (out,), for the activation that adds it (broadcasts over z (N, out))."""
        return self.params["b"]

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self.x = x  # (N, in), kept for dW
        z = self.workspace("z", (x.shape[0], self.out_features))
        if self.defer_bias:  # the next layer computes act(z + b) in one pass
            return self.xp.matmul(x, self.params["W"], out=z)  # (N, out)
        return dense_forward(x, self.params["W"], self.params["b"], xp=self.xp, out=z)

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array | None:
        dx = self.workspace("dx", self.x.shape) if need_dx else None
        return dense_backward(
            dy,
            self.x,
            self.params["W"],
            xp=self.xp,
            dW=self.grads["W"],
            db=self.grads["b"],
            dx=dx,
            need_dx=need_dx,
            ones=self._ones(dy.shape[0]),
        )

    def _ones(self, n: int) -> Array:
        """A vector of n ones for the bias gradient, made once per batch size."""
        ones = self._ws.get("ones")
        if ones is None or ones.shape != (n,):
            ones = self._ws["ones"] = self.xp.ones(n, dtype=self.dtype)
        return ones
