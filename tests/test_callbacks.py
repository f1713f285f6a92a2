"""Tests for gpunn.training.callbacks: EarlyStopping, ModelCheckpoint, StepLR, CosineLR in fit."""

from __future__ import annotations

import math
import pathlib
import warnings
from typing import Any

import numpy as np
import pytest

import gpunn
from gpunn.errors import NonFiniteLossError
from gpunn.training.callbacks import (
    Callback,
    CosineLR,
    EarlyStopping,
    LearningRateSchedule,
    ModelCheckpoint,
    StepLR,
)

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def xor_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2))
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.int64)


def overfitting_problem() -> tuple[Any, Any]:
    """24 training points with 30% flipped labels and a clean validation set: a wide network
    overfits, so the validation loss falls for a few epochs (best at epoch 3) and then rises."""
    X, y = xor_data(24, 0)
    flip = np.random.default_rng(5).random(24) < 0.3
    return (X, np.where(flip, 1 - y, y)), xor_data(200, 1)


def wide_model() -> gpunn.Sequential:
    layers = [
        gpunn.Dense(2, 64),
        gpunn.ReLU(),
        gpunn.Dense(64, 64),
        gpunn.ReLU(),
        gpunn.Dense(64, 2),
    ]
    return gpunn.Sequential(layers, backend="numpy", dtype="float64", seed=0)


def small_model(dtype: str = "float64") -> gpunn.Sequential:
    layers = [gpunn.Dense(2, 8), gpunn.ReLU(), gpunn.Dense(8, 2)]
    return gpunn.Sequential(layers, backend="numpy", dtype=dtype, seed=0)


def host(model: gpunn.Sequential) -> np.ndarray:
    return model.backend.to_numpy(model.flat_params).copy()


class Recorder(Callback):
    """Host copies of the weights at the end of each epoch."""

    def __init__(self) -> None:
        self.weights: dict[int, np.ndarray] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.weights[epoch] = host(self.model)


def fit_overfitting(callbacks: list[Callback], epochs: int = 20) -> tuple[Any, Any]:
    (X, y), val = overfitting_problem()
    model = wide_model()
    history = model.fit(
        X,
        y,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.Adam(1e-2),
        epochs=epochs,
        batch_size=8,
        validation_data=val,
        callbacks=callbacks,
        verbose=0,
    )
    return model, history


def running_best_epochs(values: list[float]) -> list[int]:
    """1-based epochs whose value beats every earlier one."""
    best, epochs = math.inf, []
    for e, v in enumerate(values, start=1):
        if v < best:
            best = v
            epochs.append(e)
    return epochs


# --------------------------------------------------------------------------------------------
# EarlyStopping
# --------------------------------------------------------------------------------------------


def test_early_stopping_stops_and_restores_the_best_weights() -> None:
    recorder = Recorder()
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best=True)
    model, history = fit_overfitting([recorder, stopper], epochs=20)

    val_loss = history["val_loss"]
    best = int(np.argmin(val_loss)) + 1
    assert 1 < best < len(val_loss)  # the scenario: it improves, then gets worse
    assert len(history.epoch) < 20  # stopped early
    assert stopper.best_epoch == best
    assert stopper.stopped_epoch == history.epoch[-1]
    # the weights at the end are those of the best epoch, not of the last one
    np.testing.assert_array_equal(host(model), recorder.weights[best])
    assert not np.array_equal(recorder.weights[history.epoch[-1]], recorder.weights[best])
    assert model.evaluate(*overfitting_problem()[1])["loss"] == pytest.approx(val_loss[best - 1])


def test_early_stopping_without_restore_keeps_the_last_weights() -> None:
    recorder = Recorder()
    model, history = fit_overfitting([recorder, EarlyStopping(patience=2, restore_best=False)])
    assert len(history.epoch) < 20
    np.testing.assert_array_equal(host(model), recorder.weights[history.epoch[-1]])


def drive(callback: Callback, values: list[float], key: str = "val_loss") -> int | None:
    """Feed a callback one logged value per epoch; the epoch at which it stops training."""
    model = small_model()
    callback.set_context(
        {
            "model": model,
            "optimizer": gpunn.SGD(0.1),
            "loss": gpunn.SoftmaxCrossEntropy(),
            "history": None,
            "steps_per_epoch": 1,
        }
    )
    model.stop_training = False
    callback.on_train_begin()
    for epoch, value in enumerate(values, start=1):
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {key: value})
        if model.stop_training:
            return epoch
    return None


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_stops_after_patience_epochs_without_improvement(patience: int) -> None:
    """Best at epoch 2; "stop when the metric has not improved for `patience` epochs" means
    stopping at the end of epoch 2 + patience (as Keras and Lightning do)."""
    values = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]
    assert drive(EarlyStopping(patience=patience), values) == 2 + patience


