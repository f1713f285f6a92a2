"""scikit-learn's MLP objectives expressed with gpunn's losses: output activation + data loss.

scikit-learn pairs each output activation with its canonical loss, so that the gradient with
respect to the output layer's pre-activation z is ``(act(z) - y) * w / sum(w)``:

=============== ================================ =================================================
out_activation  scikit-learn loss                gpunn loss (from logits z)
=============== ================================ =================================================
softmax         log_loss (multiclass)            SoftmaxCrossEntropy on class indices
logistic        (binary_)log_loss (binary,       BinaryCrossEntropy on (N, K) 0/1 labels
                multilabel; summed over labels)
identity        squared_error                    MeanSquaredError, see the factors below
exp             poisson                          PoissonDeviance
=============== ================================ =================================================

Squared error. scikit-learn reports ``0.5 * mean over outputs of the (weighted) mean over samples
of r^2`` = 0.5 * gpunn's MSE (which averages over all N*K elements), but it trains on the gradient
``w r / sum(w)``, the gradient of ``0.5 * sum over outputs``: gpunn's MSE gradient
``2 w r / (sum(w) K)`` times K/2. For one output both are the half MSE; for K outputs
scikit-learn's reported loss is K times smaller than the objective whose gradient it follows.
gpunn reproduces both numbers, so ``loss_`` and the training trajectory match scikit-learn's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gpunn.math.activations import sigmoid_forward
from gpunn.nn.layer import Array
from gpunn.nn.losses import (
    BinaryCrossEntropy,
    Loss,
    MeanSquaredError,
    PoissonDeviance,
    SoftmaxCrossEntropy,
)

__all__ = ["OBJECTIVES", "Objective", "softmax"]


def softmax(z: Array, *, xp: Any) -> Array:
    """Row-wise softmax of z (N, C), shifted by the row maximum (exp cannot overflow)."""
    e = xp.exp(z - z.max(axis=1, keepdims=True))  # (N, C)
    e /= e.sum(axis=1, keepdims=True)
    return e


class Objective:
    """One output activation with its loss: ``forward`` gives scikit-learn's data loss of the
    batch (a 0-d device array), ``backward`` the gradient it trains on, ``activate`` the outputs
    (probabilities, rates or values) from logits."""

    out_activation: ClassVar[str] = ""
    #: the targets are class indices (int64) rather than numbers in the model's dtype
    integer_targets: ClassVar[bool] = False

    def __init__(self) -> None:
        self.loss = self.make_loss()

    def make_loss(self) -> Loss:
        raise NotImplementedError

    def forward(self, logits: Array, y: Array, sample_weight: Array | None) -> Array:
        return self.loss.forward(logits, y, sample_weight=sample_weight)

    def backward(self) -> Array:
        return self.loss.backward()

    def activate(self, logits: Array, *, xp: Any) -> Array:
        raise NotImplementedError


class SoftmaxObjective(Objective):
    out_activation = "softmax"
    integer_targets = True

    def make_loss(self) -> Loss:
        return SoftmaxCrossEntropy()

    def activate(self, logits: Array, *, xp: Any) -> Array:
        return softmax(logits, xp=xp)


class LogisticObjective(Objective):
    out_activation = "logistic"

    def make_loss(self) -> Loss:
        return BinaryCrossEntropy()

    def activate(self, logits: Array, *, xp: Any) -> Array:
        return sigmoid_forward(logits, xp=xp)


class IdentityObjective(Objective):
    """Half squared error with scikit-learn's factors (module docstring)."""

    out_activation = "identity"

    def make_loss(self) -> Loss:
        return MeanSquaredError()

    def forward(self, logits: Array, y: Array, sample_weight: Array | None) -> Array:
        self.outputs = logits.shape[1] if logits.ndim == 2 else 1
        return 0.5 * self.loss.forward(logits, y, sample_weight=sample_weight)

    def backward(self) -> Array:
        dz = self.loss.backward()  # 2 w r / (sum(w) K), in place in the loss's residual
        dz *= 0.5 * self.outputs  # -> w r / sum(w)
        return dz

    def activate(self, logits: Array, *, xp: Any) -> Array:
        return logits


class ExpObjective(Objective):
    out_activation = "exp"

    def make_loss(self) -> Loss:
        return PoissonDeviance()

    def activate(self, logits: Array, *, xp: Any) -> Array:
        return xp.exp(logits)


OBJECTIVES: dict[str, type[Objective]] = {
    cls.out_activation: cls
    for cls in (SoftmaxObjective, LogisticObjective, IdentityObjective, ExpObjective)
}
