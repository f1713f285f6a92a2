"""Losses computed from logits, averaged over the batch; each forward sits above its backward.

Working from logits (not probabilities) lets every loss use a numerically stable form:
log-sum-exp shifted by the row maximum for softmax cross-entropy, and
``max(z, 0) - z*y + log1p(exp(-|z|))`` for binary cross-entropy. An empty batch has loss 0 and
an empty gradient on every backend.
"""

from __future__ import annotations

from typing import Any

from gpunn.math.activations import sigmoid_forward

Array = Any  # a numpy.ndarray or a cupy.ndarray

# ------------------------------------------------------------------------------------------
# Softmax cross-entropy (integer class labels)
# ------------------------------------------------------------------------------------------


def softmax_cross_entropy_forward(z: Array, y: Array, *, xp: Any) -> tuple[Array, Array]:
    """Mean of logsumexp(z_n) - z_n[y_n] over the batch; z (N, C), y (N,) ints -> (loss, p).

    Also returns p = softmax(z) (N, C), which is all the backward needs. A label outside
    [0, C) makes its sample's term NaN, and so the loss: the mistake shows in the loss (as in
    the fused kernel), never as the score of another class.
    """
    n, c = z.shape
    # Class-major copy s (C, N): each reduction over a sample's C classes then runs along
    # contiguous rows of length N, which NumPy vectorises; over the short last axis of (N, C)
    # it loops sample by sample (6x slower for C = 10). The copy costs one pass over z.
    s = z.T.copy()  # a copy even when N = 1 (z.T is then contiguous): z must stay intact
    s -= s.max(axis=0)  # max 0 per sample: exp cannot overflow
    # Indexing with a bad label would wrap (-1 is class C - 1) or raise on one backend and not
    # on the other: a bad label reads class 0, and its term is then made NaN. Elementwise
    # selects, not a host-side check, so nothing waits for the device.
    valid = (y >= 0) & (y < c)  # (N,)
    target = s[xp.where(valid, y, 0), xp.arange(n)]  # (N,) shifted logit of the true class
    target = xp.where(valid, target, xp.nan)
    xp.exp(s, out=s)
    sum_e = s.sum(axis=0)  # (N,), >= 1
    s /= sum_e  # s becomes softmax(z), class-major
    log_sum_e = xp.log(sum_e, out=sum_e)
    log_sum_e -= target  # per-sample loss, computed in place: no temporaries
    loss = log_sum_e.sum() / max(n, 1)
    return xp.asarray(loss), xp.ascontiguousarray(s.T)


def softmax_cross_entropy_backward(p: Array, y: Array, *, xp: Any) -> Array:
    """dz = (softmax(z) - onehot(y)) / N, shape (N, C). Overwrites p.

    A label outside [0, C) has no one-hot: its row is softmax(z) / N (finite; the forward's
    NaN loss is what reports it), and no other class is touched.
    """
    n, c = p.shape
    valid = (y >= 0) & (y < c)  # (N,)
    p[xp.arange(n), xp.where(valid, y, 0)] -= valid  # 1 at a valid label, 0 for a bad one
    p /= max(n, 1)
    return p


# ------------------------------------------------------------------------------------------
# Binary cross-entropy (labels 0/1, one logit per sample)
# ------------------------------------------------------------------------------------------


def binary_cross_entropy_forward(z: Array, y: Array, *, xp: Any) -> Array:
    """Mean of max(z, 0) - z*y + log1p(exp(-|z|)); z and y of the same shape.

    This equals -y log sigmoid(z) - (1 - y) log(1 - sigmoid(z)) but never takes the log of 0
    and never overflows exp, however large |z| is.
    """
    per_sample = xp.maximum(z, 0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))
    return xp.asarray(per_sample.sum() / max(z.shape[0], 1))


def binary_cross_entropy_backward(z: Array, y: Array, *, xp: Any) -> Array:
    """dz = (sigmoid(z) - y) / N, shape of z."""
    dz = sigmoid_forward(z, xp=xp)
    dz -= y
    dz /= max(z.shape[0], 1)
    return dz


# ------------------------------------------------------------------------------------------
# Mean squared error (mean over all elements)
# ------------------------------------------------------------------------------------------


def mean_squared_error_forward(z: Array, y: Array, *, xp: Any) -> tuple[Array, Array]:
    """Mean of (z - y)^2 over every element -> (loss, residual z - y)."""
    r = z - y
    return xp.asarray((r * r).sum() / max(r.size, 1)), r


def mean_squared_error_backward(r: Array, *, xp: Any) -> Array:
    """dz = 2 (z - y) / size, from the residual. Overwrites r."""
    r *= 2.0 / max(r.size, 1)
    return r
