"""Tests for gpunn.training: fit/evaluate/predict, batch order, device-resident data and Dropout."""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import gpunn
from gpunn import backend as backend_module
from gpunn.errors import NonFiniteLossError
from gpunn.training import loop as training
from gpunn.training.callbacks import Callback
from gpunn.training.distributed import SingleProcess

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

N, D, C = 50, 3, 3  # samples, features, classes of the small problem used throughout


def make_data(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X float64 (n, 3) and class ids (n,) in [0, 3) that a small network can partly learn."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D))
    y = (np.digitize(X[:, 0] + 0.5 * X[:, 1], [-0.5, 0.5])).astype(np.int64)
    return X, y


def make_model(backend: Any = "numpy", seed: int = 0, dtype: str = "float64") -> gpunn.Sequential:
    return gpunn.Sequential(
        [gpunn.Dense(D, 8), gpunn.Tanh(), gpunn.Dense(8, C)],
        backend=backend,
        dtype=dtype,
        seed=seed,
    )


def host(model: gpunn.Sequential) -> np.ndarray:
    """A host copy of all the model's parameters."""
    return model.backend.to_numpy(model.flat_params).copy()


def reference_logits(params: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Dense -> Tanh -> Dense in plain NumPy (an oracle independent of gpunn's layers)."""
    return np.tanh(X @ params["0.W"] + params["0.b"]) @ params["2.W"] + params["2.b"]


def reference_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


class Recorder(Callback):
    """Keeps a host copy of the weights at the end of every epoch (epoch -> flat params)."""

    def __init__(self) -> None:
        self.weights: dict[int, np.ndarray] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.weights[epoch] = host(self.model)


def fit_small(model: gpunn.Sequential, X: Any = None, y: Any = None, **kwargs: Any) -> Any:
    if X is None:
        X, y = make_data()
    options: dict[str, Any] = {
        "loss": gpunn.SoftmaxCrossEntropy(),
        "optimizer": gpunn.SGD(0.1, momentum=0.9),
        "epochs": 3,
        "batch_size": 8,
        "verbose": 0,
    }
    options.update(kwargs)
    return model.fit(X, y, **options)


def manual_train(
    model: gpunn.Sequential,
    X: np.ndarray,
    y: np.ndarray,
    orders: list[np.ndarray],
    batch_size: int,
    optimizer: gpunn.Optimizer,
) -> None:
    """The training loop written out by hand: one epoch per order, batches in that order."""
    loss = gpunn.SoftmaxCrossEntropy()
    for order in orders:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss.forward(model.forward(X[idx]), model.backend.asarray(y[idx]))
            model.backward(loss.backward())
            optimizer.step(model)


# --------------------------------------------------------------------------------------------
# fit: the History
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("on_device", [False, True], ids=["host-arrays", "backend-arrays"])
def test_fit_returns_a_history_of_per_epoch_metrics(
    backend: gpunn.Backend, on_device: bool
) -> None:
    X, y = make_data()
    Xv, yv = make_data(20, seed=1)
    if on_device:
        X, y, Xv, yv = (backend.asarray(a) for a in (X, y, Xv, yv))
    model = make_model(backend)
    optimizer = gpunn.SGD(0.1, momentum=0.9)
    history = fit_small(model, X, y, epochs=4, optimizer=optimizer, validation_data=(Xv, yv))

    assert isinstance(history, training.History)
    assert history.epoch == [1, 2, 3, 4]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
        assert len(history[key]) == 4, key
        assert all(isinstance(v, float) and math.isfinite(v) for v in history[key]), key
    assert len(history.history["samples_per_second"]) == 4
    for accuracies, n in ((history["accuracy"], N), (history["val_accuracy"], 20)):
        for acc in accuracies:  # a share of correctly classified samples
            assert 0.0 <= acc <= 1.0
            assert acc * n == pytest.approx(round(acc * n), abs=1e-9)
    assert all(s > 0 for s in history["epoch_seconds"])
    for seconds, rate in zip(history["epoch_seconds"], history["samples_per_second"], strict=True):
        assert rate == pytest.approx(N / seconds, rel=1e-9)
    assert history["loss"][-1] < history["loss"][0]  # it learns
    # the validation metrics are those of evaluate() on the final weights
    final = model.evaluate(Xv, yv, loss=gpunn.SoftmaxCrossEntropy())
    assert history["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-12)
    assert history["val_accuracy"][-1] == pytest.approx(final["accuracy"], rel=1e-12)


def test_history_without_validation_has_no_val_metrics() -> None:
    history = fit_small(make_model(), epochs=2)
    assert "val_loss" not in history.history and "val_accuracy" not in history.history
    assert len(history["loss"]) == len(history["accuracy"]) == 2


def test_one_batch_epoch_loss_is_the_mean_loss_before_that_epochs_step() -> None:
    X, y = make_data()
    model = make_model()
    p0 = {k: v.copy() for k, v in model.state_dict().items()}
    snapshots: list[dict[str, np.ndarray]] = []

    class Snap(Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            snapshots.append({k: v.copy() for k, v in self.model.state_dict().items()})

    history = fit_small(model, X, y, epochs=3, batch_size=N, callbacks=[Snap()], shuffle=False)
    # epoch e's loss is the loss of the weights it starts from, over all N samples
    starts = [p0, *snapshots[:-1]]
    for e, params in enumerate(starts):
        logits = reference_logits(params, X)
        assert history["loss"][e] == pytest.approx(reference_cross_entropy(logits, y), rel=1e-12)
        assert history["accuracy"][e] == pytest.approx(np.mean(logits.argmax(1) == y), abs=1e-15)


def test_epoch_loss_weights_each_batch_by_its_size() -> None:
    """With lr 0 every epoch sees the same weights: its loss must be the plain mean over all N
    samples, although the batches (8, 8, ..., 2) differ in size."""
    X, y = make_data()
    model = make_model()
    logits = reference_logits(model.state_dict(), X)
    history = fit_small(model, X, y, optimizer=gpunn.SGD(0.0), batch_size=8, epochs=2)
    for value in history["loss"]:
        assert value == pytest.approx(reference_cross_entropy(logits, y), rel=1e-12)
    for value in history["accuracy"]:
        assert value == pytest.approx(np.mean(logits.argmax(1) == y), abs=1e-15)


def test_zero_epochs_changes_nothing() -> None:
    model = make_model()
    before = host(model)
    history = fit_small(model, epochs=0)
    assert history.epoch == [] and history.history == {}
    np.testing.assert_array_equal(host(model), before)


def test_history_has_keys_and_a_short_repr() -> None:
    X, y = make_data()
    history = fit_small(make_model(), epochs=3, validation_data=make_data(20, seed=1))
    assert list(history.keys()) == [
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "epoch_seconds",
        "samples_per_second",
    ]
    assert "val_loss" in history and "mse" not in history
    assert list(history) == list(history.keys())
    assert dict(history)["loss"] is history["loss"]  # a mapping of metric -> per-epoch values
    text = repr(history)
    last = {k: history[k][-1] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    assert text == (
        f"History(3 epochs [1-3], last: loss {last['loss']:.4f}, accuracy "
        f"{last['accuracy']:.4f}, val_loss {last['val_loss']:.4f}, val_accuracy "
        f"{last['val_accuracy']:.4f})"
    )
    assert len(text) < 120 and "[" + str(history["loss"][0]) not in text  # no lists
    assert repr(fit_small(make_model(), epochs=1)).startswith("History(1 epoch [1], last: loss ")
    assert repr(fit_small(make_model(), epochs=0)) == "History(0 epochs)"
    resumed = fit_small(make_model(), epochs=2, initial_epoch=3)
    assert repr(resumed).startswith("History(2 epochs [4-5], ")


# --------------------------------------------------------------------------------------------
# fit: validation_split
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "held_out"),
    [(0.2, 10), (0.1, 5), (0.5, 25), (0.02, 1), (0.05, 3), (np.float32(0.3), 15)],
)
def test_validation_split_holds_out_the_last_rows(fraction: float, held_out: int) -> None:
    """validation_split=f trains on the first N - round(f N) rows and validates on the rest,
    exactly as validation_data with those rows does (same weights, same metrics)."""
    X, y = make_data()
    cut = N - held_out  # the split is by position, before shuffling
    split = make_model()
    by_split = fit_small(split, X, y, validation_split=fraction)
    given = make_model()
    by_data = fit_small(given, X[:cut], y[:cut], validation_data=(X[cut:], y[cut:]))
    np.testing.assert_array_equal(host(split), host(given))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert by_split[key] == by_data[key], key
    assert by_split["samples_per_second"][0] == pytest.approx(
        cut / by_split["epoch_seconds"][0], rel=1e-9
    )


def test_validation_split_and_validation_data_are_exclusive() -> None:
    X, y = make_data()
    model = make_model()
    before = host(model)
    with pytest.raises(ValueError, match="either validation_data or validation_split"):
        fit_small(model, X, y, validation_split=0.2, validation_data=(X, y))
    np.testing.assert_array_equal(host(model), before)


@pytest.mark.parametrize(
    ("fraction", "message"),
    [
        (0.0, "fraction in \\(0, 1\\)"),
        (1.0, "fraction in \\(0, 1\\)"),
        (-0.1, "fraction in \\(0, 1\\)"),
        ("0.2", "fraction in \\(0, 1\\)"),
        (True, "fraction in \\(0, 1\\)"),
        (0.005, "of 50 samples leaves no validation sample"),
        (0.995, "of 50 samples leaves no training sample"),
    ],
)
def test_bad_validation_split_is_refused_before_training(fraction: Any, message: str) -> None:
    X, y = make_data()
    model = make_model()
    before = host(model)
    with pytest.raises(ValueError, match=message):
        fit_small(model, X, y, validation_split=fraction)
    np.testing.assert_array_equal(host(model), before)


def test_validation_split_of_rows_sorted_by_class_is_refused() -> None:
    """Sorted rows put whole classes in the last fraction: the model could never learn them,
    and the validation accuracy would mean nothing. Refused, with what to do instead."""
    X, y = make_data()
    order = np.argsort(y, kind="stable")
    model = make_model()
    before = host(model)
    with pytest.raises(ValueError, match="last 10 rows as they are, and the rows are sorted"):
        fit_small(model, X[order], y[order], validation_split=0.2)
    with pytest.raises(ValueError, match="sorted by class: shuffle X and y first"):
        fit_small(model, X[order[::-1]], y[order[::-1]], validation_split=0.2)
    tail = np.where(np.arange(N) < N - 10, np.arange(N) % 2, 2)  # 0 1 0 1 ... 2 2 2
    with pytest.raises(ValueError, match="holds class\\(es\\) 2 that the training rows lack"):
        fit_small(model, X, tail, validation_split=0.2)
    np.testing.assert_array_equal(host(model), before)
    fit_small(model, X, y, validation_split=0.2)  # the same rows unsorted are fine
    assert not np.array_equal(host(model), before)


def test_epoch_seconds_come_from_the_clock_around_the_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """epoch_seconds is the clock's advance over the epoch, samples_per_second N divided by
    it; a clock too coarse to move during an epoch gives an infinite rate, not an error."""
    ticks = itertools.count(start=100.0, step=0.25)  # each read of the clock: 0.25 s later
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(ticks))
    history = fit_small(make_model(), epochs=2)
    assert history["epoch_seconds"] == [0.25, 0.25]
    assert history["samples_per_second"] == [N / 0.25, N / 0.25]
    monkeypatch.setattr(training.time, "perf_counter", lambda: 7.0)
    history = fit_small(make_model(), epochs=1)
    assert history["epoch_seconds"] == [0.0] and history["samples_per_second"] == [math.inf]


# --------------------------------------------------------------------------------------------
# fit on one rank of a data-parallel run (a stand-in communicator; real MPI jobs are in
# test_distributed.py)
# --------------------------------------------------------------------------------------------


class LoneRank(SingleProcess):
    """Rank ``rank`` of a job of ``size`` ranks whose partners add nothing: every collective
    leaves the buffer as it is. What fit does on this one rank can then be checked alone."""

    def __init__(self, rank: int, size: int) -> None:
        super().__init__()
        self.rank, self.size = rank, size


def test_only_rank_0_prints_progress(capsys: pytest.CaptureFixture[str]) -> None:
    for rank, prints in ((0, True), (1, False)):
        fit_small(make_model(), epochs=1, verbose=1, comm=LoneRank(rank, 2))
        assert ("epoch 1/1" in capsys.readouterr().out) is prints


def test_a_rank_s_shard_gradient_counts_by_its_share_of_the_global_batch() -> None:
    """Rank 0 of 2 takes rows 0-1 of each 4-row batch; its mean gradient over them is scaled
    by 2/4 before the all-reduce (to which, here, no other rank adds). With plain SGD that is
    training on those two rows at half the learning rate, bit for bit."""
    X, y = make_data(4)
    ranked, alone = make_model(), make_model()
    common = {"epochs": 3, "shuffle": False}
    fit_small(ranked, X, y, batch_size=4, optimizer=gpunn.SGD(0.2), comm=LoneRank(0, 2), **common)
    fit_small(alone, X[:2], y[:2], batch_size=2, optimizer=gpunn.SGD(0.1), **common)
    np.testing.assert_array_equal(host(ranked), host(alone))


def test_a_rank_with_an_empty_shard_adds_zero_gradients() -> None:
    """A one-row batch over 2 ranks leaves rank 1 no rows: it must add zeros to the
    all-reduce, not the gradients left in its buffer before (scaling them by its share, 0,
    is not enough: a stale NaN stays NaN)."""
    X, y = make_data(1)
    for stale in (1.0, np.nan):
        model = make_model()
        model.flat_grads[...] = stale
        before = host(model)
        optimizer = gpunn.SGD(0.1)
        fit_small(model, X, y, epochs=2, batch_size=1, optimizer=optimizer, comm=LoneRank(1, 2))
        np.testing.assert_array_equal(host(model), before)


# --------------------------------------------------------------------------------------------
# evaluate and predict
# --------------------------------------------------------------------------------------------


def test_evaluate_gives_loss_and_accuracy_without_changing_weights(backend: gpunn.Backend) -> None:
    X, y = make_data()
    model = make_model(backend)
    fit_small(model, epochs=2)
    before = host(model)
    result = model.evaluate(backend.asarray(X), backend.asarray(y))  # default loss: softmax CE
    logits = reference_logits(model.state_dict(), X)
    assert set(result) == {"loss", "accuracy"}
    assert result["loss"] == pytest.approx(reference_cross_entropy(logits, y), rel=1e-12)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y), abs=1e-15)
    np.testing.assert_array_equal(host(model), before)


def test_evaluate_does_not_depend_on_its_inference_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = make_data()
    model = make_model()
    whole = model.evaluate(X, y)
    monkeypatch.setattr(training, "_predict_batch", lambda model: 7)  # 50 = 7 * 7 + 1
    sliced = model.evaluate(X, y)
    assert sliced["loss"] == pytest.approx(whole["loss"], rel=1e-12)
    assert sliced["accuracy"] == whole["accuracy"]


def test_evaluate_binary_and_regression_models() -> None:
    X, y = make_data()
    binary = gpunn.Sequential([gpunn.Dense(D, 1)], backend="numpy", dtype="float64", seed=0)
    labels = (y > 0).astype(np.int64)
    result = binary.evaluate(X, labels)  # default loss for one output: binary cross-entropy
    z = X @ binary.params["0.W"] + binary.params["0.b"]
    p = 1 / (1 + np.exp(-z[:, 0]))
    bce = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert result["loss"] == pytest.approx(bce, rel=1e-10)
    assert result["accuracy"] == pytest.approx(np.mean((z[:, 0] > 0) == labels), abs=1e-15)

    target = X.sum(axis=1)
    mse = binary.evaluate(X, target, loss=gpunn.MeanSquaredError())
    assert set(mse) == {"loss"}  # no accuracy for a regression loss
    assert mse["loss"] == pytest.approx(np.mean((z[:, 0] - target) ** 2), rel=1e-10)


def test_predict_gives_inference_outputs_on_the_backend(backend: gpunn.Backend) -> None:
    X, _ = make_data()
    model = make_model(backend)
    out = model.predict(X)
    assert isinstance(out, backend.xp.ndarray)
    assert out.shape == (N, C)
    expected = reference_logits(model.state_dict(), X)
    np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=1e-12, atol=1e-12)
    for batch_size in (1, 7, N, 1000):
        batched = backend.to_numpy(model.predict(backend.asarray(X), batch_size=batch_size))
        np.testing.assert_allclose(batched, expected, rtol=1e-12, atol=1e-12)


