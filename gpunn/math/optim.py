"""The update rules of torch.optim's SGD and Adam/AdamW as plain functions of flat arrays.

Each rule (``sgd_update``, ``adam_update``) updates the parameters and its state in place; the
optimizer classes of ``gpunn.nn.optim`` hold the hyperparameters, the state arrays and the step
count. Hyperparameters mean what they mean in ``torch.optim``, so a gpunn run can be compared
with a PyTorch run line by line.
"""

from __future__ import annotations

import math
from typing import Any

Array = Any  # a numpy.ndarray or a cupy.ndarray

# ------------------------------------------------------------------------------------------
# Update rules (reference math; the GPU fast path repeats exactly these)
# ------------------------------------------------------------------------------------------


def sgd_update(
    p: Array,
    g: Array,
    buf: Array | None,
    *,
    lr: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    xp: Any,
) -> None:
    """One torch.optim.SGD step (dampening 0) on flat arrays, in place.

    d   = g + weight_decay * p
    buf = momentum * buf + d          (buf starts at 0, so the first step gives buf = d)
    d   = d + momentum * buf  if nesterov  else  buf     (only when momentum > 0)
    p   = p - lr * d
    """
    d = g + weight_decay * p if weight_decay else g
    if momentum:
        buf *= momentum
        buf += d
        d = d + momentum * buf if nesterov else buf
    p -= lr * d


def adam_update(
    p: Array,
    g: Array,
    m: Array,
    v: Array,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    xp: Any,
) -> None:
    """One torch.optim.Adam (``decoupled=False``) or AdamW (``decoupled=True``) step, in place.

        Adam:  d = g + weight_decay * p          AdamW:  p = p * (1 - lr * weight_decay); d = g
        m = beta1 * m + (1 - beta1) * d
        v = beta2 * v + (1 - beta2) * d^2
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    ``step`` is t, counted from 1. The bias corrections undo the zero start of m and v.
    """
    if weight_decay and decoupled:
        p *= 1 - lr * weight_decay
        d = g
    else:
        d = g + weight_decay * p if weight_decay else g
    m *= beta1
    m += (1 - beta1) * d
    v *= beta2
    v += (1 - beta2) * (d * d)
    step_size = lr / (1 - beta1**step)
    denom = xp.sqrt(v)
    denom /= math.sqrt(1 - beta2**step)
    denom += eps
    p -= step_size * (m / denom)