def test_early_stopping_with_patience_0_stops_at_the_first_setback() -> None:
    assert drive(EarlyStopping(patience=0), [1.0, 0.5, 0.6, 0.4]) == 3


def test_early_stopping_never_stops_while_improving() -> None:
    assert drive(EarlyStopping(patience=0), [1.0, 0.9, 0.8, 0.7]) is None


def test_early_stopping_min_delta_and_mode() -> None:
    # improvements smaller than min_delta do not count
    assert drive(EarlyStopping(patience=1, min_delta=0.1), [1.0, 0.95, 0.92, 0.5]) == 2
    assert drive(EarlyStopping(patience=2, min_delta=0.1), [1.0, 0.95, 0.85, 0.5]) is None
    # "acc" metrics are maximised in auto mode
    assert (
        drive(EarlyStopping("val_accuracy", patience=1), [0.5, 0.6, 0.7, 0.8], "val_accuracy")
        is None
    )
    assert drive(EarlyStopping("val_accuracy", patience=0), [0.5, 0.6, 0.55], "val_accuracy") == 3
    assert drive(EarlyStopping("loss", patience=0, mode="max"), [0.5, 0.6, 0.55], "loss") == 3


def test_a_reused_early_stopping_forgets_the_previous_run() -> None:
    """One EarlyStopping object given to a second fit starts from scratch: the best value,
    the wait and the best weights of the first run do not carry over."""
    stopper = EarlyStopping(patience=1)
    assert drive(stopper, [1.0, 0.1, 0.2, 0.3]) == 3
    assert drive(stopper, [0.8, 0.7, 0.6, 0.5]) is None  # improving: never stops
    assert stopper.best_epoch == 4 and stopper.tracker.best == 0.5 and stopper.wait == 0
    accuracy = EarlyStopping("val_accuracy", patience=0)
    assert drive(accuracy, [0.5, 0.99, 0.9], "val_accuracy") == 3
    assert drive(accuracy, [0.2, 0.3], "val_accuracy") is None


def test_a_reused_early_stopping_keeps_nothing_of_the_previous_run_s_patience_or_weights() -> None:
    """A run whose monitored value never improves (here NaN) must not count the previous run's
    waiting epochs, nor restore the previous run's best weights at its end."""
    stopper = EarlyStopping(patience=2)
    assert drive(stopper, [1.0, 0.5, 0.6]) is None  # ends waiting 1 epoch, best weights kept
    model = small_model()
    model.flat_params[...] = 7.0
    stopper.set_context(
        {"model": model, "optimizer": None, "loss": None, "history": None, "steps_per_epoch": 1}
    )
    model.stop_training = False
    stopper.on_train_begin()
    stopper.on_epoch_end(1, {"val_loss": math.nan})
    assert not model.stop_training and stopper.wait == 1
    assert (stopper.best_epoch, stopper.stopped_epoch, stopper.best_weights) == (0, 0, None)
    stopper.on_train_end()
    assert np.all(host(model) == 7.0)


def test_a_reused_early_stopping_restores_this_run_s_best_weights() -> None:
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best=True)
    fit_overfitting([stopper], epochs=20)
    recorder = Recorder()
    model, history = fit_overfitting([recorder, stopper], epochs=20)
    best = int(np.argmin(history["val_loss"])) + 1
    assert stopper.best_epoch == best
    np.testing.assert_array_equal(host(model), recorder.weights[best])


def test_an_equal_value_is_not_an_improvement_and_min_delta_counts_both_ways() -> None:
    assert drive(EarlyStopping(patience=1), [1.0, 0.5, 0.5]) == 3
    assert drive(EarlyStopping("val_accuracy", patience=1), [0.5, 0.5], "val_accuracy") == 2
    # in max mode an improvement must exceed the best by more than min_delta, too
    acc = EarlyStopping("val_accuracy", patience=1, min_delta=0.1)
    assert drive(acc, [0.5, 0.55, 0.58], "val_accuracy") == 2
    assert drive(acc, [0.5, 0.61, 0.75], "val_accuracy") is None
    assert drive(EarlyStopping(patience=1, min_delta=0.1), [1.0, 0.9, 0.85]) == 2


