"""Training progress for ``fit``: a rich progress bar on a terminal, plain lines otherwise.

The bar advances per batch from host-side counts only (no device reads); loss and accuracy
appear when the epoch ends, after its single host read.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress


def format_logs(logs: dict[str, float]) -> str:
    """``loss 0.1234  accuracy 0.9700  ...  1,234 samples/s`` for one epoch's metrics."""
    parts = []
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in logs:
            parts.append(f"{key} {logs[key]:.4f}")
    if "samples_per_second" in logs:
        parts.append(f"{logs['samples_per_second']:,.0f} samples/s")
    return "  ".join(parts)


class Progress:
    """verbose=0: silent; 1: a bar per epoch on a terminal, one line per epoch otherwise."""

    def __init__(self, verbose: int, epochs: int, *, steps: int, samples: int) -> None:
        self.verbose, self.epochs, self.steps, self.samples = verbose, epochs, steps, samples
        self.console = Console(file=sys.stdout)
        self.bar: RichProgress | None = None
        if verbose and self.console.is_terminal:
            self.bar = RichProgress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=self.console,
                transient=False,
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
                "", total=self.samples, epoch=epoch, epochs=self.epochs, rate="", metrics=""
            )

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def end_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        if not self.verbose:
            return
        if self.bar is not None:
            rate = f"{logs.get('samples_per_second', 0):,.0f} samples/s"
            metrics = format_logs({k: v for k, v in logs.items() if k != "samples_per_second"})
            self.bar.update(self.task, completed=self.samples, rate=rate, metrics=metrics)
        else:
            print(f"epoch {epoch}/{self.epochs}  {format_logs(logs)}", flush=True)
