"""gpunn: a neural network written from scratch that runs unchanged on NumPy (CPU) or CuPy (GPU).

The forward pass, the losses and backpropagation are hand-written once, against the array
module ``xp`` of a :class:`Backend`; ``get_backend()`` picks CuPy when a CUDA GPU is usable and
falls back to NumPy otherwise.
"""

from gpunn.activations import LeakyReLU, ReLU, Sigmoid, Tanh
from gpunn.backend import (
    Backend,
    BackendStatus,
    BackendUnavailableError,
    available_backends,
    get_backend,
)
from gpunn.checkpoint import load, load_with_optimizer
from gpunn.errors import NonFiniteLossError
from gpunn.layer import Layer
from gpunn.layers import Dense, Dropout
from gpunn.losses import BinaryCrossEntropy, Loss, MeanSquaredError, SoftmaxCrossEntropy
from gpunn.model import Sequential
from gpunn.optim import SGD, Adam, AdamW, Optimizer

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Backend",
    "BackendStatus",
    "BackendUnavailableError",
    "BinaryCrossEntropy",
    "Dense",
    "Dropout",
    "Layer",
    "LeakyReLU",
    "Loss",
    "NonFiniteLossError",
    "MeanSquaredError",
    "Optimizer",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Tanh",
    "__version__",
    "available_backends",
    "get_backend",
    "load",
    "load_with_optimizer",
]
