"""Losses computed from logits, averaged over the batch; each forward sits above its backward.

Working from logits (not probabilities) lets every loss use a numerically stable form:
log-sum-exp shifted by the row maximum for softmax cross-entropy, and
``max(z, 0) - z*y + log1p(exp(-|z|))`` for binary cross-entropy. An empty batch has loss 0 and
an empty gradient on every backend.

Per-sample weights: every function takes ``weights`` (N,) (None: all ones) and then returns the
weighted mean ``sum_n w_n l_n / sum_n w_n`` (what ``numpy.average(..., weights=w)`` and
scikit-learn compute), with the gradient ``w_n dl_n/dz_n / sum_n w_n``. A batch whose weights sum
to 0 has loss 0 and gradient 0 (it has nothing to learn from).

Also here: the Poisson deviance from log-rates and the L2 weight penalty, the two other terms of
scikit-learn's MLP objectives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpunn.math.activations import sigmoid_forward

Array = Any  # a numpy.ndarray or a cupy.ndarray

# ------------------------------------------------------------------------------------------
# Softmax cross-entropy (integer class labels)
# ------------------------------------------------------------------------------------------


def softmax_cross_entropy_forward(
    z: Array, y: Array, *, xp: Any, weights: Array | None = None
) -> tuple[Array, Array]:
    """Mean of logsumexp(z_n) - z_n[y_n] over the batch; z (N, C), y (N,) ints -> (loss, p).

    Also returns p = softmax(z) (N, C), which is all the backward needs. With ``weights`` (N,)
    the mean is the weighted mean sum_n w_n l_n / sum_n w_n. A label outside
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
    if weights is None:
        loss = log_sum_e.sum() / max(n, 1)
    else:
        loss = (weights * log_sum_e).sum() / _weight_total(weights, xp)
    return xp.asarray(loss), xp.ascontiguousarray(s.T)


def softmax_cross_entropy_backward(
    p: Array, y: Array, *, xp: Any, weights: Array | None = None
) -> Array:
    """dz = (softmax(z) - onehot(y)) / N, shape (N, C); weighted: w_n (p_n - onehot) / sum(w).

    Overwrites p.

    A label outside [0, C) has no one-hot: its row is softmax(z) / N (finite; the forward's
    NaN loss is what reports it), and no other class is touched.
    """
    n, c = p.shape
    valid = (y >= 0) & (y < c)  # (N,)
    p[xp.arange(n), xp.where(valid, y, 0)] -= valid  # 1 at a valid label, 0 for a bad one
    if weights is None:
        p /= max(n, 1)
    else:
        p *= (weights / _weight_total(weights, xp))[:, None]  # (N, 1) broadcast over classes
    return p


# ------------------------------------------------------------------------------------------
# Binary cross-entropy (labels 0/1: one logit per sample, or K independent labels per sample)
# ------------------------------------------------------------------------------------------


def binary_cross_entropy_forward(
    z: Array, y: Array, *, xp: Any, weights: Array | None = None
) -> Array:
    """Mean over samples of the sum over labels of max(z, 0) - z*y + log1p(exp(-|z|)).

    z and y of the same shape: (N,), (N, 1), or (N, K) for K labels per sample (multilabel).
    This equals -y log sigmoid(z) - (1 - y) log(1 - sigmoid(z)) but never takes the log of 0
    and never overflows exp, however large |z| is. ``weights`` (N,): weighted mean over samples.
    """
    per_element = xp.maximum(z, 0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))
    if weights is None:
        return xp.asarray(per_element.sum() / max(z.shape[0], 1))
    per_sample = per_element.reshape(z.shape[0], -1).sum(axis=1)  # (N,) summed over labels
    return xp.asarray((weights * per_sample).sum() / _weight_total(weights, xp))


def binary_cross_entropy_backward(
    z: Array, y: Array, *, xp: Any, weights: Array | None = None
) -> Array:
    """dz = (sigmoid(z) - y) / N, shape of z; weighted: w_n (sigmoid(z_n) - y_n) / sum(w)."""
    dz = sigmoid_forward(z, xp=xp)
    dz -= y
    if weights is None:
        dz /= max(z.shape[0], 1)
    else:
        dz *= _per_sample(weights / _weight_total(weights, xp), z.ndim)
    return dz


# ------------------------------------------------------------------------------------------
# Mean squared error (mean over all elements)
# ------------------------------------------------------------------------------------------


