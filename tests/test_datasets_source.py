"""Tests for gpunn.datasets.source: data provenance, exact split rebuilding, the task rules."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from gpunn import checkpoint
from gpunn.datasets import blobs, spirals, train_val_test_split
from gpunn.datasets.source import (
    DataSource,
    builtin,
    data_file,
    infer_task,
    load_split,
)


def test_a_builtin_source_rebuilds_the_split_of_its_seed():
    source = builtin("spirals", seed=5)
    split = load_split(source)
    X, y = spirals(3000, seed=5)
    expected = train_val_test_split(X, y, val=0.1, test=0.2, seed=5)
    for got, want in zip((split.train, split.val, split.test), expected, strict=True):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    other = load_split(source.with_seed(6))
    assert not np.array_equal(other.test[0], split.test[0])


def test_a_source_is_a_valid_checkpoint_data_entry_and_round_trips():
    for source in (builtin("digits", 3), builtin("mnist", 0), builtin("blobs", 1)):
        entry = {**source.as_dict(), "task": "classification", "classes": 3}
        assert checkpoint.check_data(entry) == entry
        assert DataSource.from_dict(entry).same_data(source)
    assert builtin("mnist", 0).test is None  # its own test set


def test_a_file_source_records_the_absolute_path_and_sha256(tmp_path, monkeypatch):
    X, y = blobs(50, features=3, seed=0)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    monkeypatch.chdir(tmp_path)
    source = data_file("d.npz", seed=2)
    assert source.file == str(tmp_path / "d.npz")
    assert source.sha256 == hashlib.sha256((tmp_path / "d.npz").read_bytes()).hexdigest()
    split = load_split(source)
    assert split.n_samples == 50 and len(split.test[1]) == 10
    checkpoint.check_data({**source.as_dict(), "task": "classification", "classes": 3})
    # the same bytes elsewhere are the same data; other bytes are not
    (tmp_path / "copy.npz").write_bytes((tmp_path / "d.npz").read_bytes())
    assert data_file(tmp_path / "copy.npz", 0).same_data(source)
    np.savez(tmp_path / "d.npz", X=X[:40], y=y[:40])
    assert not data_file("d.npz", 2).same_data(source)
    with pytest.raises(ValueError, match="d.npz has changed since the model was trained"):
        load_split(source)
    (tmp_path / "d.npz").unlink()
    with pytest.raises(FileNotFoundError, match="not there any more"):
        load_split(source)


@pytest.mark.parametrize(
    ("y", "kind", "classes", "outputs"),
    [
        (np.array([0, 1, 2, 1, 0]), "classification", 3, 3),
        (np.array([1, 0, 1]), "classification", 2, 1),
        (np.array([0.5, 1.0, 2.0], dtype=np.float32), "regression", None, 1),
    ],
)
def test_the_task_follows_the_documented_rules(y, kind, classes, outputs):
    task = infer_task(y)
    assert (task.kind, task.classes, task.outputs, task.guessed) == (kind, classes, outputs, True)


@pytest.mark.parametrize(
    ("y", "words"),
    [
        (np.arange(1, 11), ["labels 1..10 never use 0", "subtract 1"]),
        (np.array([0, 1, 3]), ["never use 2"]),
        (np.array([-1, 1, 0]), ["found -1"]),
        (np.array([2, 2]), ["all labels are 2"]),
    ],
)
def test_class_labels_that_are_not_0_to_k_minus_1_are_refused(y, words):
    with pytest.raises(ValueError) as info:
        infer_task(y, where="d.csv")
    for word in ["d.csv", *words]:
        assert word in str(info.value)


def test_an_explicit_task_wins_and_a_test_set_may_lack_a_class():
    assert infer_task(np.arange(1, 11), "regression").kind == "regression"
    with pytest.raises(ValueError, match="row 2 holds 1.5"):
        infer_task(np.array([1.0, 1.5]), "classification")
    assert infer_task(np.array([0, 2]), "classification", complete=False).classes == 3


# ---------------------------------------------------------------- images


def test_image_data_sets_know_their_image_shape_and_keep_flat_rows():
    split = load_split(builtin("digits", 0))
    assert split.image_shape == (1, 8, 8) and split.n_features == 64
    images = split.as_images(split.image_shape)
    assert images.train[0].shape == (len(split.train[1]), 1, 8, 8)
    assert np.shares_memory(images.train[0], split.train[0])  # a view, not a copy
    np.testing.assert_array_equal(images.test[0].reshape(len(split.test[1]), -1), split.test[0])
    with pytest.raises(ValueError, match="1x7x7 images hold 49 values, but the rows have 64"):
        split.as_images((1, 7, 7))
    assert load_split(builtin("spirals", 0)).image_shape is None


def test_cifar10_is_a_builtin_with_its_own_test_set():
    source = builtin("cifar10", 0)
    assert source.test is None and source.samples is None
    assert "official test set" in source.describe()
    checkpoint.check_data({**source.as_dict(), "task": "classification", "classes": 10})


@pytest.mark.parametrize(
    ("shape", "image_shape"),
    [((30, 2, 4, 4), (2, 4, 4)), ((30, 5, 6), (1, 5, 6)), ((30, 12), None)],
)
def test_a_file_of_images_gives_its_image_shape(tmp_path, shape, image_shape):
    rng = np.random.default_rng(0)
    X = rng.random(shape, dtype=np.float32)
    y = np.arange(30) % 3
    np.savez(tmp_path / "img.npz", X=X, y=y)
    split = load_split(data_file(tmp_path / "img.npz", seed=1))
    assert split.image_shape == image_shape
    assert split.n_features == X[0].size  # rows are flat whatever X's shape
    if image_shape is not None:
        images = split.as_images(image_shape)
        # the same split as the flat rows, each row the image it was
        whole = {row.tobytes(): row for row in X.reshape(30, *image_shape)}
        for row in images.train[0]:
            np.testing.assert_array_equal(row, whole[row.tobytes()])