def test_predict_returns_a_new_array_each_call() -> None:
    X, _ = make_data()
    model = make_model()
    first = model.predict(X[:10])
    kept = first.copy()
    model.predict(X[10:20])
    model.forward(X[20:30])
    np.testing.assert_array_equal(first, kept)


def test_predict_proba_is_the_softmax_of_the_logits(backend: gpunn.Backend) -> None:
    X, y = make_data()
    model = make_model(backend)
    fit_small(model, X, y, epochs=2)
    proba = model.predict_proba(backend.asarray(X))
    assert isinstance(proba, backend.xp.ndarray) and proba.shape == (N, C)
    logits = reference_logits(model.state_dict(), X)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    got = backend.to_numpy(proba)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_array_equal(got.argmax(axis=1), logits.argmax(axis=1))
    explicit = model.predict_proba(X, loss=gpunn.SoftmaxCrossEntropy(), batch_size=7)
    np.testing.assert_allclose(backend.to_numpy(explicit), expected, rtol=1e-12, atol=1e-15)


def test_predict_proba_of_a_binary_model_is_the_sigmoid_of_its_output() -> None:
    X, y = make_data()
    model = gpunn.Sequential([gpunn.Dense(D, 1)], backend="numpy", dtype="float64", seed=0)
    model.fit(X, (y > 0).astype(np.int64), loss=gpunn.BinaryCrossEntropy(),
              optimizer=gpunn.SGD(0.1), epochs=2, batch_size=8, verbose=0)  # fmt: skip
    z = X @ model.params["0.W"] + model.params["0.b"]
    expected = 1 / (1 + np.exp(-z))  # (N, 1): P(label 1)
    for loss in (None, gpunn.BinaryCrossEntropy()):
        proba = model.predict_proba(X, loss=loss)
        assert proba.shape == (N, 1)
        np.testing.assert_allclose(proba, expected, rtol=1e-12)
    np.testing.assert_array_equal(proba[:, 0] > 0.5, model.predict(X)[:, 0] > 0)


