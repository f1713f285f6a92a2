"""The bundled UCI handwritten digits (1797 8x8 images), loaded without any download."""

from __future__ import annotations

import io
from importlib import resources

import numpy as np

#: one image's shape with ``images=True``: (channels, height, width)
IMAGE_SHAPE = (1, 8, 8)


def digits(*, images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """UCI 8x8 digits: X float32 (1797, 64) in [0, 1], y int64 (1797,) in [0, 10).

    ``images=True`` gives X as (1797, 1, 8, 8) images (the same numbers: each flat row is an
    image read row by row). A pixel counts the "on" cells of a 4x4 block of the original
    32x32 bitmap (0..16), divided by 16.

    Data: Alpaydin & Kaynak, UCI (CC BY 4.0, doi:10.24432/C50P49); see
    gpunn/datasets/data/DIGITS_LICENSE.txt.
    """
    # importlib.resources finds the file inside an installed wheel or zip as well as a checkout.
    raw = resources.files("gpunn.datasets").joinpath("data").joinpath("digits.npz").read_bytes()
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        pixels = archive["pixels"]
        labels = archive["labels"]
    # Pixels count "on" cells in a 4x4 block, so 16 is the largest possible value.
    X = pixels.astype(np.float32) / np.float32(16.0)  # (1797, 64)
    if images:
        X = X.reshape(len(X), *IMAGE_SHAPE)  # a view: rows are the images, row-major
    return X, labels.astype(np.int64)
