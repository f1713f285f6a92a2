"""Tests for gpunn.datasets: synthetic data, bundled digits, user files and splitting."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from gpunn.datasets import blobs, digits, load_features, load_file, spirals, train_val_test_split
from gpunn.datasets.files import csv_header, has_label_column

# ---------------------------------------------------------------- synthetic data


@pytest.mark.parametrize("n,classes", [(1, 2), (7, 3), (300, 3), (1001, 5)])
def test_spirals_shapes_dtypes_and_balanced_labels(n, classes):
    X, y = spirals(n, classes=classes)
    assert X.shape == (n, 2) and X.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert y.min() >= 0 and y.max() < classes
    counts = np.bincount(y, minlength=classes)
    assert counts.sum() == n and counts.max() - counts.min() <= 1


def test_spirals_same_seed_same_data_other_seed_other_data():
    X1, y1 = spirals(200, seed=3)
    X2, y2 = spirals(200, seed=3)
    X3, _ = spirals(200, seed=4)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.allclose(X1, X3)


def test_spirals_lie_in_unit_disc_and_noise_spreads_them():
    X, _ = spirals(2000, noise=0.0)
    radius = np.linalg.norm(X, axis=1)
    assert radius.max() <= 1.0 + 1e-6 and radius.min() >= 0.1 - 1e-6
    clean, _ = spirals(500, noise=0.0, seed=1)
    noisy, _ = spirals(500, noise=0.3, seed=1)
    assert np.abs(noisy - clean).max() > 0.05


def test_spirals_are_not_linearly_separable_but_arms_are_distinct():
    # Least-squares linear classifier on one-hot targets: a spiral defeats it.
    X, y = spirals(3000)
    A = np.hstack([X, np.ones((len(X), 1), np.float32)])
    W, *_ = np.linalg.lstsq(A, np.eye(3)[y], rcond=None)
    assert ((A @ W).argmax(1) == y).mean() < 0.7
    # Nearest-neighbour on fresh points is near perfect: the arms do not overlap.
    Xt, yt = spirals(300, seed=1)
    d2 = ((Xt[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    assert (y[d2.argmin(1)] == yt).mean() >= 0.99


@pytest.mark.parametrize("n,centers,features", [(1, 1, 1), (10, 3, 2), (999, 4, 7)])
def test_blobs_shapes_dtypes_labels(n, centers, features):
    X, y = blobs(n, centers=centers, features=features)
    assert X.shape == (n, features) and X.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert y.min() >= 0 and y.max() < centers
    assert np.bincount(y).max() - np.bincount(y, minlength=centers).min() <= 1


def test_blobs_deterministic_and_clustered():
    X1, y1 = blobs(600, centers=3, spread=0.5, seed=9)
    X2, y2 = blobs(600, centers=3, spread=0.5, seed=9)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    for label in range(3):
        members = X1[y1 == label]
        assert np.allclose(members.std(axis=0), 0.5, atol=0.1)
    X3, _ = blobs(600, centers=3, spread=0.5, seed=10)
    assert not np.allclose(X1, X3)


def test_blobs_zero_spread_puts_points_on_their_centre():
    X, y = blobs(30, centers=3, spread=0.0)
    for label in range(3):
        assert np.ptp(X[y == label], axis=0).max() == 0
    assert np.all(np.abs(X) <= 10)


@pytest.mark.parametrize(
    "call,words",
    [
        (lambda: spirals(0), ["n", ">= 1", "0"]),
        (lambda: spirals(-5), ["n", "-5"]),
        (lambda: spirals(2.5), ["n", "integer", "2.5"]),
        (lambda: spirals(True), ["n", "integer", "True"]),
        (lambda: spirals(10, classes=1), ["classes", ">= 2", "1"]),
        (lambda: spirals(10, noise=-0.1), ["noise", ">= 0", "-0.1"]),
        (lambda: spirals(10, noise=float("nan")), ["noise", "finite"]),
        (lambda: spirals(10, noise="big"), ["noise", "'big'"]),
        (lambda: blobs(0), ["n", ">= 1"]),
        (lambda: blobs(10, centers=0), ["centers", ">= 1", "0"]),
        (lambda: blobs(10, features=0), ["features", ">= 1", "0"]),
        (lambda: blobs(10, spread=-1.0), ["spread", ">= 0", "-1.0"]),
    ],
)
def test_synthetic_argument_errors_say_expected_and_found(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for word in words:
        assert word in str(info.value)


# ---------------------------------------------------------------- bundled digits


def test_digits_shapes_values_and_classes():
    X, y = digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    # Pixels were integer counts 0..16, so X * 16 must be whole numbers.
    np.testing.assert_array_equal(X * 16, np.round(X * 16))
    counts = np.bincount(y)
    assert len(counts) == 10 and counts.sum() == 1797
    assert counts.min() >= 170 and counts.max() <= 190


def test_digits_returns_fresh_arrays_and_images_look_like_digits():
    X1, y1 = digits()
    X1[:] = 0
    X2, _ = digits()
    assert X2.max() == 1.0
    # The outer columns of an 8x8 digit are mostly blank; the middle is mostly ink.
    images = X2.reshape(-1, 8, 8)
    assert images[:, :, 0].mean() < 0.05 < images[:, 2:6, 2:6].mean()
    # Class means differ: a 0 is not a 1.
    zero, one = X2[y1 == 0].mean(0), X2[y1 == 1].mean(0)
    assert np.abs(zero - one).max() > 0.3


def test_digits_as_images_are_the_flat_rows_read_row_by_row():
    X, y = digits()
    images, labels = digits(images=True)
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_array_equal(images[:, 0, 3, 5], X[:, 3 * 8 + 5])  # row 3, column 5
    np.testing.assert_array_equal(images.reshape(1797, 64), X)
    # a 1 is an upright stroke: in the mean 1 every row has ink in the middle columns and none
    # at the edges (a transposed image would have a lying stroke: whole rows of ink or none)
    one = images[y == 1, 0].mean(0)  # (8, 8)
    assert one[:, 3:5].min() > 0.5 and one[:, 0].max() < 0.01 and one[:, 7].max() < 0.1


def test_digits_data_ships_with_its_licence():
    from importlib import resources

    text = resources.files("gpunn.datasets").joinpath("data").joinpath("DIGITS_LICENSE.txt")
    body = text.read_text(encoding="utf-8")
    assert "CC BY 4.0" in body and "10.24432/C50P49" in body and "Alpaydin" in body


# ---------------------------------------------------------------- user files


def test_load_npz_round_trip(tmp_path):
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    y = np.array([0, 2, 1, 2])
    path = tmp_path / "data.npz"
    np.savez(path, X=X, y=y)
    X_out, y_out = load_file(path)
    assert X_out.dtype == np.float32 and y_out.dtype == np.int64
    np.testing.assert_array_equal(X_out, X)
    np.testing.assert_array_equal(y_out, y)


def test_load_npz_keeps_image_shapes_and_float_targets(tmp_path):
    X = np.random.default_rng(0).random((5, 2, 3))
    y = np.array([0.5, 1.0, 2.0, 3.0, 4.0])
    np.savez_compressed(tmp_path / "d.npz", X=X, y=y)
    X_out, y_out = load_file(str(tmp_path / "d.npz"))
    assert X_out.shape == (5, 2, 3)
    assert y_out.dtype == np.float32
    np.testing.assert_allclose(y_out, y)


def test_load_npz_whole_float_labels_become_int64(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.zeros((3, 2)), y=np.array([1.0, 0.0, 3.0]))
    _, y = load_file(tmp_path / "d.npz")
    assert y.dtype == np.int64 and y.tolist() == [1, 0, 3]


def test_load_npz_missing_key_lists_keys_found(tmp_path):
    np.savez(tmp_path / "d.npz", features=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(ValueError) as info:
        load_file(tmp_path / "d.npz")
    message = str(info.value)
    assert "d.npz" in message and "'X'" in message and "features" in message


def test_load_npz_refuses_pickled_objects(tmp_path):
    X = np.empty(2, dtype=object)
    X[:] = [[1], [2]]
    np.savez(tmp_path / "d.npz", X=X, y=np.zeros(2))
    with pytest.raises(ValueError, match="d.npz"):
        load_file(tmp_path / "d.npz")


def test_load_npz_mismatched_lengths_and_bad_values(tmp_path):
    np.savez(tmp_path / "a.npz", X=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(ValueError, match=r"a\.npz: X has 3 rows but y has 4"):
        load_file(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", X=np.array([[1.0, np.nan]]), y=np.zeros(1))
    with pytest.raises(ValueError, match=r"b\.npz: X holds a NaN .* \(0, 1\)"):
        load_file(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", X=np.array([["a", "b"]]), y=np.zeros(1))
    with pytest.raises(ValueError, match=r"c\.npz: X must hold real numbers"):
        load_file(tmp_path / "c.npz")
    np.savez(tmp_path / "e.npz", X=np.zeros((2, 2)), y=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"e\.npz: expected .* 1-D y"):
        load_file(tmp_path / "e.npz")


def test_load_corrupt_npz(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match="bad.npz"):
        load_file(tmp_path / "bad.npz")


def test_load_csv_with_header(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("x1,x2,label\n0.5, 1.5 ,0\n-2,3e2,1\n\n4,5,2\n", encoding="utf-8")
    X, y = load_file(path)
    assert X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(X, [[0.5, 1.5], [-2, 300], [4, 5]])
    np.testing.assert_array_equal(y, [0, 1, 2])


def test_load_csv_without_header_float_labels_and_bom(tmp_path):
    path = tmp_path / "D.CSV"
    path.write_bytes("\ufeff1,2,0.25\n3,4,1.5\n".encode())
    X, y = load_file(path)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [0.25, 1.5])


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("", "empty"),
        ("\n  \n", "empty"),
        ("a,b,label\n", "only a header"),
        ("1,2,0\n3,oops,1\n", r"line 2, column 2: 'oops' is not a"),
        ("a,b,c\n1,2,0\n3,,1\n", r"line 3, column 2: '' is not a"),
        ("1,2,0\n3,nan,1\n", r"line 2, column 2: 'nan' is not a finite"),
        ("1,2,0\n3,4\n", r"line 2 has 2 columns, expected 3"),
        ("1,2,0\n3,4,5,6\n", r"line 2 has 4 columns, expected 3"),
        ("a,b\n1,2,3\n", r"line 2 has 3 columns, expected 2"),
        ("1\n2\n", r"at least 2"),
    ],
)
def test_load_csv_errors_name_the_file_and_place(tmp_path, text, pattern):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=pattern) as info:
        load_file(path)
    assert "bad.csv" in str(info.value)


@pytest.mark.parametrize("cell", ["1_000", "1_0.5", "0.000_1", "1e1_0"])
def test_load_csv_refuses_numbers_with_underscores(tmp_path, cell):
    """Python's float() reads "1_000" as 1000; in a CSV it is far more likely a typo or a
    locale's digit grouping, so it is refused like any other text, naming the cell."""
    assert float(cell) > 0  # what a plain float() would have let through
    path = tmp_path / "grouped.csv"
    path.write_text(f"1,2,0\n{cell},4,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"grouped.csv: line 2, column 1: '{cell}' is not a"):
        load_file(path)
    feature_only = tmp_path / "features.csv"
    feature_only.write_text(f"1,2\n3,{cell}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"line 2, column 2: '{cell}'"):
        load_features(feature_only, 2)


def test_load_csv_binary_file(tmp_path):
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ValueError, match="bin.csv"):
        load_file(tmp_path / "bin.csv")


def test_load_file_missing_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        load_file(tmp_path / "nothere.csv")
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(OSError, match=r"folder\.csv: is a directory"):
        load_file(tmp_path / "folder.csv")
    (tmp_path / "data.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"data\.txt.*'\.txt'.*\.npz.*\.csv"):
        load_file(tmp_path / "data.txt")


# ---------------------------------------------------------------- splitting


def _data(n=100, classes=4):
    X = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n) % classes
    return X, y


def test_split_sizes_disjoint_and_complete():
    X, y = _data(100)
    (Xtr, ytr), (Xva, yva), (Xte, yte) = train_val_test_split(X, y, val=0.1, test=0.2)
    assert (len(Xtr), len(Xva), len(Xte)) == (70, 10, 20)
    rows = np.concatenate([Xtr[:, 0], Xva[:, 0], Xte[:, 0]]) // 3
    assert sorted(rows.tolist()) == list(range(100))
    # Each X row still carries its own label.
    for Xs, ys in ((Xtr, ytr), (Xva, yva), (Xte, yte)):
        np.testing.assert_array_equal((Xs[:, 0] // 3) % 4, ys)


def test_split_shuffles_and_is_deterministic():
    X, y = _data(200)
    a = train_val_test_split(X, y, seed=5)
    b = train_val_test_split(X, y, seed=5)
    c = train_val_test_split(X, y, seed=6)
    for part_a, part_b in zip(a, b, strict=True):
        np.testing.assert_array_equal(part_a[0], part_b[0])
        np.testing.assert_array_equal(part_a[1], part_b[1])
    assert not np.array_equal(a[0][0], c[0][0])
    assert not np.array_equal(a[0][0], X[: len(a[0][0])])


def test_split_zero_fraction_gives_empty_part_of_right_shape():
    X, y = _data(10)
    (Xtr, ytr), (Xva, yva), (Xte, yte) = train_val_test_split(X, y, val=0.0, test=0.0)
    assert Xtr.shape == (10, 3) and Xva.shape == (0, 3) and Xte.shape == (0, 3)
    assert yva.shape == (0,) and yva.dtype == y.dtype and Xva.dtype == np.float32


@pytest.mark.parametrize("stratify", [False, True])
def test_split_of_no_samples_gives_empty_parts(stratify):
    X, y = np.zeros((0, 3), np.float32), np.zeros(0, np.int64)
    parts = train_val_test_split(X, y, stratify=stratify)
    assert [(Xs.shape, ys.shape) for Xs, ys in parts] == [((0, 3), (0,))] * 3


def test_split_floor_sizes_forgive_float_error():
    X, y = _data(100)
    _, (Xva, _), (Xte, _) = train_val_test_split(X, y, val=0.29, test=0.07)
    assert (len(Xva), len(Xte)) == (29, 7)


def test_split_stratified_keeps_class_proportions():
    y = np.array([0] * 80 + [1] * 20)
    X = np.arange(100, dtype=np.float32)[:, None]
    (_, ytr), (_, yva), (_, yte) = train_val_test_split(X, y, val=0.1, test=0.2, stratify=True)
    assert np.bincount(yva).tolist() == [8, 2]
    assert np.bincount(yte).tolist() == [16, 4]
    assert np.bincount(ytr).tolist() == [56, 14]
    # Classes are interleaved, not left in blocks.
    assert not np.array_equal(np.sort(ytr), ytr)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"val": -0.1}, r"val must be a fraction in \[0, 1\), got -0.1"),
        ({"test": 1.0}, r"test must be a fraction"),
        ({"val": float("nan")}, r"val must be a fraction"),
        ({"val": "0.1"}, r"val must be a fraction"),
        ({"val": 0.5, "test": 0.5}, r"val \+ test must be < 1.*0.5 \+ 0.5"),
    ],
)
def test_split_rejects_bad_fractions(kwargs, pattern):
    X, y = _data(10)
    with pytest.raises(ValueError, match=pattern):
        train_val_test_split(X, y, **kwargs)