def test_predict_proba_refuses_a_regression_loss() -> None:
    X, _ = make_data()
    model = make_model()
    with pytest.raises(ValueError, match="MeanSquaredError predicts values, not class prob"):
        model.predict_proba(X, loss=gpunn.MeanSquaredError())
    with pytest.raises(ValueError, match="loss must be a gpunn loss"):
        model.predict_proba(X, loss="softmax")
    with pytest.raises(ValueError, match="X has 2 features, the model expects 3"):
        model.predict_proba(X[:, :2])


# --------------------------------------------------------------------------------------------
# Batch order: a host generator seeded by `seed`
# --------------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_history_and_weights(backend: gpunn.Backend) -> None:
    runs = []
    for _ in range(2):
        model = make_model(backend)
        history = fit_small(model, seed=5)
        runs.append((history, host(model)))
    (h1, w1), (h2, w2) = runs
    for key in ("loss", "accuracy", "lr"):
        assert h1[key] == h2[key], key
    np.testing.assert_array_equal(w1, w2)


def test_different_seeds_give_different_batch_orders() -> None:
    weights = []
    for seed in (1, 2):
        model = make_model()
        fit_small(model, seed=seed)
        weights.append(host(model))
    assert not np.array_equal(weights[0], weights[1])


def test_default_seed_is_the_models_seed() -> None:
    a, b = make_model(seed=4), make_model(seed=4)
    fit_small(a)
    fit_small(b, seed=4)
    np.testing.assert_array_equal(host(a), host(b))


