"""Tests for input checks in fit/evaluate/predict: clear ValueErrors before any weight changes."""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pytest

import gpunn
from gpunn.training.validation import check_batch_size, check_x, check_y

F, K, N = 5, 3, 10  # features, classes, samples


def good_data(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, F)).astype(np.float32), np.arange(n) % K


def classifier(backend: Any = "numpy", dtype: str = "float32") -> gpunn.Sequential:
    return gpunn.Sequential(
        [gpunn.Dense(F, 4), gpunn.ReLU(), gpunn.Dense(4, K)], backend=backend, dtype=dtype
    )


def binary(outputs: int = 1) -> gpunn.Sequential:
    layers = [gpunn.Dense(F, 4), gpunn.Tanh(), gpunn.Dense(4, outputs)]
    return gpunn.Sequential(layers, backend="numpy")


def host(model: gpunn.Sequential) -> np.ndarray:
    return model.backend.to_numpy(model.flat_params).copy()


def refused(call: Any, model: gpunn.Sequential, *fragments: str, opt: Any = None) -> str:
    """Run `call`, expect a ValueError whose message holds every fragment (case-insensitive),
    and check that neither the weights nor the optimizer changed. Returns the message."""
    before = host(model)
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), (fragment, message)
    np.testing.assert_array_equal(host(model), before)
    if opt is not None:
        assert opt.step_count == 0 and not opt.state
    return message


def fit_with(model: gpunn.Sequential, **overrides: Any) -> Any:
    """fit() on good data with one thing changed; returns (call, optimizer)."""
    X, y = good_data()
    args: dict[str, Any] = {
        "X": X,
        "y": y,
        "loss": gpunn.SoftmaxCrossEntropy(),
        "optimizer": gpunn.SGD(0.1),
        "epochs": 2,
        "batch_size": 4,
        "verbose": 0,
    }
    args.update(overrides)
    X, y = args.pop("X"), args.pop("y")
    return (lambda: model.fit(X, y, **args)), args["optimizer"]


# --------------------------------------------------------------------------------------------
# Bad X
# --------------------------------------------------------------------------------------------

X_GOOD, Y_GOOD = good_data()
X_NAN = X_GOOD.copy()
X_NAN[3, 2] = np.nan
X_INF = X_GOOD.copy()
X_INF[0, 0] = -np.inf

BAD_X = {
    "1-D": (X_GOOD[0], ["2-D", "(5,)"]),
    "3-D": (X_GOOD.reshape(N, F, 1), ["2-D", "(10, 5, 1)"]),
    "strings": (np.full((N, F), "1.5"), ["numbers", "dtype", "<U3"]),
    "objects": (np.array([[1.0, None, 2.0, 3.0, 4.0]] * N, dtype=object), ["numbers", "object"]),
    "ragged": ([[1.0, 2.0], [3.0]], ["2-D"]),
    "complex": (X_GOOD + 1j, ["numbers", "complex"]),
    "NaN": (X_NAN, ["1 NaN", "finite"]),
    "inf": (X_INF, ["infinite", "finite"]),
    "features": (X_GOOD[:, :4], ["X has 4 features, the model expects 5"]),
    "empty": (np.zeros((0, F), dtype=np.float32), ["empty", "(0, 5)"]),
}


@pytest.mark.parametrize("case", list(BAD_X))
def test_fit_refuses_bad_x(backend: gpunn.Backend, case: str) -> None:
    X, fragments = BAD_X[case]
    model = classifier(backend)
    y = Y_GOOD if case not in ("empty", "ragged") else Y_GOOD[: len(X)]
    call, opt = fit_with(model, X=X, y=y)
    refused(call, model, *fragments, opt=opt)


@pytest.mark.parametrize("case", list(BAD_X))
def test_predict_refuses_bad_x(case: str) -> None:
    X, fragments = BAD_X[case]
    model = classifier()
    refused(lambda: model.predict(X), model, *fragments)


@pytest.mark.parametrize("case", list(BAD_X))
def test_evaluate_refuses_bad_x(case: str) -> None:
    X, fragments = BAD_X[case]
    model = classifier()
    y = Y_GOOD if case not in ("empty", "ragged") else Y_GOOD[: len(X)]
    refused(lambda: model.evaluate(X, y), model, *fragments)


def test_the_feature_message_is_exact() -> None:
    model = classifier()
    call, _ = fit_with(model, X=np.ones((N, 4)))
    message = refused(call, model)
    assert message == "X has 4 features, the model expects 5"


