"""Ready-made data sets and data-file helpers; every loader returns NumPy arrays on the host.

- ``spirals``, ``blobs``: synthetic classification problems, generated from a seed.
- ``digits``: the UCI 8x8 handwritten digits, bundled (no download).
- ``mnist``, ``fashion_mnist``: downloaded once, checked by SHA-256, then cached.
- ``load_file``: a user's own ``.npz`` / ``.csv`` data.
- ``train_val_test_split``: seeded shuffle into training, validation and test parts.

Images come flattened as float32 in [0, 1]; class labels as int64.
"""

from gpunn.datasets.digits import digits
from gpunn.datasets.files import load_features, load_file
from gpunn.datasets.idx import DatasetError, cache_root, fashion_mnist, mnist
from gpunn.datasets.split import train_val_test_split
from gpunn.datasets.synthetic import blobs, spirals

__all__ = [
    "DatasetError",
    "blobs",
    "cache_root",
    "digits",
    "fashion_mnist",
    "load_features",
    "load_file",
    "mnist",
    "spirals",
    "train_val_test_split",
]