def test_batch_order_is_a_permutation_from_a_host_generator_seeded_per_epoch() -> None:
    X, y = make_data()
    model = make_model()
    fit_small(model, X, y, seed=11, epochs=3, batch_size=8, optimizer=gpunn.SGD(0.1, momentum=0.9))

    # as documented in fit: epoch e is shuffled by numpy.random.default_rng((seed, e))
    orders = [np.random.default_rng((11, e)).permutation(N) for e in (1, 2, 3)]
    by_hand = make_model()
    manual_train(by_hand, X, y, orders, 8, gpunn.SGD(0.1, momentum=0.9))
    np.testing.assert_array_equal(host(model), host(by_hand))

    # the check can tell orders apart: the same batches in another order end elsewhere
    other = make_model()
    manual_train(other, X, y, [o[::-1] for o in orders], 8, gpunn.SGD(0.1, momentum=0.9))
    assert not np.array_equal(host(model), host(other))


def test_shuffle_false_takes_samples_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = make_data()
    model = make_model()
    seen: list[np.ndarray] = []
    original = training.DeviceData.batches

    def spy(self: training.DeviceData, order: Any, batch_size: int) -> Any:
        seen.append(np.array(order))
        return original(self, order, batch_size)

    monkeypatch.setattr(training.DeviceData, "batches", spy)
    fit_small(model, X, y, shuffle=False, epochs=2, seed=3)
    assert len(seen) == 2
    for order in seen:
        np.testing.assert_array_equal(order, np.arange(N))

    by_hand = make_model()
    manual_train(by_hand, X, y, [np.arange(N)] * 2, 8, gpunn.SGD(0.1, momentum=0.9))
    np.testing.assert_array_equal(host(model), host(by_hand))


def test_a_run_resumed_with_initial_epoch_continues_the_uninterrupted_run() -> None:
    X, y = make_data()
    whole = make_model()
    fit_small(whole, X, y, seed=2, epochs=3, optimizer=gpunn.SGD(0.1, momentum=0.9))

    resumed = make_model()
    optimizer = gpunn.SGD(0.1, momentum=0.9)
    fit_small(resumed, X, y, seed=2, epochs=2, optimizer=optimizer)
    history = fit_small(resumed, X, y, seed=2, epochs=1, optimizer=optimizer, initial_epoch=2)
    assert history.epoch == [3]
    np.testing.assert_array_equal(host(resumed), host(whole))


