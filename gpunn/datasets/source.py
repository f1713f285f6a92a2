"""Where a model's data came from, and the exact split it was trained on.

A :class:`DataSource` names the data (a built-in data set, or a file with the SHA-256 of its
bytes), the fractions and seed of its training / validation / test split, and the task the
labels define. ``gpunn train --save`` stores it in the checkpoint (its ``data`` entry), so that
``gpunn evaluate`` scores, and ``gpunn train --resume`` trains on, exactly the rows the first
run used: the same seed always gives the same split.

The task rules (also in the README):

* labels that are all whole numbers make a classification task; any other value (``2.5``) a
  regression task; ``task=`` overrides the guess;
* class labels must be 0, 1, ..., K-1 with every class present (``1..10`` is refused with a
  hint rather than silently becoming 11 classes); two classes train one logit with binary
  cross-entropy, more than two train K logits with softmax cross-entropy.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gpunn.datasets.cifar import cifar10
from gpunn.datasets.digits import digits
from gpunn.datasets.files import load_file
from gpunn.datasets.idx import fashion_mnist, mnist
from gpunn.datasets.split import train_val_test_split
from gpunn.datasets.synthetic import blobs, spirals

Pair = tuple[np.ndarray, np.ndarray]

#: the built-in data sets, by their command-line name
BUILTIN = ("digits", "spirals", "blobs", "mnist", "fashion-mnist", "cifar10")
#: the built-in data sets with their own test set (the others are split 70 / 10 / 20)
OFFICIAL_TEST = ("mnist", "fashion-mnist", "cifar10")
#: one image's (channels, height, width) for the built-in image data sets
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
#: how many samples the synthetic data sets generate
SYNTHETIC_SAMPLES = 3000
#: the split of a data set without its own test set: 70 % train, 10 % validation, 20 % test
VAL, TEST = 0.1, 0.2
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class DataSource:
    """A data set and its split; ``as_dict()`` is a checkpoint's ``data`` entry."""

    dataset: str | None  # a name from BUILTIN, or None for a file
    file: str | None  # absolute path of a data file, or None
    sha256: str | None  # of the file's bytes
    samples: int | None  # samples a synthetic data set generates (None otherwise)
    val: float  # validation fraction
    test: float | None  # test fraction; None: the data set's own test set (MNIST)
    seed: int  # seed of the split and of a synthetic data set
    task: str = "classification"  # or "regression"
    classes: int | None = None  # number of classes (None for regression)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSource:
        return cls(**d)

    def with_seed(self, seed: int) -> DataSource:
        return replace(self, seed=seed)

    def same_data(self, other: DataSource) -> bool:
        """Whether both name the same rows (the same data set, or a file with the same bytes)."""
        if self.dataset is not None:
            return self.dataset == other.dataset and self.samples == other.samples
        return other.file is not None and self.sha256 == other.sha256

    @property
    def name(self) -> str:
        """The data set's name, or the file's path."""
        return self.dataset if self.dataset is not None else str(self.file)

    def describe(self) -> str:
        """One line: what the data is and how it is split."""
        split = (
            f"the official test set, {self.val:.0%} of the rest for validation"
            if self.test is None
            else f"{1 - self.val - self.test:.0%} / {self.val:.0%} / {self.test:.0%} split"
        )
        return f"{self.name}, {split} (seed {self.seed})"


def builtin(name: str, seed: int) -> DataSource:
    """The source of a built-in data set with gpunn's standard split."""
    if name not in BUILTIN:
        raise ValueError(f"unknown data set {name!r}; the built-in ones are {BUILTIN}")
    official_test = name in OFFICIAL_TEST
    samples = SYNTHETIC_SAMPLES if name in ("spirals", "blobs") else None
    return DataSource(name, None, None, samples, VAL, None if official_test else TEST, seed)


def data_file(path: str | os.PathLike[str], seed: int) -> DataSource:
    """The source of a user's data file (its absolute path and SHA-256) with the standard split."""
    p = Path(path)
    return DataSource(None, str(p.resolve()), file_sha256(p), None, VAL, TEST, seed)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (OSError naming the file when it cannot be read)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Split:
    """The three parts of a data set, each (X (n, features) float32, y (n,)).

    ``image_shape`` is one sample's (channels, height, width) when the rows are images (a
    built-in image data set, or a file whose X has shape (n, C, H, W)), else None. The rows stay
    flat here; :meth:`as_images` views them as images.
    """

    train: Pair
    val: Pair
    test: Pair
    image_shape: tuple[int, ...] | None = None

    @property
    def n_samples(self) -> int:
        return sum(len(part[1]) for part in (self.train, self.val, self.test))

    @property
    def n_features(self) -> int:
        return int(self.train[0].shape[1])

    def as_images(self, shape: tuple[int, ...]) -> Split:
        """The same rows with X viewed as (n, *shape) (no copy); ValueError if they do not fit."""
        size = 1
        for d in shape:
            size *= int(d)
        if size != self.n_features:
            shown = "x".join(str(d) for d in shape)
            raise ValueError(
                f"{shown} images hold {size} values, but the rows have {self.n_features}"
            )
        parts = [(X.reshape(len(X), *shape), y) for X, y in (self.train, self.val, self.test)]
        return Split(*parts, image_shape=tuple(shape))


