"""Training progress for ``fit``: a table of epochs under a live bar on a terminal, plain lines
otherwise.

On a terminal every finished epoch is one row of an aligned table (a header line first), and
the running epoch is a live row below it: ``epoch 3/30 ━━━━━━━ 1,024/1,797 0:00:01``. The
metrics never share a line with the bar, so all of them fit in 80 columns (about 60 are
needed with validation); the bar is what shrinks on a narrow terminal. In a log file (not a
terminal) each epoch is one self-describing line, its fields aligned from line to line::

    epoch  3/30  loss  0.1234  accuracy 0.9700  val_loss  0.2345  val_accuracy 0.9500  ...
    epoch 10/30  loss  0.0456  accuracy 0.9900  val_loss  0.1234  val_accuracy 0.9600  ...

(ending in ``86,939 samples/s``, right-aligned).

The bar advances per batch from host-side counts only (no device reads); loss and accuracy
appear when the epoch ends, after its single host read.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

#: the per-epoch metrics shown, in order: history key -> value width and format
METRICS: dict[str, tuple[int, str]] = {
    "loss": (7, ".4f"),
    "accuracy": (6, ".4f"),
    "val_loss": (7, ".4f"),
    "val_accuracy": (6, ".4f"),
}
RATE = "samples/s"
RATE_WIDTH = 10  # "12,345,678": a fast GPU at a large batch
GAP = "  "


def count(n: int, noun: str) -> str:
    """``"1 epoch"``, ``"30 epochs"``: a count with its noun in the right number."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _value(logs: dict[str, float], key: str) -> str:
    width, fmt = METRICS[key]
    return f"{logs[key]:>{width}{fmt}}"


def _rate(logs: dict[str, float], width: int = RATE_WIDTH) -> str:
    return f"{logs['samples_per_second']:>{width},.0f}"


def format_logs(logs: dict[str, float]) -> str:
    """``loss  0.1234  accuracy 0.9700  ...      1,234 samples/s``: one epoch's metrics, each
    value padded to a fixed width so that consecutive lines line up."""
    parts = [f"{key} {_value(logs, key)}" for key in METRICS if key in logs]
    if "samples_per_second" in logs:
        parts.append(f"{_rate(logs)} {RATE}")
    return GAP.join(parts)


def epoch_label(epoch: int, epochs: int) -> str:
    """``" 3/30"``: the epoch number padded to the width of the last one, so columns align."""
    return f"{epoch:>{len(str(epochs))}}/{epochs}"


class EpochTable:
    """The terminal's table of finished epochs: a header, then one aligned row per epoch.

    The columns are the metrics present in the first epoch's logs (validation and accuracy
    only when ``fit`` computes them), with ``samples/s`` last.
    """

    def __init__(self, epochs: int, logs: dict[str, float]) -> None:
        self.epochs = epochs
        self.keys = [key for key in METRICS if key in logs]
        self.rate = "samples_per_second" in logs
        self.epoch_width = max(len("epoch"), len(epoch_label(epochs, epochs)))
        self.widths = [max(len(key), METRICS[key][0]) for key in self.keys]

    def header(self) -> str:
        cells = [f"{'epoch':>{self.epoch_width}}"]
        cells += [f"{key:>{w}}" for key, w in zip(self.keys, self.widths, strict=True)]
        cells += [f"{RATE:>{RATE_WIDTH}}"] if self.rate else []
        return GAP.join(cells)

    def row(self, epoch: int, logs: dict[str, float]) -> str:
        cells = [f"{epoch_label(epoch, self.epochs):>{self.epoch_width}}"]
        cells += [
            f"{_value(logs, key):>{w}}" if key in logs else " " * w
            for key, w in zip(self.keys, self.widths, strict=True)
        ]
        cells += [_rate(logs)] if self.rate and "samples_per_second" in logs else []
        return GAP.join(cells)


class Progress:
    """verbose=0: silent; 1: a live bar and a table of epochs on a terminal, one line per
    epoch otherwise. ``console`` (default: one on stdout) decides which, by ``is_terminal``."""

    def __init__(
        self,
        verbose: int,
        epochs: int,
        *,
        steps: int,
        samples: int,
        console: Console | None = None,
    ) -> None:
        self.verbose, self.epochs, self.steps, self.samples = verbose, epochs, steps, samples
        self.console = console if console is not None else Console(file=sys.stdout)
        self.bar: RichProgress | None = None
        self.table: EpochTable | None = None
        self.task: Any = None
        if verbose and self.console.is_terminal:
            label = "epoch {task.fields[label]}"
            self.bar = RichProgress(
                TextColumn(label, style="bold"),
                BarColumn(),  # 40 columns, fewer when the terminal is narrow (rich shrinks it)
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,  # the running epoch's row goes; the table of epochs stays
            )

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def start_epoch(self, epoch: int) -> None:
        if self.bar is not None:
            self.task = self.bar.add_task(
                "", total=self.samples, label=epoch_label(epoch, self.epochs)
            )

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def end_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        if not self.verbose:
            return
        if self.bar is None:
            print(f"epoch {epoch_label(epoch, self.epochs)}  {format_logs(logs)}", flush=True)
            return
        self.bar.remove_task(self.task)
        self.bar.refresh()  # the finished epoch's bar goes before its row is printed
        if self.table is None:
            self.table = EpochTable(self.epochs, logs)
            self.bar.console.print(self.table.header(), style="bold", highlight=False)
        self.bar.console.print(self.table.row(epoch, logs), highlight=False)
