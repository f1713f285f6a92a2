"""scikit-learn's stochastic solvers ('sgd', 'adam') on gpunn's SGD and Adam, with its schedules.

gpunn's optimizers follow torch.optim; scikit-learn's update rules are written differently but
are reached exactly by two re-parametrisations (so no new update math, and the fused CuPy kernels
of gpunn's SGD and Adam are used):

* Adam. scikit-learn steps ``p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``;
  torch steps ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps')``. They are equal
  for ``eps' = eps / sqrt(1 - b2^t)``, which is passed to gpunn's Adam at every step.
* SGD with momentum mu. scikit-learn keeps a velocity with the learning rate inside,
  ``v = mu v - lr g`` (Nesterov: step ``mu v - lr g``); torch keeps ``buf = mu buf + g`` and
  steps ``-lr buf`` (Nesterov: ``-lr (g + mu buf)``). With a constant lr, ``v = -lr buf`` at
  every step, so the two agree. When a schedule changes lr (only between epochs: 'invscaling',
  'adaptive'), ``buf`` is rescaled by ``lr_old / lr_new`` so that ``v = -lr buf`` still holds.

The schedules (``iteration_ends``, ``trigger_stopping``) are scikit-learn's, line for line.
"""

from __future__ import annotations

import math
from typing import Any

from gpunn.nn.optim import SGD, Adam, Optimizer

__all__ = ["StochasticOptimizer"]


class StochasticOptimizer:
    """A gpunn optimizer plus scikit-learn's learning-rate schedule and stopping rule."""

    def __init__(
        self,
        solver: str,
        *,
        learning_rate_init: float,
        lr_schedule: str = "constant",
        momentum: float = 0.9,
        nesterov: bool = True,
        power_t: float = 0.5,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
    ) -> None:
        self.solver = solver
        self.learning_rate_init = float(learning_rate_init)
        self.lr_schedule = lr_schedule
        self.power_t = power_t
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.optimizer: Optimizer
        if solver == "sgd":
            self.optimizer = SGD(
                lr=learning_rate_init, momentum=momentum, nesterov=bool(nesterov and momentum > 0)
            )
        else:
            self.optimizer = Adam(
                lr=learning_rate_init, beta1=beta_1, beta2=beta_2, eps=epsilon, weight_decay=0.0
            )

    @property
    def learning_rate(self) -> float:
        """The current learning rate, as scikit-learn's optimizer reports it (Adam: the
        bias-corrected step size of the last step)."""
        if self.solver == "sgd":
            return self.optimizer.lr
        t = self.optimizer.step_count
        if t == 0:
            return self.learning_rate_init
        return self.learning_rate_init * math.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)

    def step(self, model: Any) -> None:
        """One update of ``model.flat_params`` from ``model.flat_grads``."""
        if self.solver == "adam":  # scikit-learn's eps, in torch's form (module docstring)
            t = self.optimizer.step_count + 1
            self.optimizer.eps = self.epsilon / math.sqrt(1 - self.beta_2**t)
        self.optimizer.step(model)

    def iteration_ends(self, time_step: int) -> None:
        """End of an epoch after ``time_step`` samples in all: 'invscaling' lowers lr."""
        if self.solver == "sgd" and self.lr_schedule == "invscaling":
            self._set_lr(self.learning_rate_init / (time_step + 1) ** self.power_t)

    def trigger_stopping(self, msg: str, verbose: Any) -> bool:
        """No improvement for n_iter_no_change epochs: stop, or ('adaptive') divide lr by 5."""
        if self.solver != "sgd" or self.lr_schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.optimizer.lr <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self._set_lr(self.optimizer.lr / 5.0)
        if verbose:
            print(msg + f" Setting learning rate to {self.optimizer.lr:f}")
        return False

    def _set_lr(self, lr: float) -> None:
        """Change lr, rescaling torch's momentum buffer so scikit-learn's velocity is kept."""
        old = self.optimizer.lr
        buf = self.optimizer.state.get("momentum_buffer")
        if buf is not None and lr != old:
            buf *= old / lr
        self.optimizer.lr = lr

    # --- pickling: the optimizer's state as host NumPy arrays ----------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["optimizer"] = self.optimizer.state_dict()  # host copies of the state arrays
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved = state.pop("optimizer")
        self.__dict__.update(state)
        cls = SGD if saved["kind"] == "SGD" else Adam
        self.optimizer = cls(**saved["hyperparams"])
        self.optimizer.load_state_dict(saved)  # host arrays, moved to the device on next step
