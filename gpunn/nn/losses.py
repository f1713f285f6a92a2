"""Loss objects: they check the targets and keep what the backward needs between the two calls.

The math is in ``gpunn.math.losses``; softmax and binary cross-entropy go through
``gpunn.kernels``, which gives the loss and its gradient in one fused pass on CuPy. Each loss
computes on the device that holds the logits (``device_of``), whichever device is current.

``forward(logits, y, sample_weight=w)`` with w (N,) gives the weighted mean sum(w l) / sum(w)
and its gradient. The fused kernels compute the unweighted mean only, so a weighted call runs the
reference functions of ``gpunn.math.losses`` on every backend (never the kernel with the weights
dropped).
"""

from __future__ import annotations

from typing import Any, ClassVar

from gpunn import kernels
from gpunn.backend import device_of, namespace
from gpunn.math.losses import (
    binary_cross_entropy_backward,
    binary_cross_entropy_forward,
    mean_squared_error_backward,
    mean_squared_error_forward,
    poisson_deviance_backward,
    poisson_deviance_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from gpunn.nn.layer import Array


class Loss:
    """``forward(logits, y) -> loss`` (0-d array on the backend); then ``backward() -> dlogits``.

    ``forward(logits, y, sample_weight=w)`` with w (N,) gives the weighted mean instead.
    """

    kind: ClassVar[str] = "Loss"
    #: whether "accuracy" means something for this loss
    has_accuracy: ClassVar[bool] = False

    def forward(self, logits: Array, y: Array, sample_weight: Array | None = None) -> Array:
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

    def forward(self, logits: Array, y: Array, sample_weight: Array | None = None) -> Array:
        xp = namespace(logits)
        if logits.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy expects logits (N, C), got shape {logits.shape}")
        with device_of(logits):
            y = _labels_like(y, logits.shape[0], "SoftmaxCrossEntropy", xp)
            self.y = y.astype(xp.int64, copy=False)
            if sample_weight is None:
                # loss and dlogits together: one fused pass on CuPy, else the math functions
                loss, self.dz = kernels.get("softmax_cross_entropy", xp)(logits, self.y, xp=xp)
                return loss
            # weighted: the reference functions on every backend (the kernel has no weights)
            w = _weights_like(sample_weight, logits, "SoftmaxCrossEntropy", xp)
            loss, p = softmax_cross_entropy_forward(logits, self.y, xp=xp, weights=w)
            self.dz = softmax_cross_entropy_backward(p, self.y, xp=xp, weights=w)
        return loss

    def backward(self) -> Array:
        return self.dz

    def correct(self, logits: Array, y: Array) -> Array:
        with device_of(logits):
            return (logits.argmax(axis=1) == y).sum()


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy of sigmoid(logits) against labels 0/1; logits (N,) or (N, 1), or
    (N, K) with labels (N, K) for K independent labels per sample (multilabel: the loss of a
    sample is the sum over its K labels)."""

    kind = "BinaryCrossEntropy"
    has_accuracy = True

    def forward(self, logits: Array, y: Array, sample_weight: Array | None = None) -> Array:
        xp = namespace(logits)
        if logits.ndim not in (1, 2):
            raise ValueError(
                "BinaryCrossEntropy expects logits of shape (N,), (N, 1) or (N, K), "
                f"got {logits.shape}"
            )
        with device_of(logits):
            if logits.ndim == 2 and logits.shape[1] != 1:
                y = xp.asarray(y)
                if y.shape != logits.shape:
                    raise ValueError(
                        f"BinaryCrossEntropy with logits {logits.shape} expects labels of the "
                        f"same shape (one 0/1 column per label), got shape {y.shape}"
                    )
            else:
                y = _labels_like(y, logits.shape[0], "BinaryCrossEntropy", xp)
            self.z = logits
            self.y = y.reshape(logits.shape).astype(logits.dtype, copy=False)
            if sample_weight is None:
                loss, self.dz = kernels.get("binary_cross_entropy", xp)(self.z, self.y, xp=xp)
                return loss
            # weighted: the reference functions on every backend (the kernel has no weights)
            w = _weights_like(sample_weight, logits, "BinaryCrossEntropy", xp)
            loss = binary_cross_entropy_forward(self.z, self.y, xp=xp, weights=w)
            self.dz = binary_cross_entropy_backward(self.z, self.y, xp=xp, weights=w)
        return loss

    def backward(self) -> Array:
        return self.dz

    def correct(self, logits: Array, y: Array) -> Array:
        # sigmoid(z) > 0.5 exactly when z > 0; with K labels a sample is right when all K are
        with device_of(logits):
            if logits.ndim == 2 and logits.shape[1] > 1:
                return ((logits > 0) == (y > 0.5)).all(axis=1).sum()
            return ((logits.reshape(-1) > 0) == (y.reshape(-1) > 0.5)).sum()


class MeanSquaredError(Loss):
    """Mean of (output - target)^2 over all elements; target of the output's shape."""

    kind = "MeanSquaredError"

    def forward(self, logits: Array, y: Array, sample_weight: Array | None = None) -> Array:
        xp = namespace(logits)
        with device_of(logits):
            y = xp.asarray(y).astype(logits.dtype, copy=False)
            if y.size != logits.size or y.shape[:1] != logits.shape[:1]:
                raise ValueError(
                    f"MeanSquaredError expects targets of shape {logits.shape}, got {y.shape}"
                )
            self.w = None
            if sample_weight is not None:
                self.w = _weights_like(sample_weight, logits, "MeanSquaredError", xp)
            y = y.reshape(logits.shape)
            loss, self.r = mean_squared_error_forward(logits, y, xp=xp, weights=self.w)
        return loss

    def backward(self) -> Array:
        with device_of(self.r):
            return mean_squared_error_backward(self.r, xp=namespace(self.r), weights=self.w)


class PoissonDeviance(Loss):
    """Poisson deviance of targets y >= 0 against rates exp(logits); logits and y (N, K)."""

    kind = "PoissonDeviance"

    def forward(self, logits: Array, y: Array, sample_weight: Array | None = None) -> Array:
        xp = namespace(logits)
        with device_of(logits):
            y = xp.asarray(y).astype(logits.dtype, copy=False)
            if y.size != logits.size or y.shape[:1] != logits.shape[:1]:
                raise ValueError(
                    f"PoissonDeviance expects targets of shape {logits.shape}, got {y.shape}"
                )
            self.y = y.reshape(logits.shape)
            self.w = None
            if sample_weight is not None:
                self.w = _weights_like(sample_weight, logits, "PoissonDeviance", xp)
            loss, self.mu = poisson_deviance_forward(logits, self.y, xp=xp, weights=self.w)
        return loss

    def backward(self) -> Array:
        with device_of(self.mu):
            return poisson_deviance_backward(self.mu, self.y, xp=namespace(self.mu), weights=self.w)


def _labels_like(y: Array, n: int, who: str, xp: Any) -> Array:
    """Labels as a 1-D array of length n (a trailing axis of size 1 is accepted)."""
    y = xp.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{who} expects {n} labels of shape ({n},), got shape {y.shape}")
    return y


def _weights_like(w: Array, logits: Array, who: str, xp: Any) -> Array:
    """Sample weights as a 1-D array (N,) in the logits' dtype."""
    w = xp.asarray(w)
    if w.ndim != 1 or w.shape[0] != logits.shape[0]:
        n = logits.shape[0]
        raise ValueError(f"{who} expects {n} sample weights of shape ({n},), got shape {w.shape}")
    return w.astype(logits.dtype, copy=False)


#: the losses a model file or the command line may name (PoissonDeviance serves gpunn.sklearn)
LOSSES: dict[str, type[Loss]] = {
    cls.kind: cls for cls in (SoftmaxCrossEntropy, BinaryCrossEntropy, MeanSquaredError)
}
