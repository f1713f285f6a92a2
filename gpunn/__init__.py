"""gpunn: a neural network written from scratch that runs unchanged on NumPy (CPU) or CuPy (GPU).

The forward pass, the losses and backpropagation are hand-written once, against the array
module ``xp`` of a :class:`Backend`; ``get_backend()`` picks CuPy when a CUDA GPU is usable and
falls back to NumPy otherwise.

The package is built in floors, numbered from the bottom, and imports only run downwards
(``tests/test_imports.py`` checks it, counting imports inside functions):

0. ``gpunn.math``      the pure math: forward/backward pairs, losses, update rules. Imports
                       nothing from gpunn. ``gpunn.backend`` (which array library) sits beside
                       it, importing nothing from gpunn either.
1. ``gpunn.kernels``   fused CuPy kernels, each a faster form of ``gpunn.math`` functions.
2. ``gpunn.nn``        layers, losses and optimizers: parameters, state, workspaces, dispatch.
3. ``gpunn.model``     ``Sequential``: layers over one flat parameter buffer on one backend.
4. ``gpunn.training``, ``gpunn.checkpoint``: fitting a model, and saving/loading it.
5. ``gpunn`` itself: the public names below.
6. ``gpunn.cli``, ``gpunn.bench``, ``gpunn.datasets``, ``gpunn.info``, ``gpunn.plots``,
   ``gpunn.testing``: the tools.
"""

from gpunn._version import __version__
from gpunn.backend import (
    Backend,
    BackendStatus,
    BackendUnavailableError,
    available_backends,
    get_backend,
)
from gpunn.checkpoint import load, load_with_optimizer
from gpunn.errors import NonFiniteLossError
from gpunn.model import Sequential
from gpunn.nn import (
    SGD,
    Adam,
    AdamW,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    BinaryCrossEntropy,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    LeakyReLU,
    Loss,
    MaxPool2D,
    MeanSquaredError,
    Optimizer,
    ReLU,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
)

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "AvgPool2D",
    "Backend",
    "BackendStatus",
    "BackendUnavailableError",
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
