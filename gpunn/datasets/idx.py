"""MNIST and Fashion-MNIST: download once (checked by SHA-256, cached), parse the IDX files.

The download and the cache are :mod:`gpunn.datasets.download`'s. Setting ``GPUNN_MNIST_URL``
or ``GPUNN_FASHION_MNIST_URL`` to a base URL replaces the built-in mirrors for that data set
(for instance a local copy on an offline cluster).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from gpunn.datasets.download import DatasetError, cache_root, fetch

__all__ = ["DatasetError", "cache_root", "fashion_mnist", "mnist"]

Split = tuple[np.ndarray, np.ndarray]


# Base URLs tried in order; each file is <base>/<file name>. Tests swap these out.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}

# File name -> (size in bytes, SHA-256), as published by tensorflow_datasets'
# url_checksums/mnist.txt and url_checksums/fashion_mnist.txt for these exact files.
FILES: dict[str, dict[str, tuple[int, str]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            9912422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        "train-labels-idx1-ubyte.gz": (
            28881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        "t10k-images-idx3-ubyte.gz": (
            1648877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            4542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": (
            26421880,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        ),
        "train-labels-idx1-ubyte.gz": (
            29515,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        "t10k-images-idx3-ubyte.gz": (
            4422102,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            5148,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    },
}

_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
_URL_ENV = {"mnist": "GPUNN_MNIST_URL", "fashion_mnist": "GPUNN_FASHION_MNIST_URL"}
_IMAGE_SIDE = 28
#: one image's shape with ``images=True``: (channels, height, width)
IMAGE_SHAPE = (1, _IMAGE_SIDE, _IMAGE_SIDE)


def mnist(
    cache_dir: str | os.PathLike[str] | None = None, *, images: bool = False
) -> tuple[Split, Split]:
    """MNIST digits: ((X_train (60000, 784), y_train (60000,)), (X_test (10000, 784), y_test)).

    X is float32 in [0, 1] (pixel byte / 255), y int64 in [0, 10). ``images=True`` gives X as
    (N, 1, 28, 28) images instead (the same numbers: the flat rows are those images read row
    by row). Downloads ~11 MB on first use.
    """
    return _load("mnist", cache_dir, images)


def fashion_mnist(
    cache_dir: str | os.PathLike[str] | None = None, *, images: bool = False
) -> tuple[Split, Split]:
    """Fashion-MNIST: ((X_train (60000, 784), y_train (60000,)), (X_test (10000, 784), y_test)).

    X is float32 in [0, 1] (pixel byte / 255), y int64 in [0, 10); ``images=True`` gives X as
    (N, 1, 28, 28). Downloads ~30 MB on first use.
    """
    return _load("fashion_mnist", cache_dir, images)


def _load(
    dataset: str, cache_dir: str | os.PathLike[str] | None, images: bool = False
) -> tuple[Split, Split]:
    """Fetch and parse the four files of ``dataset`` into train and test splits."""
    folder = cache_root(cache_dir) / dataset
    splits = []
    for prefix in ("train", "t10k"):
        images_name = f"{prefix}-images-idx3-ubyte.gz"
        labels_name = f"{prefix}-labels-idx1-ubyte.gz"
        pixels = _read_idx(_fetch(dataset, images_name, folder), 3)
        labels = _read_idx(_fetch(dataset, labels_name, folder), 1)
        if pixels.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
            raise DatasetError(
                f"{folder / images_name}: expected {_IMAGE_SIDE}x{_IMAGE_SIDE} images, "
                f"found {pixels.shape[1]}x{pixels.shape[2]}"
            )
        if len(pixels) != len(labels):
            raise DatasetError(
                f"{folder}: {images_name} holds {len(pixels)} images but "
                f"{labels_name} holds {len(labels)} labels"
            )
        if labels.size and labels.max() > 9:
            raise DatasetError(
                f"{folder / labels_name}: labels must be 0..9, found {int(labels.max())}"
            )
        shape = IMAGE_SHAPE if images else (_IMAGE_SIDE * _IMAGE_SIDE,)
        X = pixels.reshape(len(pixels), *shape).astype(np.float32) / np.float32(255.0)
        splits.append((X, labels.astype(np.int64)))
    return splits[0], splits[1]


def _fetch(dataset: str, name: str, folder: Path) -> Path:
    """Path to a verified local copy of ``name``, downloading it if needed."""
    size, sha256 = FILES[dataset][name]
    urls = _urls(dataset, name)
    return fetch(name, folder, size, sha256, urls, _TITLES[dataset], _URL_ENV[dataset])


def _urls(dataset: str, name: str) -> list[str]:
    """The URLs to try for one file: the env override if set, else the built-in mirrors."""
    override = os.environ.get(_URL_ENV[dataset])
    bases = (override,) if override else MIRRORS[dataset]
    return [base.rstrip("/") + "/" + name for base in bases]


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes with ``ndim`` dimensions into a uint8 array."""
    try:
        with open(path, "rb") as fh:
            data = gzip.decompress(fh.read())
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(
            f"{path}: not a readable gzip file ({err}); delete it and try again"
        ) from err

    # The magic number is 0x00 0x00, a type code (0x08 = unsigned byte), then the rank.
    magic = bytes([0, 0, 0x08, ndim])
    if data[:4] != magic:
        raise DatasetError(
            f"{path}: bad IDX magic number {data[:4].hex() or '(empty)'}; expected "
            f"{magic.hex()} (unsigned bytes, {ndim} dimensions)"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DatasetError(f"{path}: {len(data)} bytes is too short for an IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header_len != expected:
        raise DatasetError(
            f"{path}: header declares shape {dims} = {expected} bytes of data, "
            f"but the file holds {len(data) - header_len}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)
