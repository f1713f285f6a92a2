"""Tests for the convolution math (gpunn.math.conv, pool, batchnorm, flatten, conv_pool).

Each function is checked against its definition written out loop by loop, by float64 central
differences (worst relative error <= 1e-6), and against PyTorch float64 autograd (forward and
every gradient, <= 1e-9) where PyTorch is installed; max-pool ties must route the gradient where
PyTorch does, exactly. The layouts a layer uses (channel-major, batch-innermost) must give the
same numbers as C order.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpunn.math import batchnorm as bn
from gpunn.math import conv as cm
from gpunn.math import conv_pool as cp
from gpunn.math import flatten as fl
from gpunn.math import pool as pl
from gpunn.testing import numerical_gradient, relative_error

GRAD_TOL = 1e-6  # central differences, float64
TORCH_TOL = 1e-9  # PyTorch float64 autograd


def torch_or_skip():
    return pytest.importorskip("torch", reason="PyTorch is the oracle (optional)")


def tt(torch, a):
    """A float64 leaf tensor holding a copy of ``a``."""
    return torch.tensor(np.ascontiguousarray(a), dtype=torch.float64, requires_grad=True)


def close(got, want) -> float:
    """max |got - want| / max |want| (0 for an all-zero pair)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(np.abs(want).max(initial=0.0), 1e-300)
    return float(np.abs(got - want).max(initial=0.0) / scale)


def stored(a, order):
    """A copy of ``a`` kept in memory with its axes in ``order`` (outermost first)."""
    mem = np.empty(tuple(a.shape[i] for i in order), dtype=a.dtype)
    view = mem.transpose(np.argsort(order))
    view[...] = a
    return view


BATCH_LAST, CHANNEL_MAJOR = (1, 2, 3, 0), (1, 0, 2, 3)

# (N, C, H, W, O, kernel, stride, padding): the edge cases the issue names, then pairs
CONV_CASES = [
    (2, 3, 7, 6, 4, 3, 1, 0),  # odd sizes
    (1, 1, 5, 5, 1, 3, 1, 0),  # one sample, one channel, one filter
    (2, 2, 4, 5, 3, (4, 5), 1, 0),  # kernel = input size: one output pixel
    (2, 1, 3, 4, 2, (3, 4), 1, 1),  # kernel = input size, padded
    (2, 2, 9, 8, 2, 2, 3, 0),  # stride > kernel: pixels no window sees
    (2, 1, 8, 7, 2, 5, 2, 2),  # stride 2 with padding 2
    (1, 2, 7, 9, 3, (3, 2), (2, 1), (1, 2)),  # every argument a different pair
    (3, 2, 6, 6, 2, 1, 1, 0),  # 1x1 kernel
]

# (N, C, H, W, kernel, stride)
POOL_CASES = [
    (2, 3, 6, 6, 2, None),  # tiles exactly
    (2, 2, 7, 5, 2, None),  # odd sizes: the last row and column are dropped
    (1, 1, 4, 4, 4, None),  # kernel = input size
    (2, 2, 7, 7, 3, 2),  # overlapping windows
    (2, 1, 9, 8, 2, 3),  # stride > kernel
    (2, 2, 7, 9, (3, 2), (2, 3)),  # pairs
    (1, 1, 1, 1, 1, None),  # 1x1 everything
]


def conv_arrays(case, seed=0, dtype=np.float64):
    N, C, H, W, O, k, _, _ = case
    kh, kw = cm.pair(k)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    return (
        x,
        rng.standard_normal((O, C, kh, kw)).astype(dtype),
        rng.standard_normal(O).astype(dtype),
    )


