"""Layers with parameters or state: Dense (x @ W + b) and Dropout, forward beside backward."""

from __future__ import annotations

from typing import Any

from gpunn.layer import Array, Layer

# ------------------------------------------------------------------------------------------
# Dense: z = x @ W + b
# ------------------------------------------------------------------------------------------


def dense_forward(x: Array, W: Array, b: Array, *, xp: Any, out: Array | None = None) -> Array:
    """z = x @ W + b: x (N, in), W (in, out), b (out,) -> z (N, out)."""
    z = xp.matmul(x, W, out=out)  # (N, out)
    z += b  # broadcast over the batch
    return z


def dense_backward(
    dz: Array,
    x: Array,
    W: Array,
    *,
    xp: Any,
    dW: Array,
    db: Array,
    dx: Array | None = None,
    need_dx: bool = True,
    ones: Array | None = None,
) -> Array | None:
    """Write dL/dW (in, out) and dL/db (out,) into dW, db; return dL/dx (N, in) if asked.

    From z = x @ W + b:  dW = x^T @ dz,  db = sum_n dz[n] = 1^T @ dz,  dx = dz @ W^T.
    The transposes are views, so each product is one GEMM with no copy. ``ones`` is an optional
    (N,) vector of ones to reuse across steps (one is made when it is None).
    """
    if x.shape[0] == 1:
        # One sample: x^T @ dz is an outer product (inner dimension 1), which NumPy's matmul
        # computes without BLAS (7x slower than dot here); dot hands it to BLAS.
        xp.dot(x.T, dz, out=dW)
    else:
        xp.matmul(x.T, dz, out=dW)  # (in, N) @ (N, out) -> (in, out)
    if ones is None:
        ones = xp.ones(dz.shape[0], dtype=dz.dtype)
    # db as a matrix-vector product rather than dz.sum(axis=0): BLAS runs it on every core and
    # accumulates like the dW product above (3x faster than NumPy's sum for 1024 x 256)
    xp.matmul(ones, dz, out=db)  # (N,) @ (N, out) -> (out,)
    if not need_dx:
        return None  # the first layer's input gradient is never used: skip one GEMM
    return xp.matmul(dz, W.T, out=dx)  # (N, out) @ (out, in) -> (N, in)


INITS = ("he", "glorot")


class Dense(Layer):
    """Fully connected layer z = x @ W + b with W of shape (in_features, out_features).

    ``init`` chooses the initial weights: ``"he"`` (normal, std sqrt(2 / in), for ReLU-family
    layers), ``"glorot"`` (uniform in +-sqrt(6 / (in + out)), for sigmoid/tanh), or None to let
    the model pick from the activation that follows (Glorot when none does). Biases start at 0.
    """

    kind = "Dense"
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

    #: set by Sequential when the activation after this layer adds the bias (fused with it)
    defer_bias: bool = False

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


# ------------------------------------------------------------------------------------------
# Dropout (inverted): scale at training time so inference is the identity
# ------------------------------------------------------------------------------------------


def dropout_forward(x: Array, mask: Array, *, xp: Any, out: Array | None = None) -> Array:
    """y = x * mask, where mask holds 0 or 1 / (1 - p) per element."""
    return xp.multiply(x, mask, out=out)


def dropout_backward(dy: Array, mask: Array, *, xp: Any, out: Array | None = None) -> Array:
    """dx = dy * mask (the same mask: dropped units pass no gradient)."""
    return xp.multiply(dy, mask, out=out)


class Dropout(Layer):
    """Inverted dropout: zero each input with probability p during training, scale the rest by
    1 / (1 - p); ``predict`` and ``evaluate`` pass inputs through unchanged.

    Masks are drawn on the device from a generator seeded once per model, so a run is
    repeatable on one backend; NumPy and CuPy draw different masks from the same seed.
    """

    kind = "Dropout"

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= float(p) < 1:
            raise ValueError(f"Dropout p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.seed = 0

    def config(self) -> dict[str, Any]:
        return {"p": self.p}

    def bind(self, xp: Any, dtype: Any, params: dict[str, Array], grads: dict[str, Array]) -> None:
        super().bind(xp, dtype, params, grads)
        self.rng = xp.random.default_rng(self.seed)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        if not training or self.p == 0.0:
            self.mask = None
            return x
        keep = 1.0 - self.p
        u = self.rng.random(x.shape, dtype=self.dtype)  # uniform in [0, 1)
        self.mask = self.workspace("mask", x.shape)
        self.xp.multiply(u < keep, 1.0 / keep, out=self.mask)
        return dropout_forward(x, self.mask, xp=self.xp, out=self.workspace("y", x.shape))

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        if self.mask is None:
            return dy
        return dropout_backward(dy, self.mask, xp=self.xp, out=self.workspace("dx", dy.shape))