def test_x_on_the_backend_is_checked_too(backend: gpunn.Backend) -> None:
    model = classifier(backend)
    call, opt = fit_with(model, X=backend.asarray(X_NAN), y=backend.asarray(Y_GOOD))
    refused(call, model, "NaN", opt=opt)
    refused(lambda: model.predict(backend.asarray(X_GOOD[:, :4])), model, "4 features")


def test_values_that_overflow_the_models_dtype_are_refused() -> None:
    """1e39 is finite in float64 but inf in the float32 the model computes in: refuse it before
    any weight changes instead of training on (and predicting) inf/NaN."""
    X = X_GOOD.astype(np.float64)
    X[2, 1] = 1e39
    model = classifier(dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        call, opt = fit_with(model, X=X)
        refused(call, model, "finite", opt=opt)
        refused(lambda: model.predict(X), model, "finite")


# --------------------------------------------------------------------------------------------
# Bad y
# --------------------------------------------------------------------------------------------

Y_NAN = Y_GOOD.astype(np.float64)
Y_NAN[4] = np.nan

BAD_Y = {
    "too short": (Y_GOOD[:9], ["one entry per sample", "(10)", "9 rows"]),
    "too long": (np.arange(11) % K, ["one entry per sample", "(10)", "11 rows"]),
    "scalar": (np.int64(1), ["one entry per sample", "scalar"]),
    "NaN": (Y_NAN, ["NaN", "finite"]),
    "inf": (np.where(Y_GOOD == 1, np.inf, Y_GOOD), ["infinite"]),
    "strings": (np.array(["a"] * N), ["numbers", "dtype"]),
    "fractional": (Y_GOOD + 0.5, ["whole-number", "fractional"]),
    "negative": (Y_GOOD - 1, ["[0, 3)", "-1"]),
    "too large": (Y_GOOD + 1, ["[0, 3)", "to 3"]),
    "one-hot": (np.eye(K)[Y_GOOD], ["shape (N,)", "(10, 3)"]),
}


@pytest.mark.parametrize("case", list(BAD_Y))
def test_fit_refuses_bad_class_labels(backend: gpunn.Backend, case: str) -> None:
    y, fragments = BAD_Y[case]
    model = classifier(backend)
    call, opt = fit_with(model, y=y)
    refused(call, model, *fragments, opt=opt)


@pytest.mark.parametrize("case", list(BAD_Y))
def test_evaluate_refuses_bad_class_labels(case: str) -> None:
    y, fragments = BAD_Y[case]
    model = classifier()
    refused(lambda: model.evaluate(X_GOOD, y, loss=gpunn.SoftmaxCrossEntropy()), model, *fragments)


@pytest.mark.parametrize(
    ("labels", "found"),
    [(np.array([0, 1, 2, 0, 1, 0, 1, 0, 1, 0]), "2"), (np.full(N, 0.5), "0.5")],
    ids=["two", "half"],
)
def test_binary_labels_must_be_0_or_1_and_the_message_says_what_was_found(
    labels: np.ndarray, found: str
) -> None:
    model = binary()
    call, opt = fit_with(model, y=labels, loss=gpunn.BinaryCrossEntropy())
    message = refused(call, model, "0 and 1", opt=opt)
    assert re.search(rf"(?<![\d.-]){re.escape(found)}(?![\d.])", message), message


def test_binary_cross_entropy_needs_one_output() -> None:
    model = binary(outputs=3)
    call, opt = fit_with(model, y=Y_GOOD % 2, loss=gpunn.BinaryCrossEntropy())
    refused(call, model, "1 output", "has 3", opt=opt)
    refused(
        lambda: model.evaluate(X_GOOD, Y_GOOD % 2, loss=gpunn.BinaryCrossEntropy()),
        model,
        "1 output",
        "has 3",
    )


def test_regression_targets_must_match_the_outputs() -> None:
    model = classifier()
    call, opt = fit_with(model, y=np.zeros(N), loss=gpunn.MeanSquaredError())
    refused(call, model, "(10, 3)", "(10,)", opt=opt)


def test_accepted_label_forms() -> None:
    """Whole-number floats, an (N, 1) column, booleans and plain lists are all fine."""
    for y in (Y_GOOD.astype(np.float32), Y_GOOD.reshape(-1, 1), Y_GOOD.tolist()):
        call, _ = fit_with(classifier(), y=y)
        assert len(call().epoch) == 2
    call, _ = fit_with(binary(), y=(Y_GOOD > 0), loss=gpunn.BinaryCrossEntropy())
    assert len(call().epoch) == 2
    call, _ = fit_with(classifier(), X=X_GOOD.astype(np.int64).tolist())
    assert len(call().epoch) == 2


# --------------------------------------------------------------------------------------------
# Bad training settings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("epochs", [-1, 1.5, "3", True, None])
def test_bad_epochs(epochs: Any) -> None:
    model = classifier()
    call, opt = fit_with(model, epochs=epochs)
    refused(call, model, "epochs", "non-negative integer", repr(epochs), opt=opt)


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, "32", True, None])
def test_bad_batch_size(batch_size: Any) -> None:
    model = classifier()
    call, opt = fit_with(model, batch_size=batch_size)
    refused(call, model, "batch_size", "positive integer", repr(batch_size), opt=opt)


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, True])
def test_bad_predict_batch_size(batch_size: Any) -> None:
    model = classifier()
    refused(lambda: model.predict(X_GOOD, batch_size=batch_size), model, "batch_size")


