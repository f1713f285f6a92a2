"""Losses computed from logits, averaged over the batch; each forward sits above its backward.

Working from logits (not probabilities) lets every loss use a numerically stable form:
log-sum-exp shifted by the row maximum for softmax cross-entropy, and
``max(z, 0) - z*y + log1p(exp(-|z|))`` for binary cross-entropy. An empty batch has loss 0 and
an empty gradient on every backend.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gpunn import kernels
from gpunn.activations import sigmoid_forward
from gpunn.backend import namespace
from gpunn.layer import Array

# ------------------------------------------------------------------------------------------
# Softmax cross-entropy (integer class labels)
# ------------------------------------------------------------------------------------------


def softmax_cross_entropy_forward(z: Array, y: Array, *, xp: Any) -> tuple[Array, Array]:
    """Mean of logsumexp(z_n) - z_n[y_n] over the batch; z (N, C), y (N,) ints -> (loss, p).

    Also returns p = softmax(z) (N, C), which is all the backward needs.
    """
    n = z.shape[0]
    # Class-major copy s (C, N): each reduction over a sample's C classes then runs along
    # contiguous rows of length N, which NumPy vectorises; over the short last axis of (N, C)
    # it loops sample by sample (6x slower for C = 10). The copy costs one pass over z.
    s = z.T.copy()  # a copy even when N = 1 (z.T is then contiguous): z must stay intact
    s -= s.max(axis=0)  # max 0 per sample: exp cannot overflow
    target = s[y, xp.arange(n)]  # (N,) shifted logit of the true class
    xp.exp(s, out=s)
    sum_e = s.sum(axis=0)  # (N,), >= 1
    s /= sum_e  # s becomes softmax(z), class-major
    log_sum_e = xp.log(sum_e, out=sum_e)
    log_sum_e -= target  # per-sample loss, computed in place: no temporaries
    loss = log_sum_e.sum() / max(n, 1)
    return xp.asarray(loss), xp.ascontiguousarray(s.T)


def softmax_cross_entropy_backward(p: Array, y: Array, *, xp: Any) -> Array:
    """dz = (softmax(z) - onehot(y)) / N, shape (N, C). Overwrites p."""
    n = p.shape[0]
    p[xp.arange(n), y] -= 1
    p /= max(n, 1)
    return p


# ------------------------------------------------------------------------------------------
# Binary cross-entropy (labels 0/1, one logit per sample)
# ------------------------------------------------------------------------------------------


def binary_cross_entropy_forward(z: Array, y: Array, *, xp: Any) -> Array:
    """Mean of max(z, 0) - z*y + log1p(exp(-|z|)); z and y of the same shape.

    This equals -y log sigmoid(z) - (1 - y) log(1 - sigmoid(z)) but never takes the log of 0
    and never overflows exp, however large |z| is.
    """
    per_sample = xp.maximum(z, 0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))
    return xp.asarray(per_sample.sum() / max(z.shape[0], 1))


def binary_cross_entropy_backward(z: Array, y: Array, *, xp: Any) -> Array:
    """dz = (sigmoid(z) - y) / N, shape of z."""
    dz = sigmoid_forward(z, xp=xp)
    dz -= y
    dz /= max(z.shape[0], 1)
    return dz


# ------------------------------------------------------------------------------------------
# Mean squared error (mean over all elements)
# ------------------------------------------------------------------------------------------


def mean_squared_error_forward(z: Array, y: Array, *, xp: Any) -> tuple[Array, Array]:
    """Mean of (z - y)^2 over every element -> (loss, residual z - y)."""
    r = z - y
    return xp.asarray((r * r).sum() / max(r.size, 1)), r


def mean_squared_error_backward(r: Array, *, xp: Any) -> Array:
    """dz = 2 (z - y) / size, from the residual. Overwrites r."""
    r *= 2.0 / max(r.size, 1)
    return r


# ------------------------------------------------------------------------------------------
# Loss objects: keep what the backward needs between the two calls
# ------------------------------------------------------------------------------------------


class Loss:
    """``forward(logits, y) -> loss`` (0-d array on the backend); then ``backward() -> dlogits``."""

    kind: ClassVar[str] = "Loss"
    #: whether "accuracy" means something for this loss
    has_accuracy: ClassVar[bool] = False

    def forward(self, logits: Array, y: Array) -> Array:
        raise NotImplementedError

    def backward(self) -> Array:
        raise NotImplementedError

    def correct(self, logits: Array, y: Array) -> Array:
        """Number of correct predictions in the batch, as a 0-d array (no host read)."""
        raise TypeError(f"{type(self).__name__} has no accuracy")

    def config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of softmax(logits) (N, C) against integer class labels (N,) in [0, C)."""

    kind = "SoftmaxCrossEntropy"
    has_accuracy = True

    def forward(self, logits: Array, y: Array) -> Array:
        xp = namespace(logits)
        if logits.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy expects logits (N, C), got shape {logits.shape}")
        y = _labels_like(y, logits.shape[0], "SoftmaxCrossEntropy", xp)
        self.y = y.astype(xp.int64, copy=False)
        # loss and dlogits together: one fused pass on CuPy, else the two functions above
        loss, self.dz = kernels.get("softmax_cross_entropy", xp)(logits, self.y, xp=xp)
        return loss

    def backward(self) -> Array:
        return self.dz

    def correct(self, logits: Array, y: Array) -> Array:
        return (logits.argmax(axis=1) == y).sum()


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy of sigmoid(logits) against labels 0/1; logits (N,) or (N, 1)."""

    kind = "BinaryCrossEntropy"
    has_accuracy = True

    def forward(self, logits: Array, y: Array) -> Array:
        xp = namespace(logits)
        if not (logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1)):
            raise ValueError(
                f"BinaryCrossEntropy expects logits of shape (N,) or (N, 1), got {logits.shape}"
            )
        y = _labels_like(y, logits.shape[0], "BinaryCrossEntropy", xp)
        self.z = logits
        self.y = y.reshape(logits.shape).astype(logits.dtype, copy=False)
        loss, self.dz = kernels.get("binary_cross_entropy", xp)(self.z, self.y, xp=xp)
        return loss

    def backward(self) -> Array:
        return self.dz

    def correct(self, logits: Array, y: Array) -> Array:
        # sigmoid(z) > 0.5 exactly when z > 0
        return ((logits.reshape(-1) > 0) == (y.reshape(-1) > 0.5)).sum()


class MeanSquaredError(Loss):
    """Mean of (output - target)^2 over all elements; target of the output's shape."""

    kind = "MeanSquaredError"

    def forward(self, logits: Array, y: Array) -> Array:
        xp = namespace(logits)
        y = xp.asarray(y).astype(logits.dtype, copy=False)
        if y.size != logits.size or y.shape[:1] != logits.shape[:1]:
            raise ValueError(
                f"MeanSquaredError expects targets of shape {logits.shape}, got {y.shape}"
            )
        loss, self.r = mean_squared_error_forward(logits, y.reshape(logits.shape), xp=xp)
        return loss

    def backward(self) -> Array:
        return mean_squared_error_backward(self.r, xp=namespace(self.r))


def _labels_like(y: Array, n: int, who: str, xp: Any) -> Array:
    """Labels as a 1-D array of length n (a trailing axis of size 1 is accepted)."""
    y = xp.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{who} expects {n} labels of shape ({n},), got shape {y.shape}")
    return y


LOSSES: dict[str, type[Loss]] = {
    cls.kind: cls for cls in (SoftmaxCrossEntropy, BinaryCrossEntropy, MeanSquaredError)
}