def load_split(source: DataSource) -> Split:
    """Load the data ``source`` names and split it exactly as it says.

    A file must still have the SHA-256 the source recorded (else ValueError: the split could
    not be the same).
    """
    shape = IMAGE_SHAPES.get(str(source.dataset))
    if source.dataset in OFFICIAL_TEST:
        (X, y), (X_test, y_test) = _official(source.dataset)
        train, val, _ = train_val_test_split(
            _flat(X), y, val=source.val, test=0.0, seed=source.seed
        )
        return Split(train, val, (_flat(X_test), y_test), image_shape=shape)
    X, y = load_rows(source)
    if source.dataset is None and X.ndim in (3, 4):  # a file of images: (n, H, W) or (n, C, H, W)
        shape = (1, *X.shape[1:]) if X.ndim == 3 else tuple(X.shape[1:])
    train, val, test = train_val_test_split(
        _flat(X), y, val=source.val, test=source.test or 0.0, seed=source.seed
    )
    return Split(train, val, test, image_shape=shape)


def load_rows(source: DataSource) -> Pair:
    """Every row of the data ``source`` names (MNIST: the training set), unsplit."""
    if source.dataset == "spirals":
        return spirals(source.samples or SYNTHETIC_SAMPLES, seed=source.seed)
    if source.dataset == "blobs":
        return blobs(source.samples or SYNTHETIC_SAMPLES, seed=source.seed)
    if source.dataset == "digits":
        return digits()
    if source.dataset in OFFICIAL_TEST:
        return _official(source.dataset)[0]
    path = Path(str(source.file))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the data file this model was trained on is not there any more; give a "
            "copy of it with --data (or other data to score every row of)"
        )
    digest = file_sha256(path)
    if source.sha256 is not None and digest != source.sha256:
        raise ValueError(
            f"{path} has changed since the model was trained on it (SHA-256 {digest[:12]}..., "
            f"was {source.sha256[:12]}...): its split cannot be rebuilt"
        )
    return load_file(path)


def _official(name: str | None) -> tuple[Pair, Pair]:
    """(train, test) of a data set that comes with its own test set, rows flat."""
    load = {"mnist": mnist, "fashion-mnist": fashion_mnist, "cifar10": cifar10}[str(name)]
    return load()


def _flat(X: np.ndarray) -> np.ndarray:
    return X if X.ndim == 2 else X.reshape(len(X), -1)


# --------------------------------------------------------------------------------------------
# The task the labels define
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """What the labels ask for: ``kind`` "classification" (``classes`` of them) or "regression";
    ``guessed`` says the kind came from the labels rather than from the user."""

    kind: str
    classes: int | None
    guessed: bool
    reason: str  # why this kind, for the printed note

    @property
    def outputs(self) -> int:
        """The model's output width: one logit for two classes or regression, else K."""
        return 1 if self.kind == "regression" or self.classes == 2 else int(self.classes or 1)

    def describe(self) -> str:
        if self.kind == "regression":
            return f"regression, mean squared error ({self.reason})"
        loss = "binary cross-entropy" if self.classes == 2 else "softmax cross-entropy"
        return f"classification, {self.classes} classes, {loss} ({self.reason})"


def infer_task(
    y: np.ndarray, requested: str | None = None, where: str = "y", complete: bool = True
) -> Task:
    """The task of labels ``y`` (n,): ``requested`` ("classification"/"regression") or guessed.

    Raises ValueError (naming ``where``) for class labels that are not whole numbers 0..K-1,
    or, with ``complete`` (training data), that leave a class out.
    """
    if requested is not None and requested not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {requested!r}")
    whole = y.dtype.kind in "iub"
    if requested == "regression" or (requested is None and not whole):
        if requested is None:
            example = y[np.flatnonzero(y != np.round(y))[0]]
            reason = f"labels are not all whole numbers, e.g. {example:g}; --task to choose"
        else:
            reason = "as asked"
        return Task("regression", None, requested is None, reason)
    if not whole:
        bad = int(np.flatnonzero(y != np.round(y))[0])
        raise ValueError(
            f"{where}: classification needs whole-number labels 0..K-1, but row {bad + 1} "
            f"holds {y[bad]:g} (--task regression for a numeric target)"
        )
    labels = np.unique(y)
    low, high = int(labels[0]), int(labels[-1])
    if low < 0:
        raise ValueError(
            f"{where}: class labels must be 0..K-1, found {low} (--task regression for a "
            "numeric target)"
        )
    if not complete:  # a test set may lack a class; K is then only a lower bound
        return Task("classification", high + 1, requested is None, "labels are whole numbers")
    if len(labels) < 2:
        raise ValueError(f"{where}: all labels are {low}; classification needs 2 classes or more")
    if len(labels) != high + 1:
        missing = sorted(set(range(high + 1)) - set(labels.tolist()))
        shown = ", ".join(str(m) for m in missing[:5]) + (", ..." if len(missing) > 5 else "")
        hint = " (labels 1..K: subtract 1 from each)" if missing == [0] else ""
        raise ValueError(
            f"{where}: class labels must be 0..K-1 with every class present, but labels "
            f"{low}..{high} never use {shown}{hint}; --task regression for a numeric target"
        )
    reason = "as asked" if requested else f"labels are whole numbers {low}..{high}"
    return Task("classification", high + 1, requested is None, reason)
