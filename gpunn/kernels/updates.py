"""Optimizer updates over the flat parameter buffer, each one elementwise kernel.

``gpunn.math.optim.sgd_update`` and ``adam_update`` are written as whole-array NumPy/CuPy
expressions: 4 to 12 launches and as many temporaries per step. The kernels below read g, p
and the state once and write p and the state once, with the same operations in the same order
(per element). Scalars that depend only on the step (bias corrections, 1 - beta) are computed
on the host in float64, as the reference does, and passed in.
"""

from __future__ import annotations

import math
from typing import Any

from gpunn.backend import host_rng
from gpunn.kernels.spec import Array, Elementwise, KernelSpec, elementwise
from gpunn.math.optim import adam_update, sgd_update

# ------------------------------------------------------------------------------------------
# SGD (torch.optim.SGD, dampening 0)
# ------------------------------------------------------------------------------------------

SGD_PLAIN = Elementwise(
    "gpunn_sgd_plain",
    "T g, T lr, T weight_decay",
    "T p",
    """T d = g;
if (weight_decay != (T)0) d = g + weight_decay * p;   // L2 term: d/dp (wd/2) p^2
p = p - lr * d;""",
)

SGD_MOMENTUM = Elementwise(
    "gpunn_sgd_momentum",
    "T g, T lr, T momentum, T weight_decay, int32 nesterov",
    "T p, T buf",
    """T d = g;
if (weight_decay != (T)0) d = g + weight_decay * p;
buf = momentum * buf + d;                  // buf starts at 0: the first step gives buf = d
d = nesterov ? d + momentum * buf : buf;   // Nesterov looks one momentum step ahead
p = p - lr * d;""",
)


#: the reference is the update rule itself
sgd_update_reference = sgd_update


def _build_sgd(xp: Any) -> Any:
    def sgd_update_fused(
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
        """Fused form of gpunn.math.optim.sgd_update: one kernel updating p (and buf) in place."""
        if momentum:
            kernel = elementwise(xp, SGD_MOMENTUM)
            kernel(g, lr, momentum, weight_decay, int(bool(nesterov)), p, buf)
        else:
            elementwise(xp, SGD_PLAIN)(g, lr, weight_decay, p)

    return sgd_update_fused


def _probe_sgd(impl: Any, xp: Any) -> list[Any]:
    rng = host_rng(11)
    outs = []
    for dtype in ("float32", "float64"):
        for momentum, nesterov, wd in (
            (0.0, False, 0.0),
            (0.0, False, 0.01),
            (0.9, False, 0.0),
            (0.9, True, 0.01),
        ):
            p = xp.asarray(rng.standard_normal(333), dtype=dtype)
            buf = xp.zeros_like(p) if momentum else None
            for _ in range(2):  # the second step sees a non-zero momentum buffer
                g = xp.asarray(rng.standard_normal(333), dtype=dtype)
                impl(
                    p, g, buf, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd, xp=xp
                )
            outs += [p] if buf is None else [p, buf]
    return outs


SGD_UPDATE = KernelSpec(
    name="sgd_update",
    repeats=("gpunn.math.optim.sgd_update",),
    reference=sgd_update_reference,
    build_fused=_build_sgd,
    probe=_probe_sgd,
)


# ------------------------------------------------------------------------------------------
# Adam / AdamW (torch.optim.Adam, torch.optim.AdamW)
# ------------------------------------------------------------------------------------------

ADAM = Elementwise(
    "gpunn_adam",
    "T g, T beta1, T beta2, T one_minus_beta1, T one_minus_beta2, T step_size, "
    "T bias2_sqrt, T eps, T weight_decay, T decay, int32 decoupled",
    "T p, T m, T v",
    """T d = g;
if (weight_decay != (T)0) {
    if (decoupled) p = p * decay;           // AdamW: p *= 1 - lr wd, outside the moments
    else d = g + weight_decay * p;          // Adam: L2 term added to the gradient
}
m = beta1 * m + one_minus_beta1 * d;        // first moment
v = beta2 * v + one_minus_beta2 * (d * d);  // second moment
// p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
const T denom = sqrt(v) / bias2_sqrt + eps;
p = p - step_size * (m / denom);""",
)


adam_update_reference = adam_update


def _build_adam(xp: Any) -> Any:
    def adam_update_fused(
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
        """Fused form of gpunn.math.optim.adam_update: one kernel updating p, m and v in place."""
        step_size = lr / (1 - beta1**step)  # host float64, as in the reference
        bias2_sqrt = math.sqrt(1 - beta2**step)
        decay = 1 - lr * weight_decay
        elementwise(xp, ADAM)(
            g,
            beta1,
            beta2,
            1 - beta1,
            1 - beta2,
            step_size,
            bias2_sqrt,
            eps,
            weight_decay,
            decay,
            int(bool(decoupled)),
            p,
            m,
            v,
        )

    return adam_update_fused


def _probe_adam(impl: Any, xp: Any) -> list[Any]:
    rng = host_rng(13)
    outs = []
    for dtype in ("float32", "float64"):
        for wd, decoupled in ((0.0, False), (0.01, False), (0.01, True)):
            p = xp.asarray(rng.standard_normal(333), dtype=dtype)
            m, v = xp.zeros_like(p), xp.zeros_like(p)
            for step in (1, 2):
                g = xp.asarray(rng.standard_normal(333), dtype=dtype)
                impl(
                    p,
                    g,
                    m,
                    v,
                    step=step,
                    lr=0.01,
                    beta1=0.9,
                    beta2=0.999,
                    eps=1e-8,
                    weight_decay=wd,
                    decoupled=decoupled,
                    xp=xp,
                )
            outs += [p, m, v]
    return outs


ADAM_UPDATE = KernelSpec(
    name="adam_update",
    repeats=("gpunn.math.optim.adam_update",),
    reference=adam_update_reference,
    build_fused=_build_adam,
    probe=_probe_adam,
)

SOURCES = [SGD_PLAIN, SGD_MOMENTUM, ADAM]