def test_early_stopping_defaults_wait_5_epochs_and_restore_the_best_weights() -> None:
    stopper = EarlyStopping()
    assert drive(stopper, [1.0, 0.5] + [0.9] * 10) == 2 + 5
    assert stopper.restore_best and stopper.best_weights is not None
    assert (stopper.best_epoch, stopper.stopped_epoch) == (2, 7)
    assert drive(stopper, [1.0, 0.9]) is None
    assert (stopper.best_epoch, stopper.stopped_epoch, stopper.wait) == (2, 0, 0)


def test_a_callback_sees_the_loss_and_the_history_being_written() -> None:
    seen: list[tuple[Any, list[int]]] = []

    class Look(Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            seen.append((self.loss, list(self.history.epoch)))

    loss = gpunn.SoftmaxCrossEntropy()
    X, y = xor_data(12, 0)
    history = small_model().fit(
        X, y, loss=loss, optimizer=gpunn.SGD(0.1), epochs=2, callbacks=[Look()], verbose=0
    )
    assert seen == [(loss, [1]), (loss, [1, 2])]  # each epoch is recorded before the hook
    assert history.epoch == [1, 2]


def test_schedule_defaults_and_the_abstract_schedule() -> None:
    lrs, _ = lrs_of(StepLR(step_size=1), epochs=3, n=4, batch_size=4)
    assert lrs == pytest.approx([0.1, 0.01, 0.001], rel=1e-12)  # gamma 0.1
    lrs, _ = lrs_of(CosineLR(epochs=2), epochs=2, n=4, batch_size=4)
    assert lrs == pytest.approx([0.1, 0.05], rel=1e-12)  # no warm-up: starts at the base lr
    lrs, _ = lrs_of(CosineLR(epochs=1), epochs=1, n=4, batch_size=4)  # one epoch is allowed
    assert lrs == pytest.approx([0.1], rel=1e-12)
    with pytest.raises(NotImplementedError):
        lrs_of(LearningRateSchedule(), epochs=1, n=4, batch_size=4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: EarlyStopping(patience=-1),
        lambda: EarlyStopping(patience=1.5),
        lambda: EarlyStopping(mode="best"),
        lambda: ModelCheckpoint("x.safetensors", mode="lowest"),
        lambda: StepLR(0),
        lambda: StepLR(1.5),
        lambda: CosineLR(0),
        lambda: CosineLR(2.5),
        lambda: CosineLR(-1),
        lambda: CosineLR(4, warmup_epochs=4),
        lambda: CosineLR(4, warmup_epochs=-1),
    ],
)
def test_bad_callback_arguments(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize(
    "callback",
    [
        lambda tmp: EarlyStopping(monitor="val_loss"),
        lambda tmp: EarlyStopping(monitor="val_acc"),
        lambda tmp: ModelCheckpoint(tmp / "m.safetensors", monitor="val_loss", save_best_only=True),
    ],
    ids=["early-stopping", "typo", "checkpoint"],
)
def test_monitoring_a_missing_metric_is_a_clear_value_error(
    tmp_path: pathlib.Path, callback: Any
) -> None:
    X, y = xor_data(20, 0)
    model = small_model()
    with pytest.raises(ValueError) as info:
        model.fit(
            X,
            y,
            loss=gpunn.SoftmaxCrossEntropy(),
            optimizer=gpunn.SGD(0.1),
            epochs=2,
            callbacks=[callback(tmp_path)],
            verbose=0,
        )
    message = str(info.value)
    assert "cannot monitor" in message
    assert "'loss'" in message and "'accuracy'" in message  # what the run does log
    assert "validation_data" in message
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# ModelCheckpoint
# --------------------------------------------------------------------------------------------


def test_model_checkpoint_writes_one_file_per_epoch(tmp_path: pathlib.Path) -> None:
    recorder = Recorder()
    checkpoint = ModelCheckpoint(tmp_path / "ck-{epoch}.safetensors", monitor="val_loss")
    _, history = fit_overfitting([recorder, checkpoint], epochs=4)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"ck-{e}.safetensors" for e in (1, 2, 3, 4)]
    assert [p.name for p in checkpoint.saved] == files
    for epoch in (1, 2, 3, 4):
        model, optimizer, info = gpunn.load_with_optimizer(
            tmp_path / f"ck-{epoch}.safetensors", backend="numpy"
        )
        np.testing.assert_array_equal(host(model), recorder.weights[epoch])
        assert info["epoch"] == epoch
        assert isinstance(optimizer, gpunn.Adam)
        assert optimizer.step_count == 3 * epoch  # 24 samples, batches of 8


