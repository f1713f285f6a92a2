"""Binary cross-entropy loss and its gradient in one elementwise pass, plus one sum.

Per element, with e = exp(-|z|) <= 1 (so neither exp nor log1p can overflow):

    loss_i = (max(z, 0) - z y + log1p(e)) / n          n = max(N, 1)
    dz_i   = (sigmoid(z) - y) / n,   sigmoid(z) = 1/(1+e) for z >= 0, e/(1+e) otherwise

d/dz [max(z,0) - z y + log1p(exp(-|z|))] = sigmoid(z) - y: the softplus form of
-y log sigmoid(z) - (1-y) log(1 - sigmoid(z)).
"""

from __future__ import annotations

from typing import Any

from gpunn.backend import host_rng
from gpunn.kernels.spec import Array, Elementwise, KernelSpec, elementwise
from gpunn.math import losses

SOURCE = Elementwise(
    "gpunn_bce_forward_backward",
    "T z, T y, T n",
    "T loss, T dz",
    """const T e = exp(-fabs(z));
loss = ((z > (T)0 ? z : (T)0) - z * y + log1p(e)) / n;  // max(z, 0) - z y + softplus(-|z|)
dz = ((z >= (T)0 ? (T)1 : e) / ((T)1 + e) - y) / n;""",
)

SOURCES = [SOURCE]


def binary_cross_entropy_reference(z: Array, y: Array, *, xp: Any) -> tuple[Array, Array]:
    """(mean loss as a 0-d array, dlogits of z's shape) for logits z (N,) or (N, 1), y 0/1.

    Reference: ``gpunn.math.losses.binary_cross_entropy_forward`` and ``..._backward``; y has
    z's shape and dtype (as ``BinaryCrossEntropy.forward`` prepares it).
    """
    loss = losses.binary_cross_entropy_forward(z, y, xp=xp)
    return loss, losses.binary_cross_entropy_backward(z, y, xp=xp)


def _build(xp: Any) -> Any:
    def binary_cross_entropy_fused(z: Array, y: Array, *, xp: Any) -> tuple[Array, Array]:
        """Fused form of binary_cross_entropy_reference (one elementwise kernel + one sum)."""
        n = z.dtype.type(max(z.shape[0], 1))
        loss_terms, dz = elementwise(xp, SOURCE)(z, y.astype(z.dtype, copy=False), n)
        return loss_terms.sum(), dz

    return binary_cross_entropy_fused


def _probe(impl: Any, xp: Any) -> list[Any]:
    rng = host_rng(7)
    outs = []
    for dtype in ("float32", "float64"):
        for shape in ((9,), (4, 1), (0,)):
            z = xp.asarray(rng.standard_normal(shape) * 5, dtype=dtype)
            y = xp.asarray(rng.integers(0, 2, size=shape), dtype=dtype)
            outs += list(impl(z, y, xp=xp))
    return outs


BINARY_CROSS_ENTROPY = KernelSpec(
    name="binary_cross_entropy",
    repeats=(
        "gpunn.math.losses.binary_cross_entropy_forward",
        "gpunn.math.losses.binary_cross_entropy_backward",
    ),
    reference=binary_cross_entropy_reference,
    build_fused=_build,
    probe=_probe,
)