# --------------------------------------------------------------------------------------------
# The data moves to the device once; chunks when it does not fit
# --------------------------------------------------------------------------------------------


def count_calls(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str) -> list[Any]:
    """Replace obj.name with a wrapper that records its first argument; returns the record."""
    calls: list[Any] = []
    original = getattr(obj, name)

    def wrapper(a: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(a)
        return original(a, *args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


def test_the_dataset_is_moved_to_the_device_once(
    backend: gpunn.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y = make_data()
    model = make_model(backend)
    moved = count_calls(monkeypatch, backend, "asarray")
    fit_small(model, X, y, epochs=3, batch_size=8)
    whole_x = [a for a in moved if getattr(a, "shape", None) == (N, D)]
    whole_y = [a for a in moved if getattr(a, "shape", None) == (N,) and a.dtype.kind in "iu"]
    assert len(whole_x) == 1  # X once, not per epoch or per batch
    # y once, plus one (N,) index order per epoch (host ints, 8 bytes a sample)
    assert len(whole_y) == 1 + 3


def fits_in(backend: gpunn.Backend, monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    """Make the device report just enough free memory for `rows` rows of X (float64) + label."""
    row_bytes = D * 8 + 8
    free = math.ceil(rows * row_bytes / training.DEVICE_MEMORY_SHARE)
    monkeypatch.setattr(backend, "free_memory", lambda: free)


@pytest.mark.parametrize("rows", [16, 40, 37, 1], ids=lambda r: f"chunk{r}")
def test_chunked_run_matches_the_all_at_once_run(
    backend: gpunn.Backend, monkeypatch: pytest.MonkeyPatch, rows: int
) -> None:
    """Data that does not fit is streamed in chunks, and training is the same: the same
    batches, in the same order, whatever the chunk size (batch size 8, N = 50).

    On NumPy both runs make the same BLAS calls on equal float64 batches and agree bit for
    bit (the BLAS NumPy ships gives the same bits here wherever a batch starts: this test has
    always held on it, so a difference means different batches). On a GPU they agree to
    rounding only: cuBLAS chooses its GEMM kernel by the operands' memory alignment too (a
    chunk's batch is a view starting anywhere in the chunk, a gathered batch a fresh allocation),
    and two kernels may sum in different orders.
    """
    X, y = make_data()
    reference = make_model(backend)
    ref_history = fit_small(reference, X, y, seed=7, epochs=2, batch_size=8)

    fits_in(backend, monkeypatch, rows)
    moved = count_calls(monkeypatch, backend, "asarray")
    model = make_model(backend)
    history = fit_small(model, X, y, seed=7, epochs=2, batch_size=8)

    assert not any(getattr(a, "shape", (0,))[0] == N and a.ndim == 2 for a in moved)
    if backend.is_gpu:  # (the emulation would pass bit for bit too; it is held to the GPU's bar)
        np.testing.assert_allclose(host(model), host(reference), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(history["loss"], ref_history["loss"], rtol=1e-9)
    else:
        np.testing.assert_array_equal(host(model), host(reference))
        assert history["loss"] == ref_history["loss"]
    assert history["accuracy"] == ref_history["accuracy"]


@pytest.mark.parametrize(
    ("free", "batch_size", "chunks"),
    [
        (2 * N * (D * 8 + 8), 8, [N]),  # half the free memory: it fits, moved once
        (2 * N * (D * 8 + 8) - 1, 8, [48, 2]),  # a byte less: 49 rows fit, 6 whole batches
        (2 * 37 * (D * 8 + 8), 8, [32, 18]),  # 37 rows fit: chunks of 4 whole batches
        (2 * 16 * (D * 8 + 8), 5, [15, 15, 15, 5]),
        (2 * 3 * (D * 8 + 8), 8, [8] * 6 + [2]),  # less than a batch fits: a batch at a time
        (0, 1, [1] * N),  # nothing fits: one row at a time
    ],
    ids=["fits", "just-too-big", "37-rows", "16-rows-batch-5", "3-rows", "nothing"],
)
def test_data_fits_under_half_the_free_memory_else_moves_in_chunks_of_whole_batches(
    monkeypatch: pytest.MonkeyPatch, free: int, batch_size: int, chunks: list[int]
) -> None:
    """A row of X costs D * itemsize + 8 bytes (its int64 label). The data set goes to the
    device whole when it takes at most half the free memory; otherwise each chunk holds as
    many whole batches as fit in that half (at least one batch)."""
    backend = gpunn.get_backend("numpy")
    monkeypatch.setattr(backend, "free_memory", lambda: free)
    X, y = make_data()
    moved = count_calls(monkeypatch, backend, "asarray")
    data = training.DeviceData(backend, X, y, np.dtype("float64"), np.int64)
    order = np.random.default_rng(0).permutation(N)
    batches = list(data.batches(order, batch_size))
    assert [a.shape[0] for a in moved if a.ndim == 2] == chunks  # the transfers of X
    assert [len(xb) for xb, _ in batches] == [
        len(range(N)[i : i + batch_size]) for i in range(0, N, batch_size)
    ]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in batches]), X[order])
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches]), y[order])


# --------------------------------------------------------------------------------------------
# No host/device synchronisation per batch
# --------------------------------------------------------------------------------------------