def test_bad_loss_and_optimizer() -> None:
    model = classifier()
    call, opt = fit_with(model, loss="cross-entropy")
    refused(call, model, "loss", "'cross-entropy'", opt=opt)
    call, _ = fit_with(model, optimizer="adam")
    refused(call, model, "optimizer", "'adam'")


def test_evaluate_refuses_a_bad_loss_like_fit() -> None:
    model = classifier()
    refused(lambda: model.evaluate(X_GOOD, Y_GOOD, loss="cross-entropy"), model, "loss")


def test_bad_initial_epoch() -> None:
    model = classifier()
    call, opt = fit_with(model, initial_epoch=-1)
    refused(call, model, "initial_epoch", "-1", opt=opt)


@pytest.mark.parametrize(
    "validation_data",
    [(X_GOOD,), (X_GOOD, Y_GOOD, Y_GOOD), X_GOOD],
    ids=["one-item", "three-items", "bare-array"],
)
def test_validation_data_must_be_a_pair(validation_data: Any) -> None:
    model = classifier()
    call, opt = fit_with(model, validation_data=validation_data)
    refused(call, model, "validation_data", opt=opt)


def test_validation_data_is_checked_like_the_training_data() -> None:
    model = classifier()
    call, opt = fit_with(model, validation_data=(X_GOOD[:, :4], Y_GOOD))
    refused(call, model, "validation X has 4 features, the model expects 5", opt=opt)
    call, opt = fit_with(model, validation_data=(X_NAN, Y_GOOD))
    refused(call, model, "validation X", "NaN", opt=opt)
    call, opt = fit_with(model, validation_data=(X_GOOD, Y_GOOD + 1))
    refused(call, model, "validation y", "[0, 3)", opt=opt)
    call, opt = fit_with(model, validation_data=(X_GOOD, Y_GOOD[:7]))
    refused(call, model, "validation y", "7 rows", opt=opt)


# --------------------------------------------------------------------------------------------
# The check functions themselves
# --------------------------------------------------------------------------------------------


def test_check_functions_return_clean_arrays() -> None:
    X = check_x([[1, 2], [3, 4]], 2)
    assert X.shape == (2, 2)
    y = check_y(np.array([[1.0], [0.0]]), 2, gpunn.SoftmaxCrossEntropy(), 2)
    assert y.shape == (2,) and y.dtype == np.int64
    assert check_batch_size(None) is None
    assert check_batch_size(7) == 7


