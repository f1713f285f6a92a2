"""Batch normalisation per channel: its forward, and directly below it, its backward.

x is (N, C) (BatchNorm1D) or (N, C, H, W) (BatchNorm2D); axis 1 holds the channels, and each
channel's statistics are taken over every other axis (m = N, or N*H*W, values per channel).
The formulas and the running-statistics rule are PyTorch's:

    training:   mean, var = batch mean and *biased* variance of each channel
    inference:  mean, var = the running statistics
    x_hat = (x - mean) / sqrt(var + eps),   y = gamma * x_hat + beta
    running = (1 - momentum) * running + momentum * statistic   (the variance unbiased, m/(m-1))

Inputs may have any strides; results follow x's memory order.
"""

from __future__ import annotations

from typing import Any

Array = Any  # a numpy.ndarray or a cupy.ndarray
Cache = tuple[Array, Array, Array, Array]  # x_hat (x's shape), inv_std, mean, var (C,)


def channel_axes(ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The axes reduced per channel and the shape that broadcasts a (C,) vector, for ndim axes:
    2 -> ((0,), (1, -1)); 4 -> ((0, 2, 3), (1, -1, 1, 1))."""
    return (0, *range(2, ndim)), (1, -1) + (1,) * (ndim - 2)


def batch_norm_forward(
    x: Array,
    gamma: Array,
    beta: Array,
    *,
    xp: Any,
    eps: float = 1e-5,
    training: bool = True,
    running_mean: Array | None = None,
    running_var: Array | None = None,
) -> tuple[Array, Cache]:
    """x (N, C) or (N, C, H, W), gamma, beta (C,) -> (y (x's shape), cache for the backward).

    Training normalises with this batch's mean and biased variance; inference with
    ``running_mean`` and ``running_var``. The cache is (x_hat, inv_std, mean, var): the
    backward reads the first two, :func:`batch_norm_update_running` the last two. The variance
    is kept itself rather than recomputed from inv_std, which would lose float32 precision
    for small variances.
    """
    axes, bshape = channel_axes(x.ndim)
    if training:
        if x.size // x.shape[1] < 2:
            raise ValueError(
                "BatchNorm needs more than 1 value per channel to train (it divides by the "
                f"batch's spread), got input of shape {tuple(x.shape)}"
            )
        mean = x.mean(axis=axes)  # (C,)
        centred = x - mean.reshape(bshape)  # x's shape
        var = (centred * centred).mean(axis=axes)  # (C,), biased: what normalises the batch
    else:
        mean, var = running_mean, running_var  # (C,), (C,)
        centred = x - mean.reshape(bshape)  # x's shape
    inv_std = 1.0 / xp.sqrt(var + eps)  # (C,)
    x_hat = centred  # x's shape, now normalised in place: zero mean, unit variance per channel
    x_hat *= inv_std.reshape(bshape)
    y = x_hat * gamma.reshape(bshape)  # x's shape
    y += beta.reshape(bshape)
    return y, (x_hat, inv_std, mean, var)


def batch_norm_backward(
    dy: Array,
    cache: Cache,
    gamma: Array,
    *,
    xp: Any,
    dgamma: Array,
    dbeta: Array,
    training: bool = True,
) -> Array:
    """Write dL/dgamma, dL/dbeta (C,); return dL/dx (dy's shape).

    dbeta = sum(dy) and dgamma = sum(dy * x_hat), summed over every axis but 1. With m values
    per channel, training mode differentiates through the batch mean and variance as well:
    x_hat = (x - mean) * inv_std gives
        dx = gamma * inv_std * (dy - dbeta / m - x_hat * dgamma / m)
    (the two subtracted terms are mean(dy) and x_hat * mean(dy * x_hat), per channel).
    Inference mode uses fixed statistics, so dx = gamma * inv_std * dy.
    """
    x_hat, inv_std = cache[0], cache[1]
    axes, bshape = channel_axes(dy.ndim)
    xp.sum(dy, axis=axes, out=dbeta)
    xp.sum(dy * x_hat, axis=axes, out=dgamma)
    scale = (gamma * inv_std).reshape(bshape)  # (1, C, 1, ...)
    if not training:
        return dy * scale
    m = dy.size // dy.shape[1]
    dx = x_hat * (dgamma / m).reshape(bshape)  # dy's shape
    dx += (dbeta / m).reshape(bshape)
    xp.subtract(dy, dx, out=dx)
    dx *= scale
    return dx


def batch_norm_update_running(
    running_mean: Array,
    running_var: Array,
    cache: Cache,
    count: int,
    *,
    xp: Any,
    momentum: float = 0.1,
) -> None:
    """PyTorch's rule, in place: running = (1 - momentum) * running + momentum * statistic.

    ``count`` is m, the values per channel of the batch. The variance fed in is the unbiased
    var * m / (m - 1), although the batch itself was normalised with the biased one.
    """
    mean, var = cache[2], cache[3]
    running_mean *= 1.0 - momentum
    running_mean += momentum * mean
    running_var *= 1.0 - momentum
    running_var += (momentum * count / (count - 1)) * var
