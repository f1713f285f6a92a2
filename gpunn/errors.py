"""Exceptions gpunn raises on purpose, so callers can catch them by kind."""

from __future__ import annotations

from gpunn.backend import BackendUnavailableError

__all__ = ["BackendUnavailableError", "NonFiniteLossError"]


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite; the message names the epoch and batch."""

    def __init__(self, epoch: int, batch: int, value: float) -> None:
        self.epoch, self.batch, self.value = epoch, batch, value
        super().__init__(
            f"the loss became {value} in epoch {epoch}, batch {batch}: training stopped and no "
            "checkpoint of these weights was written (try a lower learning rate, or check the "
            "data for extreme values)"
        )
