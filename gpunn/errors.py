"""Exceptions gpunn raises on purpose, so callers can catch them by kind."""

from __future__ import annotations

from gpunn.backend import BackendUnavailableError

__all__ = ["BackendUnavailableError", "NonFiniteLossError"]


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite; the message names the epoch and batch."""

    def __init__(self, epoch: int, batch: int, value: float, what: str = "loss") -> None:
        self.epoch, self.batch, self.value = epoch, batch, value
        where = (
            f"in epoch {epoch}, batch {batch}"
            if what == "loss"
            else (f"in epoch {epoch} (its last step, batch {batch}, gave a {value} weight sum)")
        )
        super().__init__(
            f"the {what} became {'non-finite' if what != 'loss' else value} {where}: training "
            "stopped and no checkpoint of these weights was written (try a lower learning "
            "rate, or check the data for extreme values)"
        )
