"""Per-sample weights in the hand-written losses, multilabel binary cross-entropy, the Poisson
deviance and the L2 penalty: float64 gradient checks, known identities, PyTorch as an oracle, and
every backend (the `backend` fixture) including the device-rule emulation of CuPy."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn
from gpunn.math.losses import (
    binary_cross_entropy_backward,
    binary_cross_entropy_forward,
    l2_penalty_backward,
    l2_penalty_forward,
    mean_squared_error_backward,
    mean_squared_error_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from gpunn.nn.losses import PoissonDeviance
from gpunn.testing import check_function_gradients, check_loss_gradients

EPS = 1e-5


class Weighted(gpunn.Loss):
    """A loss with its sample weights bound, for gpunn.testing.check_loss_gradients."""

    def __init__(self, inner: gpunn.Loss, w: np.ndarray) -> None:
        self.inner, self.w = inner, w

    def forward(self, logits, y, sample_weight=None):
        return self.inner.forward(logits, y, sample_weight=self.w)

    def backward(self):
        return self.inner.backward()


def cases(rng, n=6):
    """(loss class, logits shape, labels) for each loss and target shape."""
    return {
        "ce": (gpunn.SoftmaxCrossEntropy, (n, 4), rng.integers(0, 4, n)),
        "bce-n": (gpunn.BinaryCrossEntropy, (n,), rng.integers(0, 2, n).astype(float)),
        "bce-n1": (gpunn.BinaryCrossEntropy, (n, 1), rng.integers(0, 2, (n, 1)).astype(float)),
        "bce-nk": (gpunn.BinaryCrossEntropy, (n, 3), rng.integers(0, 2, (n, 3)).astype(float)),
        "mse": (gpunn.MeanSquaredError, (n, 3), rng.standard_normal((n, 3))),
        "mse-n1": (gpunn.MeanSquaredError, (n, 1), rng.standard_normal((n, 1))),
        "poisson": (PoissonDeviance, (n, 2), rng.poisson(2.0, (n, 2)).astype(float)),
    }


CASE_NAMES = sorted(cases(np.random.default_rng(0)))


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_loss_gradient_check(case, seed):
    rng = np.random.default_rng(seed)
    cls, shape, y = cases(rng)[case]
    z = rng.standard_normal(shape) * 2
    w = rng.uniform(0, 3, shape[0])
    w[0] = 0.0  # a zero weight is allowed
    assert check_loss_gradients(Weighted(cls(), w), z, y, eps=EPS) <= 1e-6


@pytest.mark.parametrize("case", CASE_NAMES)
def test_integer_weights_equal_repeated_samples(backend, case):
    """sum w l / sum w with integer w is the plain mean over the repeated rows, and the
    gradient of a row is the summed gradient of its copies."""
    rng = np.random.default_rng(3)
    cls, shape, y = cases(rng)[case]
    z = rng.standard_normal(shape)
    w = np.array([0, 1, 2, 3, 1, 2])
    weighted = cls()
    value_w = float(weighted.forward(backend.asarray(z), backend.asarray(y), backend.asarray(w)))
    grad_w = backend.to_numpy(weighted.backward())
    repeated = cls()
    zr, yr = np.repeat(z, w, axis=0), np.repeat(y, w, axis=0)
    value_r = float(repeated.forward(backend.asarray(zr), backend.asarray(yr)))
    grad_r = backend.to_numpy(repeated.backward())
    np.testing.assert_allclose(value_w, value_r, rtol=1e-12)
    owner = np.repeat(np.arange(len(w)), w)  # which original row each repeated row came from
    summed = np.zeros_like(grad_w)
    np.add.at(summed, owner, grad_r)
    np.testing.assert_allclose(grad_w, summed, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_unit_weights_give_the_unweighted_loss(backend, case):
    rng = np.random.default_rng(4)
    cls, shape, y = cases(rng)[case]
    z = backend.asarray(rng.standard_normal(shape))
    plain, weighted = cls(), cls()
    v0 = float(plain.forward(z, backend.asarray(y)))
    g0 = backend.to_numpy(plain.backward()).copy()
    ones = backend.asarray(np.ones(shape[0]))
    v1 = float(weighted.forward(z, backend.asarray(y), sample_weight=ones))
    np.testing.assert_allclose(v1, v0, rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(weighted.backward()), g0, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_all_zero_weights_give_loss_0_and_gradient_0(backend, case):
    rng = np.random.default_rng(5)
    cls, shape, y = cases(rng)[case]
    loss = cls()
    zeros = backend.asarray(np.zeros(shape[0]))
    value = loss.forward(backend.asarray(rng.standard_normal(shape)), backend.asarray(y), zeros)
    assert float(value) == 0.0
    assert not backend.to_numpy(loss.backward()).any()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weighted_losses_keep_the_logits_dtype(backend, dtype):
    rng = np.random.default_rng(6)
    for cls, shape, y in cases(rng).values():
        loss = cls()
        z = backend.asarray(rng.standard_normal(shape), dtype=dtype)
        value = loss.forward(z, backend.asarray(y), backend.asarray(rng.uniform(size=shape[0])))
        assert loss.backward().dtype == z.dtype and loss.backward().shape == z.shape
        assert np.isfinite(float(value))


def test_weights_of_the_wrong_shape_are_refused(backend):
    z = backend.asarray(np.zeros((4, 3)))
    for loss, y in (
        (gpunn.SoftmaxCrossEntropy(), [0, 1, 2, 0]),
        (gpunn.BinaryCrossEntropy(), np.zeros((4, 3))),
        (gpunn.MeanSquaredError(), np.zeros((4, 3))),
    ):
        with pytest.raises(ValueError, match="sample weights"):
            loss.forward(z, backend.asarray(y), backend.asarray(np.ones(3)))


def test_multilabel_bce_is_the_sum_over_labels_averaged_over_samples(backend):
    rng = np.random.default_rng(7)
    z, y = rng.standard_normal((5, 3)), rng.integers(0, 2, (5, 3)).astype(float)
    p = 1 / (1 + np.exp(-z))
    expected = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(axis=1).mean()
    loss = gpunn.BinaryCrossEntropy()
    np.testing.assert_allclose(
        float(loss.forward(backend.asarray(z), backend.asarray(y))), expected
    )
    np.testing.assert_allclose(backend.to_numpy(loss.backward()), (p - y) / 5, rtol=1e-12)
    # a sample counts as correct when all of its labels are
    logits = backend.asarray([[1.0, -1.0], [1.0, 1.0]])
    assert int(loss.correct(logits, backend.asarray([[1, 0], [1, 0]]))) == 1
    with pytest.raises(ValueError, match="same shape"):
        loss.forward(backend.asarray(z), backend.asarray(y[:, :2]))


def test_poisson_deviance_known_value(backend):
    z = np.array([[0.0], [np.log(2.0)]])
    y = np.array([[0.0], [3.0]])
    # mu = 1, 2; l = y log(y/mu) - y + mu: 1 and 3 log(1.5) - 1
    expected = (1.0 + 3 * np.log(1.5) - 1.0) / 2
    loss = PoissonDeviance()
    np.testing.assert_allclose(
        float(loss.forward(backend.asarray(z), backend.asarray(y))), expected
    )
    np.testing.assert_allclose(backend.to_numpy(loss.backward()), (np.exp(z) - y) / 2)


def test_weighted_functions_are_the_documented_formulas():
    """Each weighted function equals numpy.average of the per-sample losses."""
    rng = np.random.default_rng(8)
    w = rng.uniform(size=5)
    z, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    value, p = softmax_cross_entropy_forward(z, y, xp=np, weights=w)
    per = np.log(np.exp(z).sum(axis=1)) - z[np.arange(5), y]
    np.testing.assert_allclose(float(value), np.average(per, weights=w))
    onehot = np.eye(3)[y]
    grad = softmax_cross_entropy_backward(p, y, xp=np, weights=w)
    expected_p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(grad, w[:, None] * (expected_p - onehot) / w.sum())
    t = rng.integers(0, 2, (5, 3)).astype(float)
    per = (np.logaddexp(0, z) - z * t).sum(axis=1)
    value = binary_cross_entropy_forward(z, t, xp=np, weights=w)
    np.testing.assert_allclose(float(value), np.average(per, weights=w))
    grad = binary_cross_entropy_backward(z, t, xp=np, weights=w)
    np.testing.assert_allclose(grad, w[:, None] * (1 / (1 + np.exp(-z)) - t) / w.sum())
    r = rng.standard_normal((5, 3))
    value, res = mean_squared_error_forward(z, r, xp=np, weights=w)
    np.testing.assert_allclose(float(value), np.average(((z - r) ** 2).mean(axis=1), weights=w))
    grad = mean_squared_error_backward(res, xp=np, weights=w)
    np.testing.assert_allclose(grad, 2 * w[:, None] * (z - r) / (w.sum() * 3))


# ------------------------------------------------------------------------------------------
# PyTorch as an oracle (float64)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["ce", "bce-nk", "bce-n", "mse", "poisson"])
def test_weighted_losses_match_torch(backend, case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(9)
    cls, shape, y = cases(rng, n=7)[case]
    z = rng.standard_normal(shape) * 2
    w = rng.uniform(0, 2, shape[0])
    zt = torch.tensor(z, requires_grad=True)
    yt, wt = torch.tensor(y), torch.tensor(w)
    if case == "ce":
        per = F.cross_entropy(zt, yt.long(), reduction="none")
    elif case.startswith("bce"):
        per = F.binary_cross_entropy_with_logits(zt, yt, reduction="none")
        per = per.reshape(shape[0], -1).sum(dim=1)
    elif case == "mse":
        per = F.mse_loss(zt, yt, reduction="none").mean(dim=1)
    else:  # torch's poisson_nll_loss(log_input) is exp(z) - y z; add y log y - y
        per = F.poisson_nll_loss(zt, yt, log_input=True, full=False, reduction="none")
        per = (per + torch.special.xlogy(yt, yt) - yt).sum(dim=1)
    expected = (wt * per).sum() / wt.sum()
    expected.backward()
    loss = cls()
    value = loss.forward(backend.asarray(z), backend.asarray(y), backend.asarray(w))
    np.testing.assert_allclose(float(value), expected.item(), rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(loss.backward()), zt.grad.numpy(), atol=1e-14)


# ------------------------------------------------------------------------------------------
# L2 penalty
# ------------------------------------------------------------------------------------------


def test_l2_penalty_value_and_gradient_check():
    rng = np.random.default_rng(10)
    shapes = [(3, 4), (4, 2)]
    sizes = [a * b for a, b in shapes]

    def split(flat):
        parts, start = [], 0
        for shape, size in zip(shapes, sizes, strict=True):
            parts.append(flat[start : start + size].reshape(shape))
            start += size
        return parts

    def forward(flat):
        return np.asarray(l2_penalty_forward(split(flat), alpha=0.3, n=5, xp=np)).reshape(1)

    def backward(dy):
        flat = x.copy()
        grads = [np.zeros(s) for s in shapes]
        l2_penalty_backward(split(flat), grads, alpha=0.3, n=5, xp=np)
        return dy[0] * np.concatenate([g.ravel() for g in grads])

    x = rng.standard_normal(sum(sizes))
    assert check_function_gradients(forward, backward, x, eps=EPS) <= 1e-6
    np.testing.assert_allclose(float(forward(x)[0]), 0.5 * 0.3 * (x**2).sum() / 5)


def test_l2_penalty_takes_a_device_weight_sum(backend):
    W = [backend.asarray(np.ones((2, 2)))]
    n = backend.asarray(np.array([1.0, 3.0])).sum()  # a 0-d device array, never read back
    np.testing.assert_allclose(float(l2_penalty_forward(W, alpha=2.0, n=n, xp=backend.xp)), 1.0)
    grads = [backend.asarray(np.zeros((2, 2)))]
    l2_penalty_backward(W, grads, alpha=2.0, n=n, xp=backend.xp)
    np.testing.assert_allclose(backend.to_numpy(grads[0]), 0.5)
    # with workspaces: the same gradient, accumulated (not overwritten), and the workspace used
    work = [backend.asarray(np.full((2, 2), 7.0))]
    l2_penalty_backward(W, grads, alpha=2.0, n=n, xp=backend.xp, work=work)
    np.testing.assert_allclose(backend.to_numpy(grads[0]), 1.0)
    np.testing.assert_allclose(backend.to_numpy(work[0]), 0.5)


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "binary_cross_entropy"])
def test_a_weighted_call_never_goes_to_the_fused_kernel(monkeypatch, name):
    """The fused kernels compute the unweighted mean: a weighted call must run the reference
    (on CuPy too), never the kernel with its weights dropped."""
    from gpunn import kernels
    from gpunn.nn import losses as nn_losses

    calls = []
    real_get = kernels.get

    def spy(kernel, xp):
        calls.append(kernel)
        return real_get(kernel, xp)

    monkeypatch.setattr(nn_losses.kernels, "get", spy)
    rng = np.random.default_rng(3)
    if name == "softmax_cross_entropy":
        loss, z, y = gpunn.SoftmaxCrossEntropy(), rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    else:
        loss, z, y = gpunn.BinaryCrossEntropy(), rng.standard_normal(5), rng.integers(0, 2, 5)
    w = np.array([0.0, 1.0, 2.0, 0.5, 3.0])
    value = float(loss.forward(z, y, sample_weight=w))
    assert calls == []  # the weighted call did not ask for the kernel
    loss.forward(z, y)
    assert calls == [name]  # the unweighted one did
    per_sample = [float(type(loss)().forward(z[i : i + 1], y[i : i + 1])) for i in range(5)]
    np.testing.assert_allclose(value, np.average(per_sample, weights=w), rtol=1e-12)
