"""Loss objects: they check the targets and keep what the backward needs between the two calls.

The math is in ``gpunn.math.losses``; softmax and binary cross-entropy go through
``gpunn.kernels``, which gives the loss and its gradient in one fused pass on CuPy. Each loss
computes on the device that holds the logits (``device_of``), whichever device is current.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gpunn import kernels
from gpunn.backend import device_of, namespace
from gpunn.math.losses import mean_squared_error_backward, mean_squared_error_forward
from gpunn.nn.layer import Array


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
        with device_of(logits):
            y = _labels_like(y, logits.shape[0], "SoftmaxCrossEntropy", xp)
            self.y = y.astype(xp.int64, copy=False)
            # loss and dlogits together: one fused pass on CuPy, else the two functions above
            loss, self.dz = kernels.get("softmax_cross_entropy", xp)(logits, self.y, xp=xp)
        return loss

    def backward(self) -> Array:
        return self.dz

    def correct(self, logits: Array, y: Array) -> Array:
        with device_of(logits):
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
        with device_of(logits):
            y = _labels_like(y, logits.shape[0], "BinaryCrossEntropy", xp)
            self.z = logits
            self.y = y.reshape(logits.shape).astype(logits.dtype, copy=False)
            loss, self.dz = kernels.get("binary_cross_entropy", xp)(self.z, self.y, xp=xp)
        return loss

    def backward(self) -> Array:
        return self.dz

    def correct(self, logits: Array, y: Array) -> Array:
        # sigmoid(z) > 0.5 exactly when z > 0
        with device_of(logits):
            return ((logits.reshape(-1) > 0) == (y.reshape(-1) > 0.5)).sum()


class MeanSquaredError(Loss):
    """Mean of (output - target)^2 over all elements; target of the output's shape."""

    kind = "MeanSquaredError"

    def forward(self, logits: Array, y: Array) -> Array:
        xp = namespace(logits)
        with device_of(logits):
            y = xp.asarray(y).astype(logits.dtype, copy=False)
            if y.size != logits.size or y.shape[:1] != logits.shape[:1]:
                raise ValueError(
                    f"MeanSquaredError expects targets of shape {logits.shape}, got {y.shape}"
                )
            loss, self.r = mean_squared_error_forward(logits, y.reshape(logits.shape), xp=xp)
        return loss

    def backward(self) -> Array:
        with device_of(self.r):
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
