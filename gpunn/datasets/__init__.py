"""Ready-made data sets and data-file helpers; every loader returns NumPy arrays on the host.

- ``spirals``, ``blobs``: synthetic classification problems, generated from a seed.
- ``digits``: the UCI 8x8 handwritten digits, bundled (no download).
- ``mnist``, ``fashion_mnist``: downloaded once, checked by SHA-256, then cached.
- ``cifar10``: the binary distribution of CIFAR-10, downloaded and checked the same way.
- ``load_file``: a user's own ``.npz`` / ``.csv`` data.
- ``train_val_test_split``: seeded shuffle into training, validation and test parts.

Images come as float32 in [0, 1] (pixel / 16 for digits, / 255 for the others), flattened to
one row per image by default; ``images=True`` gives (N, C, H, W) arrays of the same numbers
(digits (1, 8, 8), MNIST (1, 28, 28), CIFAR-10 (3, 32, 32)). Class labels are int64.
"""

from gpunn.datasets.cifar import cifar10
from gpunn.datasets.digits import digits
from gpunn.datasets.download import DatasetError, cache_root
from gpunn.datasets.files import load_features, load_file
from gpunn.datasets.idx import fashion_mnist, mnist
from gpunn.datasets.split import train_val_test_split
from gpunn.datasets.synthetic import blobs, spirals

__all__ = [
    "DatasetError",
    "blobs",
    "cache_root",
    "cifar10",
    "digits",
    "fashion_mnist",
    "load_features",
    "load_file",
    "mnist",
    "spirals",
    "train_val_test_split",
]
