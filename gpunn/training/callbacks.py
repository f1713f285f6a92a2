"""Callbacks for ``fit``: early stopping, checkpoints and learning-rate schedules.

A callback sees the model, optimizer, loss and history through ``self.model`` etc. and is
called at the start and end of training, of each epoch (with that epoch's metrics) and before
each batch. Epoch-end hooks run after the epoch's one host read, so they may look at numbers
freely; ``on_batch_begin`` must not read device values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gpunn.checkpoint import save


class Callback:
    """Base class: override the hooks you need."""

    def set_context(self, context: dict[str, Any]) -> None:
        self.model = context["model"]
        self.optimizer = context["optimizer"]
        self.loss = context["loss"]
        self.history = context["history"]
        self.steps_per_epoch = context["steps_per_epoch"]

    def on_train_begin(self) -> None: ...

    def on_epoch_begin(self, epoch: int) -> None: ...

    def on_batch_begin(self, batch: int) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self) -> None: ...


class _Monitor:
    """Tracks the best value of one metric: lower is better for losses, higher otherwise."""

    def __init__(self, monitor: str, mode: str, min_delta: float) -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.monitor, self.mode, self.min_delta = monitor, mode, abs(min_delta)
        self.best = math.inf if mode == "min" else -math.inf

    def value(self, logs: dict[str, float]) -> float:
        if self.monitor not in logs:
            raise ValueError(
                f"cannot monitor {self.monitor!r}: this run logs {sorted(logs)} "
                "(val_* metrics need validation_data)"
            )
        return logs[self.monitor]

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    With ``restore_best=True`` the weights of the best epoch are put back at the end (a host
    copy of the flat parameter buffer is kept, taken once per improving epoch).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best: bool = True,
    ) -> None:
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be a non-negative integer, got {patience!r}")
        self.tracker = _Monitor(monitor, mode, min_delta)
        self.patience, self.restore_best = patience, restore_best

    def on_train_begin(self) -> None:
        self.tracker.best = math.inf if self.tracker.mode == "min" else -math.inf
        self.wait, self.best_weights, self.best_epoch, self.stopped_epoch = 0, None, 0, 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        value = self.tracker.value(logs)
        if self.tracker.improved(value):
            self.tracker.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_weights = self.model.backend.to_numpy(self.model.flat_params).copy()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self) -> None:
        if self.restore_best and self.best_weights is not None:
            self.model.flat_params[...] = self.model.backend.asarray(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (and optimizer) after each epoch, or only when ``monitor`` improves.

    ``path`` may contain ``{epoch}``. Saving is atomic; a non-finite loss stops training before
    this callback runs, so a broken model is never written.
    """

    def __init__(
        self,
        path: str | Path,
        monitor: str = "val_loss",
        save_best_only: bool = False,
        mode: str = "auto",
        save_optimizer: bool = True,
    ) -> None:
        self.path = str(path)
        self.tracker = _Monitor(monitor, mode, 0.0)
        self.save_best_only, self.save_optimizer = save_best_only, save_optimizer
        self.saved: list[Path] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.save_best_only:
            value = self.tracker.value(logs)
            if not self.tracker.improved(value):
                return
            self.tracker.best = value
        target = Path(self.path.format(epoch=epoch))
        optimizer = self.optimizer if self.save_optimizer else None
        self.saved.append(save(self.model, target, optimizer, epoch=epoch))


class LearningRateSchedule(Callback):
    """Sets ``optimizer.lr`` before every batch from ``lr_at(progress)``, progress in epochs."""

    def on_train_begin(self) -> None:
        # The schedule is a function of the optimizer's first lr; the optimizer remembers it
        # (as torch's schedulers do with "initial_lr"), so a resumed fit does not decay twice.
        if getattr(self.optimizer, "initial_lr", None) is None:
            self.optimizer.initial_lr = self.optimizer.lr
        self.base_lr = self.optimizer.initial_lr
        self.epoch = 0

    def on_epoch_begin(self, epoch: int) -> None:
        self.epoch = epoch - 1  # epochs completed

    def on_batch_begin(self, batch: int) -> None:
        self.optimizer.lr = self.lr_at(self.epoch + batch / self.steps_per_epoch)

    def lr_at(self, progress: float) -> float:
        raise NotImplementedError


class StepLR(LearningRateSchedule):
    """lr = base_lr * gamma ** floor(epoch / step_size): drop by ``gamma`` every few epochs."""

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        if not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size must be a positive integer, got {step_size!r}")
        self.step_size, self.gamma = step_size, float(gamma)

    def lr_at(self, progress: float) -> float:
        return self.base_lr * self.gamma ** (int(progress) // self.step_size)


class CosineLR(LearningRateSchedule):
    """Linear warm-up from 0 over ``warmup_epochs``, then cosine decay to ``min_lr`` at ``epochs``.

    lr(t) = base * (t + 1 / steps) / warmup                            for t < warmup
    lr(t) = min_lr + (base - min_lr) * (1 + cos(pi * (t - warmup) / (epochs - warmup))) / 2
    with t the fractional epoch (epochs done + batch / steps), updated every batch; the warm-up
    counts the step being taken, so the first step's lr is not 0.
    """

    def __init__(self, epochs: int, warmup_epochs: float = 0.0, min_lr: float = 0.0) -> None:
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if not 0 <= warmup_epochs < epochs:
            raise ValueError(f"warmup_epochs must be in [0, {epochs}), got {warmup_epochs!r}")
        self.epochs, self.warmup, self.min_lr = epochs, float(warmup_epochs), float(min_lr)

    def lr_at(self, progress: float) -> float:
        if progress < self.warmup:  # count the step being taken, so the first lr is not 0
            return self.base_lr * (progress + 1 / self.steps_per_epoch) / self.warmup
        t = min((progress - self.warmup) / (self.epochs - self.warmup), 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t)) / 2
