"""Optimizer objects: hyperparameters, state arrays and the step count around an update rule.

The rules themselves are ``gpunn.math.optim.sgd_update`` and ``adam_update``; ``step`` applies
one to the model's whole flat parameter buffer at once, through ``gpunn.kernels`` (one fused
kernel on CuPy).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from gpunn import kernels
from gpunn.backend import namespace
from gpunn.nn.layer import Array


class Optimizer:
    """Base: ``step(model)`` updates ``model.flat_params`` from ``model.flat_grads`` in place."""

    kind: ClassVar[str] = "Optimizer"
    state_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, lr: float) -> None:
        self.lr = _check(lr, "lr", low=0.0)
        self.step_count = 0
        self.initial_lr: float | None = None  # set by learning-rate schedules
        self.state: dict[str, Array] = {}

    def hyperparams(self) -> dict[str, Any]:
        """The constructor arguments (``lr`` is the current value, schedules change it)."""
        raise NotImplementedError

    def step(self, model: Any) -> None:
        """Apply one update to every parameter of ``model``, on the model's device."""
        p, g = model.flat_params, model.flat_grads
        xp = namespace(p)
        with model.backend.activate():  # the state is made, and the update runs, beside p
            for name in self.state_names:
                have = self.state.get(name)
                if have is None:
                    self.state[name] = xp.zeros_like(p)
                elif have.shape != p.shape:
                    raise ValueError(
                        f"{self.kind} state was made for {have.shape[0]} parameters, "
                        f"this model has {p.shape[0]}: use one optimizer per model"
                    )
                elif namespace(have) is not xp:
                    self.state[name] = xp.asarray(have)  # loaded on the host, moved on first use
            self.step_count += 1
            self._update(p, g, xp)

    def _update(self, p: Array, g: Array, xp: Any) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Kind, hyperparameters, step count and state arrays (as host NumPy arrays)."""
        host = {}
        for name, value in self.state.items():
            host[name] = value.get() if hasattr(value, "get") else value.copy()
        return {
            "kind": self.kind,
            "hyperparams": self.hyperparams(),
            "step": self.step_count,
            "state": host,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (state arrays move to the device on next step)."""
        if state.get("kind") != self.kind:
            raise ValueError(f"state is for optimizer {state.get('kind')!r}, not {self.kind!r}")
        unknown = set(state.get("state", {})) - set(self.state_names)
        if unknown:
            raise ValueError(f"unknown {self.kind} state entries: {sorted(unknown)}")
        for key, value in state.get("hyperparams", {}).items():
            if key not in self.hyperparams():
                raise ValueError(f"unknown {self.kind} hyperparameter {key!r}")
            setattr(self, key, value if key == "nesterov" else _check(value, key, low=0.0))
        self.step_count = int(state.get("step", 0))
        self.state = {name: value.copy() for name, value in state.get("state", {}).items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay.

    Same rule as ``torch.optim.SGD(lr, momentum, nesterov=..., weight_decay=...)`` with
    dampening 0; see :func:`gpunn.math.optim.sgd_update`.
    """

    kind = "SGD"

    def __init__(
        self, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0
    ) -> None:
        super().__init__(lr)
        self.momentum = _check(momentum, "momentum", low=0.0)
        self.weight_decay = _check(weight_decay, "weight_decay", low=0.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.state_names = ("momentum_buffer",) if self.momentum else ()

    def hyperparams(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }

    def _update(self, p: Array, g: Array, xp: Any) -> None:
        kernels.get("sgd_update", xp)(  # sgd_update, or its one-kernel form on CuPy
            p,
            g,
            self.state.get("momentum_buffer"),
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
            xp=xp,
        )


class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient, as ``torch.optim.Adam``.

    See :func:`gpunn.math.optim.adam_update`; ``beta1``, ``beta2`` are torch's ``betas``.
    """

    kind = "Adam"
    state_names = ("exp_avg", "exp_avg_sq")
    decoupled: ClassVar[bool] = False

    def __init__(
        self,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr)
        self.beta1 = _check(beta1, "beta1", low=0.0, high=1.0)
        self.beta2 = _check(beta2, "beta2", low=0.0, high=1.0)
        self.eps = _check(eps, "eps", low=0.0)
        self.weight_decay = _check(weight_decay, "weight_decay", low=0.0)

    def hyperparams(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def _update(self, p: Array, g: Array, xp: Any) -> None:
        kernels.get("adam_update", xp)(  # adam_update, or its one-kernel form on CuPy
            p,
            g,
            self.state["exp_avg"],
            self.state["exp_avg_sq"],
            step=self.step_count,
            lr=self.lr,
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps,
            weight_decay=self.weight_decay,
            decoupled=self.decoupled,
            xp=xp,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (p *= 1 - lr * weight_decay), as ``torch.optim.AdamW``."""

    kind = "AdamW"
    decoupled = True

    def __init__(
        self,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(lr, beta1, beta2, eps, weight_decay)


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.kind: cls for cls in (SGD, Adam, AdamW)}


def _check(value: Any, name: str, *, low: float, high: float | None = None) -> float:
    """A finite float with low <= value (< high); ValueError naming the hyperparameter."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x) or x < low or (high is not None and x >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return x