def distinct(shape, seed=0):
    """Values at least 0.01 apart, so a finite-difference step never changes a maximum."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n) * 0.01 - n * 0.005).reshape(shape)


# ------------------------------------------------------------------------------------------
# im2col / col2im
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("case", CONV_CASES)
def test_im2col_holds_every_patch_and_col2im_is_its_adjoint(case, batch_last):
    N, C, H, W, _, k, s, p = case
    (kh, kw), (sh, sw), (ph, pw) = cm.pair(k), cm.pair(s), cm.pair(p)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W))
    cols = cm.im2col(x, k, s, p, xp=np, batch_last=batch_last)
    Ho, Wo = cm.output_size(H, kh, sh, ph), cm.output_size(W, kw, sw, pw)
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    want = np.empty((C, kh, kw, N, Ho, Wo))
    for n in range(N):  # the definition, one output pixel at a time
        for ho in range(Ho):
            for wo in range(Wo):
                want[:, :, :, n, ho, wo] = xpad[
                    n, :, ho * sh : ho * sh + kh, wo * sw : wo * sw + kw
                ]
    if batch_last:
        want = want.transpose(0, 1, 2, 4, 5, 3)  # columns (ho, wo, n)
    np.testing.assert_array_equal(cols, want.reshape(C * kh * kw, N * Ho * Wo))
    # adjoint: <im2col(x), R> = <x, col2im(R)> for every x and R
    R = rng.standard_normal(cols.shape)
    back = cm.col2im(R, x.shape, k, s, p, xp=np, batch_last=batch_last)
    assert abs((cols * R).sum() - (x * back).sum()) <= 1e-12 * np.abs(cols * R).sum()


# ------------------------------------------------------------------------------------------
# Conv2D
# ------------------------------------------------------------------------------------------


def conv_grads(x, W, b, R, s, p, batch_last):
    y, cols = cm.conv2d_forward(x, W, b, stride=s, padding=p, xp=np, batch_last=batch_last)
    dW, db = np.empty_like(W), np.empty_like(b)
    dx = cm.conv2d_backward(
        R, cols, W, x.shape, stride=s, padding=p, xp=np, dW=dW, db=db, batch_last=batch_last
    )
    return y, dx, dW, db


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients_by_central_differences(case):
    x, W, b = conv_arrays(case, seed=2)
    s, p = case[6], case[7]
    y = cm.conv2d_forward(x, W, b, stride=s, padding=p, xp=np)[0]
    R = np.random.default_rng(3).standard_normal(y.shape)
    _, dx, dW, db = conv_grads(x, W, b, R, s, p, batch_last=True)

    def f():
        return float((cm.conv2d_forward(x, W, b, stride=s, padding=p, xp=np)[0] * R).sum())

    for name, arr, grad in (("x", x, dx), ("W", W, dW), ("b", b, db)):
        err = relative_error(grad, numerical_gradient(f, arr, 1e-6))
        assert err <= GRAD_TOL, (name, err)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(case):
    torch = torch_or_skip()
    x, W, b = conv_arrays(case, seed=4)
    s, p = case[6], case[7]
    xt, Wt, bt = tt(torch, x), tt(torch, W), tt(torch, b)
    yt = torch.nn.functional.conv2d(xt, Wt, bt, stride=s, padding=p)
    R = np.random.default_rng(5).standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(R))
    for batch_last in (False, True):
        y, dx, dW, db = conv_grads(x, W, b, R, s, p, batch_last)
        assert close(y, yt.detach().numpy()) <= TORCH_TOL
        assert close(dx, xt.grad.numpy()) <= TORCH_TOL
        assert close(dW, Wt.grad.numpy()) <= TORCH_TOL
        assert close(db, bt.grad.numpy()) <= TORCH_TOL


@pytest.mark.parametrize("order", [(0, 1, 2, 3), CHANNEL_MAJOR, BATCH_LAST])
def test_conv2d_reads_and_writes_any_layout_and_reuses_workspaces(order):
    case = (3, 2, 9, 8, 4, 3, 1, 1)
    x, W, b = conv_arrays(case, seed=6)
    N, C, H, Wd, O = case[:5]
    batch_last = order == BATCH_LAST
    y_ref, cols_ref = cm.conv2d_forward(x, W, b, padding=1, xp=np)
    dy = np.random.default_rng(7).standard_normal(y_ref.shape)
    dW_ref, db_ref = np.empty_like(W), np.empty_like(b)
    dx_ref = cm.conv2d_backward(dy, cols_ref, W, x.shape, padding=1, xp=np, dW=dW_ref, db=db_ref)
    padded = stored(np.zeros((N, C, H + 2, Wd + 2)), order)
    cols, z = np.empty_like(cols_ref), np.empty((O, N * H * Wd))
    dpad = stored(np.zeros((N, C, H + 2, Wd + 2)), order)
    kw = dict(padding=1, xp=np, batch_last=batch_last)
    for _ in range(2):  # the second call reuses every buffer (the padded border stays zero)
        y, _ = cm.conv2d_forward(stored(x, order), W, b, **kw, cols=cols, padded=padded, z=z)
        np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-13)
        dW, db = np.empty_like(W), np.empty_like(b)
        dx = cm.conv2d_backward(
            stored(dy, order), cols, W, x.shape, **kw, dW=dW, db=db, padded=dpad,
            dcols=np.empty_like(cols), ones=np.ones(N * H * Wd),
        )  # fmt: skip
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(dW, dW_ref, rtol=1e-13)
        np.testing.assert_allclose(db, db_ref, rtol=1e-13)
    assert np.shares_memory(y, z)  # the output is a view of the GEMM's result, never a copy


def test_conv2d_need_dx_false_and_bias_left_out():
    x, W, b = conv_arrays(CONV_CASES[0])
    y0, _ = cm.conv2d_forward(x, W, None, xp=np)
    y, cols = cm.conv2d_forward(x, W, b, xp=np)
    np.testing.assert_allclose(y - y0, np.broadcast_to(b.reshape(-1, 1, 1), y.shape), atol=1e-14)
    dW, db = np.empty_like(W), np.empty_like(b)
    out = cm.conv2d_backward(np.ones(y.shape), cols, W, x.shape, xp=np, dW=dW, db=db, need_dx=False)
    assert out is None
    np.testing.assert_allclose(db, np.full(b.shape, y[:, 0].size))


# ------------------------------------------------------------------------------------------
# Pooling
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_gradients_by_central_differences(case):
    N, C, H, W, k, s = case
    x = distinct((N, C, H, W), seed=8)
    y, arg = pl.max_pool2d_forward(x, k, s, xp=np)
    R = np.random.default_rng(9).standard_normal(y.shape)
    num = numerical_gradient(
        lambda: float((pl.max_pool2d_forward(x, k, s, xp=np)[0] * R).sum()), x, 1e-6
    )
    assert relative_error(pl.max_pool2d_backward(R, arg, x.shape, k, s, xp=np), num) <= GRAD_TOL
    num = numerical_gradient(
        lambda: float((pl.avg_pool2d_forward(x, k, s, xp=np) * R).sum()), x, 1e-6
    )
    assert relative_error(pl.avg_pool2d_backward(R, x.shape, k, s, xp=np), num) <= GRAD_TOL


@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_matches_torch_and_max_pool_ties_route_like_torch(case):
    torch = torch_or_skip()
    F = torch.nn.functional
    N, C, H, W, k, s = case
    rng = np.random.default_rng(10)
    # random values, then many ties: small integers and all zeros
    for x in (
        rng.standard_normal((N, C, H, W)),
        rng.integers(0, 3, size=(N, C, H, W)).astype(float),
        np.zeros((N, C, H, W)),
    ):
        for name in ("max", "avg"):
            xt = tt(torch, x)
            yt = (F.max_pool2d if name == "max" else F.avg_pool2d)(xt, k, s)
            R = rng.standard_normal(tuple(yt.shape))
            yt.backward(torch.from_numpy(R))
            if name == "max":
                y, arg = pl.max_pool2d_forward(x, k, s, xp=np)
                dx = pl.max_pool2d_backward(R, arg, x.shape, k, s, xp=np)
                np.testing.assert_array_equal(y, yt.detach().numpy())
                np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-15, atol=1e-15)
            else:
                y = pl.avg_pool2d_forward(x, k, s, xp=np)
                dx = pl.avg_pool2d_backward(R, x.shape, k, s, xp=np)
                assert close(y, yt.detach().numpy()) <= TORCH_TOL
                assert close(dx, xt.grad.numpy()) <= TORCH_TOL


def test_max_pool_tie_goes_to_the_first_maximum_in_row_major_order():
    x = np.array([[[[0.0, 1.0], [1.0, 1.0]]]])  # three equal maxima; (0, 1) comes first
    y, arg = pl.max_pool2d_forward(x, 2, xp=np)
    assert arg.dtype == np.uint8 and int(arg[0, 0, 0, 0]) == 1
    dx = pl.max_pool2d_backward(np.ones_like(y), arg, x.shape, 2, xp=np)
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 1.0], [0.0, 0.0]])


def test_pooling_keeps_the_input_layout():
    x = np.random.default_rng(11).standard_normal((3, 4, 8, 6))
    y_ref, arg_ref = pl.max_pool2d_forward(x, 2, xp=np)
    xs = stored(x, BATCH_LAST)
    y, arg = pl.max_pool2d_forward(xs, 2, xp=np)
    assert y.transpose(1, 2, 3, 0).flags.c_contiguous  # made in x's memory order
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg, arg_ref)
    out = stored(np.zeros(x.shape), BATCH_LAST)
    dx = pl.max_pool2d_backward(y, arg, x.shape, 2, xp=np, out=out)
    np.testing.assert_array_equal(dx, pl.max_pool2d_backward(y_ref, arg_ref, x.shape, 2, xp=np))


# ------------------------------------------------------------------------------------------
# Conv2D + 2x2 max-pool as one GEMM
# ------------------------------------------------------------------------------------------

FUSED_CASES = [  # (N, C, H, W, O, kernel, padding)
    (2, 1, 12, 12, 3, 5, 2),  # LeNet's first layer, smaller
    (2, 3, 8, 7, 2, 3, 1),  # odd conv output width: floor mode drops the last column
    (3, 2, 9, 6, 3, (2, 3), (1, 0)),  # pairs, odd conv output height
    (1, 2, 5, 5, 2, 4, 0),  # conv output 2x2: a single block; one sample
    (1, 1, 6, 6, 2, 1, 0),  # 1x1 kernel, one channel
]


@pytest.mark.parametrize("case", FUSED_CASES)
def test_conv_maxpool_as_one_gemm_equals_conv_then_pool(case):
    N, C, H, W, O, k, p = case
    kh, kw = cm.pair(k)
    rng = np.random.default_rng(12)
    x, Wt, b = (rng.standard_normal(s) for s in ((N, C, H, W), (O, C, kh, kw), (O,)))
    z, cols = cm.conv2d_forward(x, Wt, b, padding=p, xp=np)
    y_ref, arg_ref = pl.max_pool2d_forward(z, 2, xp=np)
    R = rng.standard_normal(y_ref.shape)
    dW_ref, db_ref = np.empty_like(Wt), np.empty_like(b)
    dz = pl.max_pool2d_backward(R, arg_ref, z.shape, 2, xp=np)
    dx_ref = cm.conv2d_backward(dz, cols, Wt, x.shape, padding=p, xp=np, dW=dW_ref, db=db_ref)
    for batch_last in (False, True):
        y, arg, cols4 = cp.conv2d_maxpool2_forward(
            x, Wt, b, padding=p, xp=np, batch_last=batch_last
        )
        np.testing.assert_array_equal(arg, arg_ref)  # the same winners
        np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
        dW, db = np.empty_like(Wt), np.empty_like(b)
        dx = cp.conv2d_maxpool2_backward(
            R, arg, cols4, Wt, x.shape, padding=p, xp=np, dW=dW, db=db, batch_last=batch_last
        )
        for got, want in ((dx, dx_ref), (dW, dW_ref), (db, db_ref)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv_maxpool_gradients_by_central_differences_with_ties():
    """Integer data makes tied maxima; the gradient must still be the derivative."""
    rng = np.random.default_rng(13)
    x = rng.integers(-2, 3, size=(2, 2, 7, 6)).astype(float)
    Wt = np.zeros((2, 2, 2, 2))
    Wt[0, 0, 0, 0] = 1.0  # filter 0 copies channel 0: its maxima tie as the data do
    Wt[1] = rng.standard_normal((2, 2, 2))
    b = rng.standard_normal(2)
    y, arg, cols = cp.conv2d_maxpool2_forward(x, Wt, b, padding=1, xp=np, batch_last=True)
    R = rng.standard_normal(y.shape)
    dW, db = np.empty_like(Wt), np.empty_like(b)
    dx = cp.conv2d_maxpool2_backward(
        R, arg, cols, Wt, x.shape, padding=1, xp=np, dW=dW, db=db, batch_last=True
    )
    torch = torch_or_skip()
    xt, Wtt, bt = tt(torch, x), tt(torch, Wt), tt(torch, b)
    F = torch.nn.functional
    yt = F.max_pool2d(F.conv2d(xt, Wtt, bt, padding=1), 2)
    yt.backward(torch.from_numpy(R))
    assert close(y, yt.detach().numpy()) <= TORCH_TOL
    for got, want in ((dx, xt.grad), (dW, Wtt.grad), (db, bt.grad)):
        assert close(got, want.numpy()) <= TORCH_TOL


def test_expand_weights_and_fold_are_adjoint():
    rng = np.random.default_rng(14)
    W = rng.standard_normal((3, 2, 3, 2))
    W4 = cp.expand_weights(W, xp=np)
    assert W4.shape == (3, 2, 2, 2, 4, 3)
    np.testing.assert_array_equal(W4[:, 1, 0, :, 1:4, 0:2], W)
    G = rng.standard_normal(W4.shape)
    folded = cp.fold_weight_grad(G, out=np.empty_like(W))
    assert abs((W4 * G).sum() - (W * folded).sum()) <= 1e-12 * np.abs(W4 * G).sum()


# ------------------------------------------------------------------------------------------
# Batch norm
# ------------------------------------------------------------------------------------------

BN_SHAPES = [(5, 3), (3, 4), (4, 3, 5, 6), (1, 2, 3, 3), (3, 1, 1, 2)]


def bn_arrays(shape, seed):
    rng = np.random.default_rng(seed)
    C = shape[1]
    return (
        rng.standard_normal(shape) * 2 + 0.5,
        rng.standard_normal(C),
        rng.standard_normal(C),
        rng.standard_normal(C),
        rng.random(C) + 0.5,
    )


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_gradients_by_central_differences(shape, training):
    x, gamma, beta, rmean, rvar = bn_arrays(shape, seed=15)
    kw = dict(xp=np, training=training, running_mean=rmean, running_var=rvar)
    y, cache = bn.batch_norm_forward(x, gamma, beta, **kw)
    R = np.random.default_rng(16).standard_normal(y.shape)
    dgamma, dbeta = np.empty_like(gamma), np.empty_like(beta)
    dx = bn.batch_norm_backward(
        R, cache, gamma, xp=np, dgamma=dgamma, dbeta=dbeta, training=training
    )

    def f():
        return float((bn.batch_norm_forward(x, gamma, beta, **kw)[0] * R).sum())

    for name, arr, grad in (("x", x, dx), ("gamma", gamma, dgamma), ("beta", beta, dbeta)):
        err = relative_error(grad, numerical_gradient(f, arr, 1e-6))
        assert err <= GRAD_TOL, (name, err)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_matches_torch_running_statistics_included(shape, training):
    torch = torch_or_skip()
    x, gamma, beta, rmean, rvar = bn_arrays(shape, seed=17)
    momentum, eps = 0.3, 1e-5
    xt, gt, bt = tt(torch, x), tt(torch, gamma), tt(torch, beta)
    rmt, rvt = torch.tensor(rmean), torch.tensor(rvar)
    yt = torch.nn.functional.batch_norm(xt, rmt, rvt, gt, bt, training, momentum, eps)
    R = np.random.default_rng(18).standard_normal(x.shape)
    yt.backward(torch.from_numpy(R))
    rm, rv = rmean.copy(), rvar.copy()
    y, cache = bn.batch_norm_forward(
        x, gamma, beta, xp=np, eps=eps, training=training, running_mean=rm, running_var=rv
    )
    dgamma, dbeta = np.empty_like(gamma), np.empty_like(beta)
    dx = bn.batch_norm_backward(
        R, cache, gamma, xp=np, dgamma=dgamma, dbeta=dbeta, training=training
    )
    if training:
        bn.batch_norm_update_running(rm, rv, cache, x.size // x.shape[1], xp=np, momentum=momentum)
    for got, want in (
        (y, yt.detach()), (dx, xt.grad), (dgamma, gt.grad), (dbeta, bt.grad), (rm, rmt), (rv, rvt),
    ):  # fmt: skip
        assert close(got, want.numpy()) <= TORCH_TOL
    if training:  # the running statistics really moved (unbiased variance, PyTorch's rule)
        assert not np.allclose(rv, rvar)


def test_batch_norm_refuses_one_value_per_channel_in_training():
    x, gamma, beta, rmean, rvar = bn_arrays((1, 3), seed=0)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.batch_norm_forward(x, gamma, beta, xp=np)
    y, _ = bn.batch_norm_forward(
        x, gamma, beta, xp=np, training=False, running_mean=rmean, running_var=rvar
    )
    np.testing.assert_allclose(y, gamma * (x - rmean) / np.sqrt(rvar + 1e-5) + beta)


def test_batch_norm_keeps_a_batch_innermost_layout():
    x, gamma, beta, *_ = bn_arrays((4, 3, 5, 6), seed=19)
    y_ref, _ = bn.batch_norm_forward(x, gamma, beta, xp=np)
    y, _ = bn.batch_norm_forward(stored(x, BATCH_LAST), gamma, beta, xp=np)
    np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-13)
    assert y.transpose(1, 2, 3, 0).flags.c_contiguous


# ------------------------------------------------------------------------------------------
# Flatten and dtypes
# ------------------------------------------------------------------------------------------


def test_flatten_is_c_order_from_any_layout():
    x = np.random.default_rng(20).standard_normal((2, 3, 4, 5))
    want = np.stack([x[n].ravel() for n in range(2)])  # C order of each sample: w fastest
    np.testing.assert_array_equal(fl.flatten_forward(x, xp=np), want)
    out = np.empty((2, 60))
    got = fl.flatten_forward(stored(x, BATCH_LAST), xp=np, out=out)
    assert got is out
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(fl.flatten_backward(want, x.shape, xp=np), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_function_keeps_the_dtype(dtype):
    case = (2, 3, 8, 8, 4, 3, 1, 1)
    x, W, b = conv_arrays(case, dtype=dtype)
    y, cols = cm.conv2d_forward(x, W, b, padding=1, xp=np, batch_last=True)
    dW, db = np.empty_like(W), np.empty_like(b)
    dx = cm.conv2d_backward(np.ones_like(y), cols, W, x.shape, padding=1, xp=np, dW=dW, db=db)
    p, arg = pl.max_pool2d_forward(y, 2, xp=np)
    dp = pl.max_pool2d_backward(p, arg, y.shape, 2, xp=np)
    a = pl.avg_pool2d_forward(y, 3, 2, xp=np)
    da = pl.avg_pool2d_backward(a, y.shape, 3, 2, xp=np)
    f, fa, fc = cp.conv2d_maxpool2_forward(x, W, b, padding=1, xp=np)
    gamma, beta = np.ones(4, dtype), np.zeros(4, dtype)
    yb, cache = bn.batch_norm_forward(y, gamma, beta, xp=np)
    dyb = bn.batch_norm_backward(
        yb, cache, gamma, xp=np, dgamma=np.empty_like(gamma), dbeta=np.empty_like(beta)
    )
    rm, rv = np.zeros(4, dtype), np.ones(4, dtype)
    bn.batch_norm_update_running(rm, rv, cache, y.size // 4, xp=np)
    for out in (y, cols, dx, dW, db, p, dp, a, da, f, fc, yb, dyb, rm, rv, *cache):
        assert out.dtype == dtype
