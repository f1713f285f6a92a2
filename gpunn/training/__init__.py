"""Training a Sequential: the fit/evaluate/predict loop and what runs around it.

* ``loop``         ``fit``, ``evaluate``, ``predict``, ``predict_proba`` over data kept on the
                   device; ``History``
* ``callbacks``    early stopping, checkpoints, learning-rate schedules
* ``progress``     the progress bar / lines printed by ``fit``
* ``validation``   input checks before any weight changes
* ``distributed``  data-parallel training over MPI ranks (MPI or NCCL all-reduce)

This floor sits above the model (``gpunn.model``) and the layers, losses and optimizers
(``gpunn.nn``), and beside checkpoints (``gpunn.checkpoint``, which the callbacks use). Nothing
below imports it.
"""

from gpunn.training.callbacks import (
    Callback,
    CosineLR,
    EarlyStopping,
    LearningRateSchedule,
    ModelCheckpoint,
    StepLR,
)
from gpunn.training.loop import DeviceData, History, evaluate, fit, predict, predict_proba

__all__ = [
    "Callback",
    "CosineLR",
    "DeviceData",
    "EarlyStopping",
    "History",
    "LearningRateSchedule",
    "ModelCheckpoint",
    "StepLR",
    "evaluate",
    "fit",
    "predict",
    "predict_proba",
]
