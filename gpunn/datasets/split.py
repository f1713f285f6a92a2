"""Seeded shuffle-and-split of a data set into training, validation and test parts."""

from __future__ import annotations

import math

import numpy as np

Pair = tuple[np.ndarray, np.ndarray]

# Slack for fractions like 0.29 * 100 = 28.999999999999996, which should count as 29.
_ROUNDING_SLACK = 1e-9


def train_val_test_split(
    X: np.ndarray,
    y: np.ndarray,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    stratify: bool = False,
) -> tuple[Pair, Pair, Pair]:
    """Shuffle (X (n, ...), y (n,)) and split: ((X_tr, y_tr), (X_va, y_va), (X_te, y_te)).

    The validation and test parts get floor(val * n) and floor(test * n) samples, the
    training part the rest. With ``stratify=True`` each class of y is split that way on
    its own, so every part keeps the class proportions. Same seed, same split.
    """
    X, y = np.asarray(X), np.asarray(y)
    for name, frac in (("val", val), ("test", test)):
        if not (isinstance(frac, (int, float, np.integer, np.floating)) and 0 <= frac < 1):
            raise ValueError(f"{name} must be a fraction in [0, 1), got {frac!r}")
    if val + test >= 1:
        raise ValueError(
            f"val + test must be < 1 to leave training data, got {val} + {test} = {val + test}"
        )
    if X.ndim == 0 or y.ndim == 0 or len(X) != len(y):
        raise ValueError(
            f"X and y must have the same number of samples, got shapes {X.shape} and {y.shape}"
        )
    if stratify and y.ndim != 1:
        raise ValueError(f"stratify=True needs 1-D class labels y, got shape {y.shape}")
    rng = np.random.default_rng(seed)
    if stratify and len(y):
        groups = [np.flatnonzero(y == label) for label in np.unique(y)]
    else:
        groups = [np.arange(len(y))]

    parts: list[list[np.ndarray]] = [[], [], []]
    for members in groups:
        members = rng.permutation(members)
        n_val = _count(val, len(members))
        n_test = _count(test, len(members))
        n_train = len(members) - n_val - n_test
        for part, chunk in zip(parts, np.split(members, [n_train, n_train + n_val]), strict=True):
            part.append(chunk)
    # Stratified parts are built class by class; shuffle again so classes are interleaved.
    order = [rng.permutation(np.concatenate(part)) for part in parts]
    train, valid, tests = ((X[idx], y[idx]) for idx in order)
    return train, valid, tests


def _count(frac: float, n: int) -> int:
    """floor(frac * n), forgiving float error just below a whole number."""
    return math.floor(frac * n + _ROUNDING_SLACK)