def test_one_read_to_the_host_per_epoch(
    backend: gpunn.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(backend)
    reads = count_calls(monkeypatch, backend, "to_numpy")
    fit_small(model, epochs=4, batch_size=8)  # 7 batches an epoch
    assert len(reads) == 4


_GUARD = {"on": False, "reads": 0}


class GuardedArray(np.ndarray):
    """A NumPy array that plays a device array: converting it to a Python number inside an
    epoch (float(), int(), bool(), .item(), .tolist()) fails the test."""

    def _host_read(self) -> None:
        if _GUARD["on"]:
            raise AssertionError("a device value was read on the host inside an epoch")

    def __float__(self) -> float:
        self._host_read()
        return float(self.view(np.ndarray))

    def __int__(self) -> int:
        self._host_read()
        return int(self.view(np.ndarray))

    def __index__(self) -> int:
        self._host_read()
        return self.view(np.ndarray).__index__()

    def __bool__(self) -> bool:
        self._host_read()
        return bool(self.view(np.ndarray))

    def __setitem__(self, key: Any, value: Any) -> None:
        # a device-to-device copy (NumPy itself would take a 0-d value through __float__)
        if isinstance(value, GuardedArray):
            value = value.view(np.ndarray)
        super().__setitem__(key, value)

    def item(self, *args: Any) -> Any:
        self._host_read()
        return self.view(np.ndarray).item(*args)

    def tolist(self) -> Any:
        self._host_read()
        return self.view(np.ndarray).tolist()


# gpunn.backend.namespace() maps arrays of a "cupy" module to the device array module
GuardedArray.__module__ = "cupy._guarded_for_tests"


def _guard(result: Any) -> Any:
    if type(result) is np.ndarray:
        return result.view(GuardedArray)
    if isinstance(result, tuple):
        return tuple(_guard(r) for r in result)
    return result


class GuardedXP:
    """numpy, but every array it makes is a GuardedArray."""

    def __getattr__(self, name: str) -> Any:
        attr = getattr(np, name)
        if callable(attr) and not isinstance(attr, type):
            return lambda *args, **kwargs: _guard(attr(*args, **kwargs))
        return attr


class GuardedBackend(gpunn.Backend):
    """A NumPy-based backend whose arrays refuse host reads while an epoch runs; ``to_numpy``
    (the sanctioned transfer) is counted and ends the guarded stretch."""

    def __init__(self) -> None:
        super().__init__("numpy", None, GuardedXP())

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        return np.asarray(a, dtype=dtype).view(GuardedArray)

    def to_numpy(self, a: Any) -> np.ndarray:
        _GUARD["on"] = False
        _GUARD["reads"] += 1
        return np.array(np.asarray(a))


class GuardEpochs(Callback):
    def on_epoch_begin(self, epoch: int) -> None:
        _GUARD["on"] = True


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> Callable[..., gpunn.Sequential]:
    monkeypatch.setattr(backend_module, "_import_cupy", GuardedXP)
    monkeypatch.setitem(_GUARD, "on", False)
    monkeypatch.setitem(_GUARD, "reads", 0)

    def make(*layers: gpunn.Layer) -> gpunn.Sequential:
        layers = layers or (gpunn.Dense(D, 8), gpunn.Tanh(), gpunn.Dense(8, C))
        return gpunn.Sequential(list(layers), backend=GuardedBackend(), dtype="float64", seed=0)

    return make


@pytest.mark.parametrize(
    ("layers", "loss", "optimizer"),
    [
        ("tanh", gpunn.SoftmaxCrossEntropy, lambda: gpunn.SGD(0.1, momentum=0.9)),
        ("dropout", gpunn.SoftmaxCrossEntropy, lambda: gpunn.Adam(1e-2)),
        ("binary", gpunn.BinaryCrossEntropy, lambda: gpunn.AdamW(1e-2)),
    ],
)
def test_no_device_value_is_read_on_the_host_during_an_epoch(
    guarded: Callable[..., gpunn.Sequential], layers: str, loss: Any, optimizer: Any
) -> None:
    X, y = make_data()
    if layers == "tanh":
        model = guarded()
    elif layers == "dropout":
        model = guarded(gpunn.Dense(D, 8), gpunn.ReLU(), gpunn.Dropout(0.3), gpunn.Dense(8, C))
    else:
        model = guarded(gpunn.Dense(D, 4), gpunn.Sigmoid(), gpunn.Dense(4, 1))
        y = (y > 0).astype(np.int64)
    _GUARD["reads"] = 0  # building the model moved its initial weights
    history = model.fit(
        X,
        y,
        loss=loss(),
        optimizer=optimizer(),
        epochs=3,
        batch_size=8,
        verbose=0,
        callbacks=[GuardEpochs()],
    )
    assert _GUARD["reads"] == 3  # exactly the one read per epoch
    assert len(history["loss"]) == 3 and all(math.isfinite(v) for v in history["loss"])


def test_the_guard_catches_a_host_read(guarded: Callable[..., gpunn.Sequential]) -> None:
    """The guarded run above proves something: a float() of a device value is caught."""
    model = guarded()

    class ReadsLoss(gpunn.SoftmaxCrossEntropy):
        def forward(self, logits: Any, y: Any) -> Any:
            value = super().forward(logits, y)
            float(value)  # a per-batch synchronisation
            return value

    with pytest.raises(AssertionError, match="read on the host"):
        fit_small(model, loss=ReadsLoss(), callbacks=[GuardEpochs()])


# --------------------------------------------------------------------------------------------
# Non-finite loss
# --------------------------------------------------------------------------------------------


def test_a_huge_learning_rate_raises_non_finite_loss_error() -> None:
    X, y = make_data(100)
    model = gpunn.Sequential(
        [gpunn.Dense(D, 8), gpunn.ReLU(), gpunn.Dense(8, C)], backend="numpy", seed=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(NonFiniteLossError) as info:
            model.fit(
                X,
                y,
                loss=gpunn.SoftmaxCrossEntropy(),
                optimizer=gpunn.SGD(1e30),
                epochs=3,
                batch_size=10,
                shuffle=False,
                verbose=0,
            )
    err = info.value
    assert isinstance(err, ArithmeticError)
    # batch 1 is computed with the initial weights; its step with lr 1e30 breaks batch 2
    assert (err.epoch, err.batch) == (1, 2)
    assert "epoch 1" in str(err) and "batch 2" in str(err)
    assert not math.isfinite(err.value)


def test_non_finite_loss_names_the_first_bad_batch_of_the_epoch() -> None:
    X, y = make_data()

    class Poison(Callback):
        def on_epoch_begin(self, epoch: int) -> None:
            self.epoch = epoch

        def on_batch_begin(self, batch: int) -> None:
            if self.epoch == 2 and batch == 4:
                self.model.flat_params[...] = np.nan

    with pytest.raises(NonFiniteLossError) as info:
        fit_small(make_model(), X, y, epochs=3, callbacks=[Poison()])
    assert (info.value.epoch, info.value.batch) == (2, 5)  # batch numbers count from 1
    assert "epoch 2, batch 5" in str(info.value)


# --------------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_is_inverted_dropout(backend: gpunn.Backend, p: float) -> None:
    model = gpunn.Sequential([gpunn.Dropout(p)], backend=backend, dtype="float64", seed=0)
    x = np.full((400, 250), 3.0)  # 100,000 elements
    y = backend.to_numpy(model.forward(backend.asarray(x), training=True)).copy()
    zero = y == 0
    assert zero.mean() == pytest.approx(p, abs=0.01)
    np.testing.assert_allclose(y[~zero], 3.0 / (1 - p), rtol=1e-12)  # survivors scaled up
    assert y.mean() == pytest.approx(3.0, rel=0.03)  # E[y] = x
    # backward passes the gradient through the same mask
    dx = backend.to_numpy(model.backward(backend.asarray(np.ones_like(x)), input_grad=True))
    np.testing.assert_array_equal(dx == 0, zero)
    np.testing.assert_allclose(dx[~zero], 1 / (1 - p), rtol=1e-12)
    # a new mask each training step
    y2 = backend.to_numpy(model.forward(backend.asarray(x), training=True))
    assert not np.array_equal(y2 == 0, zero)


def test_dropout_is_the_identity_in_predict_and_evaluate(backend: gpunn.Backend) -> None:
    X, y = make_data()
    dense = [gpunn.Dense(D, 16), gpunn.ReLU(), gpunn.Dense(16, C)]
    with_dropout = gpunn.Sequential(
        [dense[0], dense[1], gpunn.Dropout(0.5), dense[2]], backend=backend, dtype="float64"
    )
    plain = gpunn.Sequential(
        [gpunn.Dense(D, 16), gpunn.ReLU(), gpunn.Dense(16, C)], backend=backend, dtype="float64"
    )
    plain.load_state_dict(
        {
            "0.W": with_dropout.params["0.W"],
            "0.b": with_dropout.params["0.b"],
            "2.W": with_dropout.params["3.W"],
            "2.b": with_dropout.params["3.b"],
        }
    )
    np.testing.assert_array_equal(
        backend.to_numpy(with_dropout.predict(X)), backend.to_numpy(plain.predict(X))
    )
    assert with_dropout.evaluate(X, y) == plain.evaluate(X, y)
    assert with_dropout.evaluate(X, y) == with_dropout.evaluate(X, y)  # no randomness


def test_fit_with_dropout_learns() -> None:
    X, y = make_data(200)
    model = gpunn.Sequential(
        [gpunn.Dense(D, 32), gpunn.ReLU(), gpunn.Dropout(0.2), gpunn.Dense(32, C)],
        backend="numpy",
        dtype="float64",
        seed=0,
    )
    before = model.evaluate(X, y)
    history = model.fit(
        X,
        y,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.Adam(1e-2),
        epochs=20,
        batch_size=16,
        verbose=0,
    )
    after = model.evaluate(X, y)
    assert all(math.isfinite(v) for v in history["loss"])
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] > 0.85


def test_fit_defaults_are_10_epochs_of_batches_of_64_with_progress_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """fit's documented defaults: 10 epochs, batches of 64 rows (130 rows: 64, 64, 2), and one
    progress line per epoch (verbose=1; stdout is not a terminal here)."""
    batches: list[int] = []

    class Count(Callback):
        def on_batch_begin(self, batch: int) -> None:
            batches.append(batch)

    X, y = make_data(130)
    training.fit(
        make_model(),
        X,
        y,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.SGD(0.1),
        callbacks=[Count()],
    )
    assert batches == [0, 1, 2] * 10
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and all(re.match(rf"epoch +{e}/10 ", x) for e, x in enumerate(lines, 1))


# --------------------------------------------------------------------------------------------
# What the mutation run found unpinned in fit (scripts/mutate.py, gpunn/training/loop.py)
# --------------------------------------------------------------------------------------------


def test_bad_validation_data_message_names_its_type_and_length() -> None:
    X, y = make_data()
    with pytest.raises(ValueError, match=r"a pair \(X_val, y_val\), found tuple of length 1$"):
        fit_small(make_model(), X, y, validation_data=(X,))
    with pytest.raises(ValueError, match=r"a pair \(X_val, y_val\), found ndarray$"):
        fit_small(make_model(), X, y, validation_data=X)


def test_callbacks_see_the_whole_number_of_steps_per_epoch() -> None:
    seen: list[Any] = []

    class Steps(Callback):
        def on_train_begin(self) -> None:
            seen.append(self.steps_per_epoch)

    fit_small(make_model(), batch_size=8, epochs=1, callbacks=[Steps()])  # 50 rows: 6 x 8 + 2
    assert seen == [7] and isinstance(seen[0], int)


def test_weights_broken_by_the_last_step_of_an_epoch_stop_training() -> None:
    """The loss of a step is computed before its update, so a last step that breaks the weights
    shows only in the epoch's weight checksum: it must stop training there."""

    class BreakLastStep(gpunn.SGD):
        calls = 0

        def step(self, model: gpunn.Sequential) -> None:
            super().step(model)
            BreakLastStep.calls += 1
            if BreakLastStep.calls == 7:  # the 7th and last step of epoch 1 (50 rows, batch 8)
                model.flat_params[0] = np.inf

    with pytest.raises(NonFiniteLossError) as info:
        fit_small(make_model(), optimizer=BreakLastStep(0.1), batch_size=8, epochs=2)
    assert info.value.epoch == 1 and info.value.batch == 7
    assert "weights became non-finite in epoch 1" in str(info.value)


def test_non_finite_loss_reports_the_first_bad_batchs_own_value() -> None:
    """Only batch 4 of epoch 1 is computed with NaN weights (they are put back before batch 5):
    the error names that batch and its loss, not a later one."""
    X, y = make_data()
    saved: dict[str, np.ndarray] = {}

    class OneBadBatch(Callback):
        def on_batch_begin(self, batch: int) -> None:
            if batch == 3:
                saved["params"] = self.model.flat_params.copy()
                self.model.flat_params[...] = np.nan
            elif batch == 4:
                self.model.flat_params[...] = saved["params"]

    with pytest.raises(NonFiniteLossError) as info:
        fit_small(make_model(), X, y, optimizer=gpunn.SGD(0.1), callbacks=[OneBadBatch()])
    assert (info.value.epoch, info.value.batch) == (1, 4)
    assert math.isnan(info.value.value)


def test_validation_split_bounds_of_one_row() -> None:
    X, y = make_data()
    model = make_model()
    history = fit_small(model, X, y, validation_split=1 / N, epochs=1)  # 1 validation row
    assert "val_loss" in history
    regression = gpunn.Sequential([gpunn.Dense(D, 1)], backend="numpy", dtype="float64")
    targets = X[:, :1].copy()  # no classes: nothing for the split to refuse but its size
    fit_small(regression, X, targets, loss=gpunn.MeanSquaredError(), validation_split=(N - 1) / N)
    with pytest.raises(ValueError, match="of 1 sample leaves no training sample"):
        fit_small(model, X[:1], y[:1], validation_split=0.9)


def test_validation_split_sees_a_class_only_in_the_first_held_out_row() -> None:
    X, y = make_data()
    labels = np.arange(N) % 2
    labels[N - 10] = 2  # the first held-out row (of 10) is the only row of class 2
    with pytest.raises(ValueError, match="holds class\\(es\\) 2 that the training rows lack"):
        fit_small(make_model(), X, labels, validation_split=0.2)
    labels = np.arange(N) % 2
    labels[N - 11] = 2  # the last training row: no held-out class is missing from training
    labels[N - 1] = 2
    fit_small(make_model(), X, labels, validation_split=0.2, epochs=1)


def test_validation_split_lists_at_most_five_missing_classes() -> None:
    X, _ = make_data()
    labels = np.arange(N) % 2
    labels[N - 7 :] = np.arange(2, 9)  # seven classes only in the held-out rows (10 of them)
    model = gpunn.Sequential([gpunn.Dense(D, 9)], backend="numpy", dtype="float64")
    with pytest.raises(ValueError, match="holds class\\(es\\) 2, 3, 4, 5, 6 that"):
        fit_small(model, X, labels, validation_split=0.2)


@pytest.mark.parametrize(
    "labels",
    [[0] + [1] * (N - 1), [0] * (N - 1) + [1]],
    ids=["one-first", "one-last"],
)
def test_validation_split_finds_sorted_rows_with_a_single_odd_end(labels: list[int]) -> None:
    X, _ = make_data()
    model = gpunn.Sequential([gpunn.Dense(D, 2)], backend="numpy", dtype="float64")
    with pytest.raises(ValueError, match="the rows are sorted by class"):
        fit_small(model, X, np.array(labels), validation_split=0.2)


def test_evaluate_refuses_a_model_that_ends_in_feature_maps() -> None:
    rng = np.random.default_rng(1)
    X, y = rng.random((6, 1, 6, 6)), rng.integers(0, 2, 6)
    model = gpunn.Sequential([gpunn.Conv2D(1, 2, 3), gpunn.ReLU()], backend="numpy")
    with pytest.raises(ValueError, match=r"output for one sample has shape \(2, 4, 4\)"):
        model.evaluate(X, y, loss=gpunn.SoftmaxCrossEntropy())


@pytest.mark.parametrize(
    ("loss", "dtype"),
    [(gpunn.BinaryCrossEntropy(), np.float32), (gpunn.SoftmaxCrossEntropy(), np.int64)],
)
def test_labels_go_to_the_device_in_the_losss_dtype(loss: Any, dtype: Any) -> None:
    """Float64 targets of a float32 model are stored as float32 (half the memory, no float64
    arithmetic in the loss); class ids as int64."""
    model = gpunn.Sequential([gpunn.Dense(D, 1)], backend="numpy", dtype="float32")
    X, y = make_data(10)
    _, labels = training._on_device(model, loss, X.astype(np.float32), (y % 2).astype(np.float64))
    assert labels.dtype == dtype
