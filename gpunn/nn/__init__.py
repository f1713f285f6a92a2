"""Layers, losses and optimizers: the objects that hold parameters, state and workspaces.

This floor sits above the pure math (``gpunn.math``) and the fused kernels (``gpunn.kernels``)
and imports both: each class calls the math functions, or their fused form through the one
dispatch point ``gpunn.kernels.get``. It also owns the performance plumbing that needs state
to be safe (workspaces reused across steps, in-place activations, the deferred Dense bias).
Nothing here knows how a model is trained or saved.
"""

from gpunn.nn.activations import Activation, LeakyReLU, ReLU, Sigmoid, Tanh
from gpunn.nn.batchnorm import BatchNorm1D, BatchNorm2D
from gpunn.nn.conv import Conv2D
from gpunn.nn.dense import Dense
from gpunn.nn.dropout import Dropout
from gpunn.nn.flatten import Flatten
from gpunn.nn.layer import Array, Layer
from gpunn.nn.losses import LOSSES, BinaryCrossEntropy, Loss, MeanSquaredError, SoftmaxCrossEntropy
from gpunn.nn.optim import OPTIMIZERS, SGD, Adam, AdamW, Optimizer
from gpunn.nn.pool import AvgPool2D, MaxPool2D

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "SGD",
    "Activation",
    "Adam",
    "AdamW",
    "Array",
    "AvgPool2D",
    "BatchNorm1D",
    "BatchNorm2D",
    "BinaryCrossEntropy",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "Layer",
    "LeakyReLU",
    "Loss",
    "MaxPool2D",
    "MeanSquaredError",
    "Optimizer",
    "ReLU",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Tanh",
]