def test_model_checkpoint_save_best_only_writes_only_improving_epochs(
    tmp_path: pathlib.Path,
) -> None:
    recorder = Recorder()
    checkpoint = ModelCheckpoint(
        tmp_path / "best-{epoch}.safetensors", monitor="val_loss", save_best_only=True
    )
    fixed = ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_loss", save_best_only=True)
    _, history = fit_overfitting([recorder, checkpoint, fixed], epochs=8)
    improving = running_best_epochs(history["val_loss"])
    assert improving != history.epoch  # some epochs did not improve
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {f"best-{e}.safetensors" for e in improving} | {"best.safetensors"}
    best = gpunn.load(tmp_path / "best.safetensors", backend="numpy")
    np.testing.assert_array_equal(host(best), recorder.weights[improving[-1]])


def test_model_checkpoint_monitoring_accuracy_keeps_the_highest(tmp_path: pathlib.Path) -> None:
    checkpoint = ModelCheckpoint(
        tmp_path / "acc-{epoch}.safetensors", monitor="val_accuracy", save_best_only=True
    )
    _, history = fit_overfitting([checkpoint], epochs=8)
    acc = history["val_accuracy"]
    expected = [e for e in history.epoch if acc[e - 1] > max(acc[: e - 1], default=-1.0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"acc-{e}.safetensors" for e in expected
    )


# --------------------------------------------------------------------------------------------
# A non-finite loss writes no checkpoint of the broken weights
# --------------------------------------------------------------------------------------------


class PoisonAt(Callback):
    """Turns every weight into NaN just before batch `batch` (0-based) of epoch `epoch`."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch: int) -> None:
        self.epoch = epoch

    def on_batch_begin(self, batch: int) -> None:
        if (self.epoch, batch) == self.at:
            self.model.flat_params[...] = np.nan


class FileSnapshot(Callback):
    """The bytes of a file at the end of each epoch."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path, self.contents = path, {}

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.contents[epoch] = self.path.read_bytes()


def test_non_finite_loss_stops_before_any_checkpoint_of_the_broken_weights(
    tmp_path: pathlib.Path,
) -> None:
    X, y = xor_data(40, 0)
    model = small_model()
    last = tmp_path / "last.safetensors"
    snapshot = FileSnapshot(last)
    callbacks = [
        ModelCheckpoint(tmp_path / "ck-{epoch}.safetensors", monitor="loss"),
        ModelCheckpoint(last, monitor="loss"),
        snapshot,
        PoisonAt(epoch=3, batch=1),
    ]
    with pytest.raises(NonFiniteLossError) as info:
        model.fit(
            X,
            y,
            loss=gpunn.SoftmaxCrossEntropy(),
            optimizer=gpunn.SGD(0.1),
            epochs=5,
            batch_size=8,
            callbacks=callbacks,
            verbose=0,
        )
    assert isinstance(info.value, ArithmeticError)
    assert (info.value.epoch, info.value.batch) == (3, 2)
    assert "epoch 3, batch 2" in str(info.value)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ck-1.safetensors", "ck-2.safetensors", "last.safetensors"]  # no temp files
    assert last.read_bytes() == snapshot.contents[2]  # the good file of epoch 2, untouched
    restored = gpunn.load(last, backend="numpy")
    assert np.isfinite(host(restored)).all()


def test_weights_broken_by_the_last_step_of_an_epoch_raise_non_finite_loss_error(
    tmp_path: pathlib.Path,
) -> None:
    """Full-batch training with lr 1e300 in float32: the epoch's one loss is finite, but its
    step leaves inf/NaN weights. The run must end with NonFiniteLossError (not with an error
    from inside the checkpoint callback) and write no checkpoint."""
    X, y = xor_data(40, 0)
    model = small_model(dtype="float32")
    checkpoint = ModelCheckpoint(tmp_path / "ck-{epoch}.safetensors", monitor="loss")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(NonFiniteLossError):
            model.fit(
                X,
                y,
                loss=gpunn.SoftmaxCrossEntropy(),
                optimizer=gpunn.SGD(1e300),
                epochs=3,
                batch_size=40,
                callbacks=[checkpoint],
                verbose=0,
            )
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# Learning-rate schedules: optimizer.lr before every batch
# --------------------------------------------------------------------------------------------


class SpySGD(gpunn.SGD):
    """SGD that records the learning rate of every step it takes."""

    def __init__(self, lr: float) -> None:
        super().__init__(lr)
        self.lrs: list[float] = []

    def step(self, model: Any) -> None:
        self.lrs.append(self.lr)
        super().step(model)


def lrs_of(schedule: Callback, epochs: int, n: int, batch_size: int, **kwargs: Any) -> Any:
    """(learning rate of each step, history) of a run with this schedule and base lr 0.1."""
    X, y = xor_data(n, 0)
    optimizer = SpySGD(0.1)
    history = small_model().fit(
        X,
        y,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        callbacks=[schedule],
        verbose=0,
        **kwargs,
    )
    return optimizer.lrs, history


def test_step_lr_drops_by_gamma_every_step_size_epochs() -> None:
    lrs, history = lrs_of(StepLR(step_size=2, gamma=0.5), epochs=5, n=12, batch_size=4)
    per_epoch = [0.1, 0.1, 0.05, 0.05, 0.025]  # 3 batches an epoch
    expected = [lr for lr in per_epoch for _ in range(3)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert history["lr"] == pytest.approx(per_epoch, rel=1e-12)


def cosine_reference(t: float, base: float, warmup: float, epochs: int, min_lr: float, steps: int):
    """CosineLR written out: linear warm-up that counts the step being taken (so it ends on
    base at the last warm-up batch and never uses lr 0), then cosine from base to min_lr."""
    if t < warmup:
        return base * (t + 1 / steps) / warmup
    frac = min((t - warmup) / (epochs - warmup), 1.0)
    return min_lr + (base - min_lr) * (1 + math.cos(math.pi * frac)) / 2


def test_cosine_lr_warms_up_then_decays() -> None:
    lrs, _ = lrs_of(CosineLR(epochs=4, warmup_epochs=1, min_lr=0.01), epochs=4, n=16, batch_size=4)
    assert len(lrs) == 16  # 4 batches an epoch
    # known values: warm-up 0.025, 0.05, 0.075, 0.1; then cosine from 0.1 at t = 1 ...
    assert lrs[:5] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1], rel=1e-12)
    assert lrs[10] == pytest.approx(0.055, rel=1e-12)  # t = 2.5: halfway down to min_lr
    expected = [cosine_reference(i / 4, 0.1, 1.0, 4, 0.01, 4) for i in range(16)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:4], strict=False))  # rising warm-up
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:], strict=False))  # falling after
    assert min(lrs) > 0.01