def test_the_largest_float32_number_itself_is_accepted_for_a_float32_model() -> None:
    """Values up to the largest finite float32 convert without becoming inf; only larger
    ones are refused. Data already in the model's dtype (or narrower) needs no range check,
    and without a dtype no limit applies (and nothing warns)."""
    biggest = float(np.finfo(np.float32).max)
    X = np.full((2, 2), biggest, dtype=np.float64)
    assert check_x(X, 2, dtype="float32").dtype == np.float64
    with pytest.raises(ValueError, match="beyond"):
        check_x(np.nextafter(X, np.inf), 2, dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_x(np.full((2, 2), 1e300), 2) is not None
        assert check_x(np.full((2, 2), 1e300), 2, dtype="float64") is not None


def test_regression_targets_of_several_outputs_and_targets_without_a_loss() -> None:
    y = np.arange(N * K, dtype=np.float64).reshape(N, K)
    np.testing.assert_array_equal(check_y(y, N, gpunn.MeanSquaredError(), K), y)
    with pytest.raises(ValueError, match=rf"\({N}, {K}\)"):
        check_y(y[:, :1], N, gpunn.MeanSquaredError(), K)
    labels = np.arange(N) % K  # no loss given: only the generic checks apply
    np.testing.assert_array_equal(check_y(labels, N, None, K), labels)


def test_ragged_targets_are_not_a_numeric_array() -> None:
    with pytest.raises(ValueError, match="y must be a numeric array"):
        check_y([[0, 1], [2]], 2, gpunn.SoftmaxCrossEntropy(), 3)


def test_binary_labels_may_come_as_a_column() -> None:
    column = (np.arange(N) % 2).reshape(N, 1)
    y = check_y(column, N, gpunn.BinaryCrossEntropy(), 1)
    assert y.shape == (N,)
    np.testing.assert_array_equal(y, column[:, 0])
    with pytest.raises(ValueError, match=r"shape \(N,\), found shape \(10, 2\)"):
        check_y(np.zeros((N, 2)), N, gpunn.BinaryCrossEntropy(), 1)


def test_a_batch_size_of_1_is_allowed() -> None:
    assert check_batch_size(1) == 1
    call, _ = fit_with(classifier(), batch_size=1)
    assert len(call().epoch) == 2


def test_wrong_binary_labels_are_listed_up_to_five_from_the_first_thousand() -> None:
    """The message names a few wrong values (five at most, sorted) found among the first
    thousand wrong labels, so that a huge array costs no more than a small one to report."""
    many = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0])
    with pytest.raises(ValueError, match=r"7 other value\(s\) such as 3, 4, 5, 6, 7$"):
        check_y(many, 7, gpunn.BinaryCrossEntropy(), 1)
    late = np.concatenate([np.full(1000, 5.0), [2.0]])
    with pytest.raises(ValueError, match=r"1001 other value\(s\) such as 5$"):
        check_y(late, 1001, gpunn.BinaryCrossEntropy(), 1)


def test_check_x_without_a_shape_wants_2d_by_default() -> None:
    """With no sample shape known yet, X must be (N, features) unless another rank is given."""
    assert check_x(np.zeros((3, 4)), None).shape == (3, 4)
    with pytest.raises(ValueError, match="2-D"):
        check_x(np.zeros((3, 4, 5)), None)
    assert check_x(np.zeros((3, 4, 5)), None, rank=2).shape == (3, 4, 5)


def test_check_x_names_a_sample_shape_that_differs_from_the_model_s() -> None:
    with pytest.raises(
        ValueError, match=r"X has samples of shape \(1, 4, 4\), the model expects \(1, 5, 5\)"
    ):
        check_x(np.zeros((3, 1, 4, 4)), (1, 5, 5))
    assert check_x(np.zeros((3, 1, 5, 5)), (1, 5, 5)).shape == (3, 1, 5, 5)


@pytest.mark.parametrize(
    ("shape", "X", "rank", "message"),
    [
        (
            None,
            np.zeros(3),
            None,
            r"^X must have a sample axis and at least one more, found shape \(3,\)$",
        ),
        (
            (4,),
            np.zeros((3, 2, 2)),
            1,
            r"^X must be 2-D \(samples, features\), found shape \(3, 2, 2\)$",
        ),
        (
            (1, 2, 2),
            np.zeros((3, 4)),
            3,
            r"^X must be 4-D \(samples, channels, height, width\), found shape \(3, 4\): "
            r"reshape it with X\.reshape\(-1, 1, 2, 2\)$",
        ),
        (
            (1, 2, 2),
            np.zeros((3, 5)),
            3,
            r"^X must be 4-D \(samples, channels, height, width\), found shape \(3, 5\)$",
        ),
        (
            (2, 2),
            np.zeros((3, 2, 2, 1)),
            2,
            r"^X must be 3-D \(samples, 2 axes\), found shape \(3, 2, 2, 1\)$",
        ),
        (
            None,
            np.zeros((3, 4)),
            3,
            r"^X must be 4-D \(samples, channels, height, width\), found shape \(3, 4\)$",
        ),
    ],
)
def test_check_x_says_which_axes_a_sample_needs(
    shape: tuple[int, ...] | None, X: np.ndarray, rank: int | None, message: str
) -> None:
    """The message names the axes wanted, and offers the reshape when a flat X holds exactly
    the model's sample size."""
    with pytest.raises(ValueError, match=message):
        check_x(X, shape, rank=rank)
    if rank is None:
        assert check_x(np.zeros((3, 1)), None, rank=None).shape == (3, 1)  # 2-D is enough