def test_split_rejects_mismatched_lengths_and_bad_stratify():
    X, y = _data(10)
    with pytest.raises(ValueError, match=r"same number of samples.*\(10, 3\).*\(9,\)"):
        train_val_test_split(X, y[:9])
    with pytest.raises(ValueError, match="1-D class labels"):
        train_val_test_split(X, np.zeros((10, 2)), stratify=True)


# --------------------------------------------------------------------------------------------
# File-format rules a user meets: npz that is not a zip, header rule, one-column features
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [b"1,2,3\n4,5,6\n", b"\x93NUMPY not really", b"", pickle.dumps([1, 2])]
)
def test_a_file_that_is_not_an_npz_archive_is_named_so_without_pickle_advice(tmp_path, content):
    (tmp_path / "d.npz").write_bytes(content)
    for read in (load_file, lambda p: load_features(p, 3)):
        with pytest.raises(ValueError) as info:
            read(tmp_path / "d.npz")
        message = str(info.value)
        assert "d.npz: not an .npz archive" in message
        assert "pickle" not in message.lower()


def test_object_arrays_in_an_npz_are_refused_without_pickle_advice(tmp_path):
    X = np.empty(2, dtype=object)
    X[:] = [[1], [2]]
    np.savez(tmp_path / "d.npz", X=X, y=np.zeros(2))
    with pytest.raises(ValueError, match="array 'X' holds Python objects") as info:
        load_file(tmp_path / "d.npz")
    assert "allow_pickle" not in str(info.value)


def test_a_first_line_mixing_numbers_and_text_is_an_error_not_a_header(tmp_path):
    path = tmp_path / "typo.csv"
    path.write_text("0.5,1.2,x3,0\n1,2,3,1\n4,5,6,0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 1, column 3: 'x3' is not a finite number") as e:
        load_file(path)
    assert "header only when none of its cells is a number" in str(e.value)
    assert csv_header_of(path, "a,b,c,label\n1,2,3,1\n") == ["a", "b", "c", "label"]
    assert csv_header_of(path, "1,2,3,1\n") is None


def csv_header_of(path, text):
    path.write_text(text, encoding="utf-8")
    return csv_header(path)


def test_predict_features_may_be_a_single_column(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("0.5\n-1\n2\n", encoding="utf-8")
    np.testing.assert_array_equal(load_features(path, 1), [[0.5], [-1], [2]])
    assert not has_label_column(path, 1)
    path.write_text("0.5,1\n-1,0\n", encoding="utf-8")
    np.testing.assert_array_equal(load_features(path, 1), [[0.5], [-1]])
    assert has_label_column(path, 1)