def test_cosine_lr_warm_up_of_two_epochs_rises_over_both() -> None:
    lrs, _ = lrs_of(CosineLR(epochs=4, warmup_epochs=2), epochs=4, n=8, batch_size=4)
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1], rel=1e-12)  # 2 batches an epoch
    expected = [cosine_reference(i / 2, 0.1, 2.0, 4, 0.0, 2) for i in range(8)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_cosine_lr_without_warmup_and_past_its_end() -> None:
    lrs, _ = lrs_of(CosineLR(epochs=2, min_lr=0.02), epochs=3, n=8, batch_size=4)
    assert lrs[0] == pytest.approx(0.1, rel=1e-12)  # starts at the base lr
    assert lrs[1] == pytest.approx(0.02 + 0.08 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-12)
    assert lrs[4:] == pytest.approx([0.02, 0.02], rel=1e-12)  # stays at min_lr after `epochs`


@pytest.mark.parametrize(
    "make",
    [lambda: StepLR(1, gamma=0.5), lambda: CosineLR(epochs=4, warmup_epochs=1)],
    ids=["StepLR", "CosineLR"],
)
def test_a_schedule_resumed_with_initial_epoch_continues_where_it_stopped(make: Any) -> None:
    """fit(epochs=2) then fit(epochs=2, initial_epoch=2) with the same optimizer (as `--resume`
    does) must use the learning rates of one uninterrupted 4-epoch run."""
    whole, _ = lrs_of(make(), epochs=4, n=8, batch_size=4)

    X, y = xor_data(8, 0)
    model, optimizer = small_model(), SpySGD(0.1)
    common = dict(loss=gpunn.SoftmaxCrossEntropy(), optimizer=optimizer, batch_size=4, verbose=0)
    model.fit(X, y, epochs=2, callbacks=[make()], **common)
    model.fit(X, y, epochs=2, initial_epoch=2, callbacks=[make()], **common)
    assert optimizer.lrs == pytest.approx(whole, rel=1e-12)