def mean_squared_error_forward(
    z: Array, y: Array, *, xp: Any, weights: Array | None = None
) -> tuple[Array, Array]:
    """Mean of (z - y)^2 over every element -> (loss, residual z - y).

    With ``weights`` (N,): sum_n w_n sum_k r_nk^2 / (sum_n w_n * K), the weighted mean over
    samples of the mean over the K outputs (all ones gives the plain mean).
    """
    r = z - y
    if weights is None:
        return xp.asarray((r * r).sum() / max(r.size, 1)), r
    per_sample = (r * r).reshape(z.shape[0], -1).sum(axis=1)  # (N,)
    outputs = max(r.size // max(z.shape[0], 1), 1)
    return xp.asarray((weights * per_sample).sum() / (_weight_total(weights, xp) * outputs)), r


def mean_squared_error_backward(r: Array, *, xp: Any, weights: Array | None = None) -> Array:
    """dz = 2 (z - y) / size, from the residual; weighted: 2 w_n r_n / (sum(w) K). Overwrites r."""
    if weights is None:
        r *= 2.0 / max(r.size, 1)
        return r
    outputs = max(r.size // max(r.shape[0], 1), 1)
    r *= _per_sample(weights * (2.0 / outputs) / _weight_total(weights, xp), r.ndim)
    return r


# ------------------------------------------------------------------------------------------
# Poisson deviance (targets y >= 0, log-rate logits z = log(mu))
# ------------------------------------------------------------------------------------------
#
# The model outputs z = log(mu), so mu = exp(z) > 0 for any z. Per target,
#     l(z, y) = y log(y / mu) - y + mu = y log y - y z - y + exp(z)      (0 log 0 = 0)
#     dl/dz   = exp(z) - y
# which is scikit-learn's ``poisson_loss`` (half the Poisson deviance 2 (y log(y/mu) - y + mu)).
# The loss of a sample is the sum over its outputs; the batch loss the (weighted) mean over samples.


def poisson_deviance_forward(
    z: Array, y: Array, *, xp: Any, weights: Array | None = None
) -> tuple[Array, Array]:
    """Mean over samples of sum_k (y log y - y z - y + exp(z)); z, y (N, K) -> (loss, exp(z))."""
    mu = xp.exp(z)
    positive = y > 0
    y_log_y = xp.where(positive, y * xp.log(xp.where(positive, y, 1)), 0)  # 0 log 0 = 0
    per_element = y_log_y - y * z - y + mu
    n = z.shape[0]
    if weights is None:
        return xp.asarray(per_element.sum() / max(n, 1)), mu
    per_sample = per_element.reshape(n, -1).sum(axis=1)  # (N,)
    return xp.asarray((weights * per_sample).sum() / _weight_total(weights, xp)), mu


def poisson_deviance_backward(
    mu: Array, y: Array, *, xp: Any, weights: Array | None = None
) -> Array:
    """dz = (exp(z) - y) / N from mu = exp(z); weighted: w_n (mu_n - y_n) / sum(w).

    Overwrites mu.
    """
    mu -= y
    if weights is None:
        mu /= max(mu.shape[0], 1)
    else:
        mu *= _per_sample(weights / _weight_total(weights, xp), mu.ndim)
    return mu


# ------------------------------------------------------------------------------------------
# L2 weight penalty (scikit-learn's ``alpha``)
# ------------------------------------------------------------------------------------------
#
# scikit-learn's MLP adds 0.5 * alpha * sum_l ||W_l||^2 / n to the data loss of a batch, where n
# is the batch's number of samples (its sum of sample weights when there are weights); biases
# are not penalised. Unlike ``weight_decay`` of the optimizers (torch's rule, applied by the
# optimizer to every parameter), this is part of the loss, so it reaches any optimizer, L-BFGS
# included. ``n`` may be a number or a 0-d device array (a sum of weights): nothing is read back.


def l2_penalty_forward(weights: Sequence[Array], *, alpha: float, n: Any, xp: Any) -> Array:
    """0.5 * alpha * sum_l ||W_l||^2 / n as a 0-d float64 array; weights: the (in, out) matrices."""
    total = xp.zeros((), dtype=xp.float64)
    for W in weights:
        flat = W.reshape(-1)  # a view: parameters are contiguous slices of the flat buffer
        total += xp.dot(flat, flat)  # ||W||^2, one BLAS dot
    return total * (0.5 * alpha) / n


def l2_penalty_backward(
    weights: Sequence[Array],
    grads: Sequence[Array],
    *,
    alpha: float,
    n: Any,
    xp: Any,
    work: Sequence[Array] | None = None,
) -> None:
    """dW_l += alpha / n * W_l for each weight matrix, in place: d/dW (alpha/2n) ||W||^2.

    ``work``: optional arrays shaped like ``weights`` to hold alpha/n * W_l, so that a training
    loop allocates nothing per step (a fresh temporary of a large W costs more than the multiply).
    """
    scale = alpha / n  # a float, or a 0-d device array when n is a device sum of weights
    for i, (W, dW) in enumerate(zip(weights, grads, strict=True)):
        dW += scale * W if work is None else xp.multiply(W, scale, out=work[i])


# ------------------------------------------------------------------------------------------
# Helpers of the weighted means
# ------------------------------------------------------------------------------------------


def _weight_total(weights: Array, xp: Any) -> Array:
    """sum(w) as a 0-d array, with 1 in place of 0 (an all-zero batch then gives loss 0)."""
    total = weights.sum()
    return xp.where(total == 0, xp.ones_like(total), total)


def _per_sample(w: Array, ndim: int) -> Array:
    """Per-sample factors (N,) shaped to broadcast over an array of ``ndim`` dimensions."""
    return w if ndim == 1 else w.reshape((-1,) + (1,) * (ndim - 1))
