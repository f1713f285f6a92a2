"""Tests for gpunn.training.progress: a live bar and a table of epochs on a terminal (every
column intact at 80 columns), aligned plain lines elsewhere, or nothing."""

from __future__ import annotations

import io
import re
import sys
from typing import Any

import numpy as np
import pytest
from rich.console import Console

import gpunn
from gpunn.training.progress import EpochTable, Progress, count, format_logs

LINE = re.compile(
    r"^epoch +(\d+)/(\d+)  loss +(\d+\.\d{4})  accuracy (\d\.\d{4})"
    r"(?:  val_loss +(\d+\.\d{4})  val_accuracy (\d\.\d{4}))?  +[\d,]+ samples/s$"
)
ROW = re.compile(  # a row of the terminal's table of epochs
    r"^ *(\d+)/(\d+) +(\d+\.\d{4}) +(\d\.\d{4})(?: +(\d+\.\d{4}) +(\d\.\d{4}))? +[\d,]+$"
)
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


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


def test_plain_lines_are_aligned_from_epoch_1_to_epoch_10(capsys: pytest.CaptureFixture) -> None:
    """ "epoch  3/10" is padded to the width of "epoch 10/10", and every field starts in the
    same column on every line."""
    fit(verbose=1, epochs=10, validation=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10
    assert lines[2].startswith("epoch  3/10  ") and lines[9].startswith("epoch 10/10  ")
    for field in ("loss", "accuracy", "val_loss", "val_accuracy", "samples/s"):
        columns = {line.index(f" {field}") for line in lines}
        assert len(columns) == 1, (field, lines)
    assert len({len(line) for line in lines}) == 1, lines


def screen(out: str) -> list[str]:
    """What a terminal shows after ``out``: escape sequences removed, and of each line only the
    text written after its last carriage return (the live row redraws itself that way)."""
    lines = []
    for line in ESCAPE.sub("", out).split("\n"):
        shown = line.split("\r")
        last = next((part for part in reversed(shown) if part.strip()), "")
        if last.strip():
            lines.append(last.rstrip())
    return lines


@pytest.mark.parametrize("columns", [80, 100, 120])
def test_every_metric_survives_a_terminal_of(monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    """On a terminal of 80 columns and wider each finished epoch keeps its number, loss,
    accuracy, val_loss, val_accuracy and samples/s whole, under a header naming them."""
    monkeypatch.setenv("COLUMNS", str(columns))
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    history = fit(verbose=1, epochs=12, validation=True)
    shown = screen(terminal.getvalue())
    assert "…" not in terminal.getvalue()  # nothing cut short
    assert all(len(line) <= columns for line in shown), shown
    header = [line for line in shown if line.split()[:1] == ["epoch"] and "loss" in line]
    assert len(header) == 1, shown
    assert header[0].split() == [
        "epoch",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "samples/s",
    ]
    rows = [ROW.match(line) for line in shown if ROW.match(line)]
    assert [m.group(1, 2) for m in rows] == [(str(e), "12") for e in range(1, 13)]
    for e, m in enumerate(rows):
        assert float(m.group(3)) == pytest.approx(history["loss"][e], abs=5e-5)
        assert float(m.group(4)) == pytest.approx(history["accuracy"][e], abs=5e-5)
        assert float(m.group(5)) == pytest.approx(history["val_loss"][e], abs=5e-5)
        assert float(m.group(6)) == pytest.approx(history["val_accuracy"][e], abs=5e-5)
    lines = [line for line in shown if ROW.match(line)]
    assert len({len(line) for line in [header[0], *lines]}) == 1  # one table, aligned


@pytest.mark.parametrize("width", [80, 100, 120])
def test_the_bar_is_what_shrinks(width: int) -> None:
    """A wide epoch count, sample count and loss in a console of 80, 100 and 120 columns: the
    live row (label, bar, samples done, time) and the table row fit; the bar takes the rest."""
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    logs = {
        "loss": 12.3456,
        "accuracy": 0.5,
        "val_loss": 23.4567,
        "val_accuracy": 0.25,
        "samples_per_second": 12_345_678.0,
    }
    with Progress(1, 1000, steps=10, samples=1_000_000, console=console) as progress:
        progress.start_epoch(999)
        progress.advance(500_000)
        assert progress.bar is not None
        progress.bar.refresh()
        live = screen(console.file.getvalue())[-1]
        progress.end_epoch(999, logs)
    assert live.startswith("epoch  999/1000 ") and live.endswith("500000/1000000 0:00:00")
    assert len(live) <= width and "━" in live
    table = screen(console.file.getvalue())[-2:]
    assert table[0].split() == [
        "epoch",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "samples/s",
    ]
    assert table[1].split() == ["999/1000", "12.3456", "0.5000", "23.4567", "0.2500", "12,345,678"]
    assert all(len(line) <= 80 for line in table)


def test_a_narrow_terminal_keeps_the_live_row_on_one_line() -> None:
    console = Console(file=io.StringIO(), width=40, force_terminal=True, color_system=None)
    with Progress(1, 30, steps=4, samples=1797, console=console) as progress:
        progress.start_epoch(7)
        progress.advance(900)
        assert progress.bar is not None
        progress.bar.refresh()
        live = screen(console.file.getvalue())[-1]
    assert live.startswith("epoch  7/30 ") and live.endswith("900/1797 0:00:00")
    assert len(live) <= 40


def test_count_says_1_epoch_and_2_epochs() -> None:
    assert (count(1, "epoch"), count(2, "epoch"), count(0, "epoch")) == (
        "1 epoch",
        "2 epochs",
        "0 epochs",
    )
    assert count(12345, "sample") == "12,345 samples"


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
    assert "0/64" in out  # samples done / samples per epoch
    shown = screen(out)
    assert shown[0].split() == ["epoch", "loss", "accuracy", "samples/s"]  # no validation
    assert [ROW.match(line).group(1) for line in shown[1:]] == ["1", "2", "3"]
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
        "loss  0.1235  accuracy 0.9700  val_loss  1.5000  val_accuracy 0.5000   1,234,568 samples/s"
    )
    assert format_logs({"loss": 2.0}) == "loss  2.0000"
    assert format_logs({"loss": 12.0}) == "loss 12.0000"


def test_the_bar_advances_by_each_batch_s_samples_and_stays_after_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mid-epoch the bar shows the samples done so far (fit advances it by each batch's rows);
    the bar is transient (the table of epochs is what stays on screen) and the live display
    is stopped at the end of training."""
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
    assert progress.bar is not None and progress.bar.live.transient
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


def test_a_row_leaves_a_missing_metric_blank_and_adds_a_rate_only_where_the_table_has_one() -> None:
    """A metric the table has but an epoch's logs lack is a blank cell of its width (the row
    stays as wide as the header); the rate column is there only when the first epoch's logs
    had it."""
    table = EpochTable(3, {"loss": 1.0, "val_loss": 2.0})
    cells = table.row(2, {"loss": 0.5, "samples_per_second": 10.0})
    assert cells == table.row(2, {"loss": 0.5}) and "samples/s" not in cells
    assert cells.endswith(" " * len("val_loss")) and len(cells) == len(table.header())


def test_the_epoch_table_is_printed_without_rich_s_number_highlighting() -> None:
    """On a colour terminal the header is bold and the rows are plain text: rich's automatic
    highlighting (numbers in colour) is off, so the columns read alike."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="standard", width=100)
    logs = {"loss": 0.5, "accuracy": 0.75, "samples_per_second": 1000.0}
    with Progress(1, 2, steps=1, samples=4, console=console) as progress:
        progress.start_epoch(1)
        progress.end_epoch(1, logs)
    lines = [line for line in out.getvalue().splitlines() if "0.5000" in line]
    assert len(lines) == 1 and "\x1b[" not in lines[0].replace("\x1b[2K", "")
    header = next(line for line in out.getvalue().splitlines() if "accuracy" in line)
    assert "\x1b[1m" in header and "\x1b[3" not in header  # bold, no colour
