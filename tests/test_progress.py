"""Tests for gpunn.training.progress: a rich bar on a terminal, plain lines elsewhere, or none."""

from __future__ import annotations

import io
import re
import sys
from typing import Any

import numpy as np
import pytest

import gpunn
from gpunn.training.progress import Progress, format_logs

LINE = re.compile(
    r"^epoch (\d+)/(\d+)  loss (\d+\.\d{4})  accuracy (\d\.\d{4})"
    r"(?:  val_loss (\d+\.\d{4})  val_accuracy (\d\.\d{4}))?  [\d,]+ samples/s$"
)


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variables that make rich treat any output as a terminal (or never as one)."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "150")


def fit(verbose: int, epochs: int = 3, validation: bool = False, **kwargs: Any) -> Any:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 4))
    y = (X[:, 0] > 0).astype(np.int64)
    model = gpunn.Sequential(
        [gpunn.Dense(4, 8), gpunn.ReLU(), gpunn.Dense(8, 2)], backend="numpy", seed=0
    )
    return model.fit(
        X,
        y,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.Adam(1e-2),
        epochs=epochs,
        batch_size=16,
        validation_data=(X[:16], y[:16]) if validation else None,
        verbose=verbose,
        **kwargs,
    )


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_the_output_is_not_a_terminal(capsys: pytest.CaptureFixture) -> None:
    history = fit(verbose=1, epochs=3)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3, out
    for e, line in enumerate(lines, start=1):
        match = LINE.match(line)
        assert match, line
        assert match.group(1, 2) == (str(e), "3")
        assert float(match.group(3)) == pytest.approx(history["loss"][e - 1], abs=5e-5)
        assert float(match.group(4)) == pytest.approx(history["accuracy"][e - 1], abs=5e-5)
    assert "\x1b[" not in out  # no escape sequences in a log file
    assert "━" not in out
    assert err == ""


def test_plain_lines_show_validation_metrics(capsys: pytest.CaptureFixture) -> None:
    history = fit(verbose=1, epochs=2, validation=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for e, line in enumerate(lines, start=1):
        match = LINE.match(line)
        assert match and match.group(5) is not None, line
        assert float(match.group(5)) == pytest.approx(history["val_loss"][e - 1], abs=5e-5)
        assert float(match.group(6)) == pytest.approx(history["val_accuracy"][e - 1], abs=5e-5)


def test_epoch_numbers_continue_after_initial_epoch(capsys: pytest.CaptureFixture) -> None:
    fit(verbose=1, epochs=2, initial_epoch=3)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 4/5", "epoch 5/5"]


def test_verbose_0_prints_nothing(capsys: pytest.CaptureFixture) -> None:
    fit(verbose=0, epochs=2, validation=True)
    assert capsys.readouterr() == ("", "")


def test_verbose_0_prints_nothing_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    fit(verbose=0, epochs=2)
    assert terminal.getvalue() == ""


def test_a_rich_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    fit(verbose=1, epochs=3)
    out = terminal.getvalue()
    assert "━" in out  # the bar
    for e in (1, 2, 3):
        assert f"epoch {e}/3" in out
    assert "64/64" in out  # samples done / samples per epoch
    assert "samples/s" in out and "loss" in out and "accuracy" in out
    plain = [line for line in out.splitlines() if LINE.match(line)]
    assert plain == []  # not the log-file lines


def test_progress_object_chooses_by_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    assert Progress(1, 3, steps=2, samples=10).bar is not None
    assert Progress(0, 3, steps=2, samples=10).bar is None
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert Progress(1, 3, steps=2, samples=10).bar is None


def test_format_logs() -> None:
    logs = {
        "loss": 0.123456,
        "accuracy": 0.97,
        "val_loss": 1.5,
        "val_accuracy": 0.5,
        "lr": 0.1,
        "epoch_seconds": 0.2,
        "samples_per_second": 1234567.8,
    }
    assert format_logs(logs) == (
        "loss 0.1235  accuracy 0.9700  val_loss 1.5000  val_accuracy 0.5000  1,234,568 samples/s"
    )
    assert format_logs({"loss": 2.0}) == "loss 2.0000"


def test_the_bar_advances_by_each_batch_s_samples_and_stays_after_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mid-epoch the bar shows the samples done so far (fit advances it by each batch's rows);
    at the end of training the bars are kept on screen (not transient) and the live display
    is stopped."""
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    advanced: list[int] = []
    original = Progress.advance

    def spy(self: Progress, n: int) -> None:
        advanced.append(n)
        original(self, n)

    monkeypatch.setattr(Progress, "advance", spy)
    fit(verbose=1, epochs=2)  # 64 samples of 4 features, batches of 16
    assert advanced == [16] * 4 * 2
    monkeypatch.setattr(Progress, "advance", original)

    progress = Progress(1, 3, steps=2, samples=10)
    assert progress.bar is not None and not progress.bar.live.transient
    with progress as entered:
        assert entered is progress and progress.bar.live.is_started
        progress.start_epoch(1)
        progress.advance(4)
        assert progress.bar.tasks[0].completed == 4
    assert not progress.bar.live.is_started


def test_plain_lines_are_flushed_as_each_epoch_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log piped to a file or `tee` shows each epoch when it ends, not when Python's buffer
    fills."""

    class Log(io.StringIO):
        flushed: list[str] = []

        def flush(self) -> None:
            self.flushed.append(self.getvalue())

    log = Log()
    monkeypatch.setattr(sys, "stdout", log)
    fit(verbose=1, epochs=2)
    assert [text.count("\n") for text in log.flushed if text] == [1, 2]
