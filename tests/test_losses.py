"""Tests for gpunn.losses: values, gradients, stability, shapes and agreement with PyTorch."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpunn
from gpunn.kernels.softmax_xent import softmax_cross_entropy_reference
from gpunn.testing import check_loss_gradients, fake_cupy


def host(backend, a):
    return backend.to_numpy(a).copy()


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------
# Return type and known values
# ------------------------------------------------------------------------------------------

CASES = {
    "ce": (gpunn.SoftmaxCrossEntropy, (5, 3), lambda rng: rng.integers(0, 3, 5)),
    "bce-n": (gpunn.BinaryCrossEntropy, (5,), lambda rng: rng.integers(0, 2, 5).astype(float)),
    "bce-n1": (gpunn.BinaryCrossEntropy, (5, 1), lambda rng: rng.integers(0, 2, 5).astype(float)),
    "mse": (gpunn.MeanSquaredError, (5, 2), lambda rng: rng.standard_normal((5, 2))),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_loss_is_a_0d_array_on_the_backend_and_grad_has_logits_shape(backend, case, dtype):
    cls, shape, labels = CASES[case]
    rng = np.random.default_rng(0)
    z = backend.asarray(rng.standard_normal(shape), dtype=dtype)
    y = backend.asarray(labels(rng))
    loss = cls()
    value = loss.forward(z, y)
    assert isinstance(value, backend.xp.ndarray) and value.ndim == 0
    assert np.isfinite(float(value))
    grad = loss.backward()
    assert isinstance(grad, backend.xp.ndarray) and grad.shape == z.shape


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_and_gradient_keep_the_logits_dtype(backend, case):
    """float32 logits with float64 / int targets from the host: no silent float64 math."""
    cls, shape, labels = CASES[case]
    rng = np.random.default_rng(0)
    z = backend.asarray(rng.standard_normal(shape), dtype="float32")
    y = backend.asarray(labels(rng))  # int64 or float64
    loss = cls()
    assert loss.forward(z, y).dtype == np.float32
    assert loss.backward().dtype == np.float32


@pytest.mark.parametrize("classes", [2, 3, 10, 1000])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_ce_of_equal_logits_is_log_c(backend, classes, dtype):
    z = backend.asarray(np.full((4, classes), 7.5), dtype=dtype)
    y = backend.asarray(np.arange(4) % classes)
    loss = gpunn.SoftmaxCrossEntropy()
    rtol = 1e-6 if dtype == "float32" else 1e-15
    np.testing.assert_allclose(float(loss.forward(z, y)), math.log(classes), rtol=rtol)
    expected = np.full((4, classes), 1 / classes)
    expected[np.arange(4), np.arange(4) % classes] -= 1
    np.testing.assert_allclose(host(backend, loss.backward()), expected / 4, rtol=rtol, atol=1e-9)


def test_softmax_ce_known_value_and_gradient(backend):
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, -1.0]])
    y = np.array([2, 0])
    loss = gpunn.SoftmaxCrossEntropy()
    value = float(loss.forward(backend.asarray(z), backend.asarray(y)))
    expected = np.mean([np.log(np.exp(z[n]).sum()) - z[n, y[n]] for n in range(2)])
    np.testing.assert_allclose(value, expected, rtol=1e-15)
    onehot = np.eye(3)[y]
    np.testing.assert_allclose(
        host(backend, loss.backward()), (softmax(z) - onehot) / 2, rtol=1e-14
    )


@pytest.mark.parametrize("bad", [-1, 3, -(2**40), 2**40])
def test_softmax_ce_label_outside_the_classes_is_a_nan_loss_and_a_softmax_row(backend, bad):
    """The fused kernel's contract: a NaN loss (never another class's score: -1 must not wrap to
    class C - 1) and, for that row, softmax / N without a one-hot; the other rows as usual."""
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, -1.0], [0.5, -0.5, 2.0]])
    y = np.array([2, bad, 0])
    loss = gpunn.SoftmaxCrossEntropy()
    assert math.isnan(float(loss.forward(backend.asarray(z), backend.asarray(y))))
    expected = softmax(z) / 3
    expected[0, 2] -= 1 / 3
    expected[2, 0] -= 1 / 3
    np.testing.assert_allclose(host(backend, loss.backward()), expected, rtol=1e-14, atol=1e-16)


def test_softmax_ce_bad_label_with_a_single_class_reads_class_0() -> None:
    """A bad label reads class 0 (then made NaN), the one class every z has: with C = 1 a
    read of any other class would be out of bounds. The row's gradient is softmax / N = 1 / N."""
    from gpunn.math.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward

    z, y = np.array([[0.5], [2.0]]), np.array([0, 1])
    loss, p = softmax_cross_entropy_forward(z, y, xp=np)
    assert math.isnan(float(loss)) and p.tolist() == [[1.0], [1.0]]
    assert softmax_cross_entropy_backward(p, y, xp=np).tolist() == [[0.0], [0.5]]


@pytest.mark.cuda_on_cpu
def test_softmax_ce_bad_labels_cost_no_host_read() -> None:
    """The label check is elementwise on the device: nothing is read back (each read would
    wait for the GPU)."""
    with fake_cupy.installed() as cp:
        z = cp.asarray(np.random.default_rng(0).standard_normal((5, 4)), dtype=cp.float32)
        y = cp.asarray([0, -1, 3, 4, 2])
        cp.emulation.reset_counts()
        loss, dz = softmax_cross_entropy_reference(z, y, xp=cp)
        assert cp.emulation.counts["host_read"] == 0
        assert math.isnan(float(loss)) and bool(cp.isfinite(dz).all())


def test_softmax_ce_accepts_labels_of_shape_n1_and_float_labels(backend):
    z = backend.asarray(np.random.default_rng(0).standard_normal((4, 3)))
    loss = gpunn.SoftmaxCrossEntropy()
    a = float(loss.forward(z, backend.asarray([0, 2, 1, 1])))
    b = float(loss.forward(z, backend.asarray([[0], [2], [1], [1]])))
    c = float(loss.forward(z, backend.asarray([0.0, 2.0, 1.0, 1.0])))
    assert a == b == c


@pytest.mark.parametrize("shape", [(6,), (6, 1)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bce_of_logit_zero_is_log_2(backend, shape, dtype):
    y = np.array([0, 1, 1, 0, 1, 0.0])
    loss = gpunn.BinaryCrossEntropy()
    value = float(loss.forward(backend.asarray(np.zeros(shape), dtype=dtype), backend.asarray(y)))
    np.testing.assert_allclose(value, math.log(2), rtol=1e-6 if dtype == "float32" else 1e-15)
    grad = host(backend, loss.backward())
    assert grad.shape == shape
    np.testing.assert_allclose(grad.reshape(-1), (0.5 - y) / 6, rtol=1e-6)


@pytest.mark.parametrize("shape", [(7,), (7, 1)])
def test_bce_gradient_is_sigmoid_minus_y_over_n(backend, shape):
    rng = np.random.default_rng(1)
    z = rng.standard_normal(shape) * 3
    y = rng.integers(0, 2, 7).astype(float)
    loss = gpunn.BinaryCrossEntropy()
    value = float(loss.forward(backend.asarray(z), backend.asarray(y)))
    p = sigmoid(z.reshape(-1))
    np.testing.assert_allclose(value, -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), rtol=1e-13)
    grad = host(backend, loss.backward())
    np.testing.assert_allclose(grad.reshape(-1), (p - y) / 7, rtol=1e-14)


def test_bce_accepts_labels_n1_with_logits_n(backend):
    z = backend.asarray(np.array([0.5, -1.0, 2.0]))
    loss = gpunn.BinaryCrossEntropy()
    a = float(loss.forward(z, backend.asarray([1.0, 0.0, 1.0])))
    b = float(loss.forward(z, backend.asarray([[1], [0], [1]])))
    assert a == b


def test_mse_known_value_and_gradient(backend):
    z = np.array([[1.0, 2.0], [3.0, 4.0]])
    y = np.array([[0.0, 0.0], [1.0, 6.0]])
    loss = gpunn.MeanSquaredError()
    assert float(loss.forward(backend.asarray(z), backend.asarray(y))) == (1 + 4 + 4 + 4) / 4
    np.testing.assert_allclose(host(backend, loss.backward()), 2 * (z - y) / 4, rtol=1e-15)


def test_mse_accepts_targets_n_for_a_single_output(backend):
    z = backend.asarray(np.array([[1.0], [2.0], [3.0]]))
    loss = gpunn.MeanSquaredError()
    assert float(loss.forward(z, backend.asarray([1.0, 1.0, 1.0]))) == 5 / 3
    np.testing.assert_allclose(host(backend, loss.backward()), [[0.0], [2 / 3], [4 / 3]])


# ------------------------------------------------------------------------------------------
# Stability for large logits (float32)
# ------------------------------------------------------------------------------------------


def test_softmax_ce_is_finite_for_huge_logits_in_float32(backend):
    z = backend.asarray([[1000.0, 1.0], [1000.0, 1.0], [-1000.0, 1000.0]], dtype="float32")
    y = backend.asarray([0, 1, 0])
    loss = gpunn.SoftmaxCrossEntropy()
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        value = float(loss.forward(z, y))
        grad = host(backend, loss.backward())
    np.testing.assert_allclose(value, (0 + 999 + 2000) / 3, rtol=1e-6)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [[0, 0], [1 / 3, -1 / 3], [-1 / 3, 1 / 3]], atol=1e-7)


@pytest.mark.parametrize("shape", [(4,), (4, 1)])
def test_bce_is_finite_at_plus_minus_100_in_float32(backend, shape):
    z = backend.asarray(np.array([100.0, -100.0, 100.0, -100.0]).reshape(shape), dtype="float32")
    y = backend.asarray([1.0, 0.0, 0.0, 1.0])
    loss = gpunn.BinaryCrossEntropy()
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        value = float(loss.forward(z, y))
        grad = host(backend, loss.backward())
    np.testing.assert_allclose(value, 200 / 4, rtol=1e-6)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad.reshape(-1), [0, 0, 0.25, -0.25], atol=1e-7)


# ------------------------------------------------------------------------------------------
# Shape checks and empty batches
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss, z_shape, y",
    [
        (gpunn.SoftmaxCrossEntropy, (4,), [0, 1, 0, 1]),
        (gpunn.SoftmaxCrossEntropy, (4, 3, 1), [0, 1, 0, 1]),
        (gpunn.SoftmaxCrossEntropy, (4, 3), [0, 1, 0]),
        (gpunn.SoftmaxCrossEntropy, (4, 3), [[0, 1], [0, 1], [0, 1], [0, 1]]),
        (gpunn.BinaryCrossEntropy, (4, 2), [0, 1, 0, 1]),
        (gpunn.BinaryCrossEntropy, (4,), [0, 1, 0]),
        (gpunn.MeanSquaredError, (4, 2), np.zeros((4, 3))),
        (gpunn.MeanSquaredError, (4, 2), np.zeros((2, 4))),
    ],
)
def test_bad_shapes_raise_value_error(backend, loss, z_shape, y):
    z = backend.asarray(np.zeros(z_shape))
    with pytest.raises(ValueError):
        loss().forward(z, backend.asarray(y))


@pytest.mark.parametrize(
    "loss, z_shape, y_shape",
    [
        (gpunn.SoftmaxCrossEntropy, (0, 3), (0,)),
        (gpunn.BinaryCrossEntropy, (0,), (0,)),
        (gpunn.MeanSquaredError, (0, 2), (0, 2)),
    ],
)
def test_empty_batch_has_loss_zero_and_empty_gradient(backend, loss, z_shape, y_shape):
    obj = loss()
    value = obj.forward(backend.asarray(np.zeros(z_shape)), backend.asarray(np.zeros(y_shape)))
    assert float(value) == 0.0
    assert obj.backward().shape == z_shape


def test_accuracy_counts(backend):
    ce = gpunn.SoftmaxCrossEntropy()
    z = backend.asarray([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0]])
    assert int(ce.correct(z, backend.asarray([0, 1, 1]))) == 2
    bce = gpunn.BinaryCrossEntropy()
    assert int(bce.correct(backend.asarray([2.0, -1.0, 0.5]), backend.asarray([1, 1, 1]))) == 2
    assert gpunn.SoftmaxCrossEntropy.has_accuracy and not gpunn.MeanSquaredError.has_accuracy
    with pytest.raises(TypeError):
        gpunn.MeanSquaredError().correct(z, z)


# ------------------------------------------------------------------------------------------
# Gradient checks (float64, central differences)
# ------------------------------------------------------------------------------------------


# A step of 1e-5 keeps the rounding noise of the difference quotient (about 1e-16 * loss / eps)
# well below the 1e-6 bar; the truncation error (about eps^2) is smaller still.
EPS = 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_gradient_check(case, seed):
    cls, shape, labels = CASES[case]
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape) * 2
    assert check_loss_gradients(cls(), z, labels(rng), eps=EPS) <= 1e-6


def test_softmax_ce_gradient_check_many_classes():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((3, 12)) * 4
    labels = rng.integers(0, 12, 3)
    assert check_loss_gradients(gpunn.SoftmaxCrossEntropy(), z, labels, eps=EPS) <= 1e-6


# ------------------------------------------------------------------------------------------
# Agreement with PyTorch (float64)
# ------------------------------------------------------------------------------------------


def torch_loss_and_grad(torch_fn, z, y, **kwargs):
    torch = pytest.importorskip("torch")
    tz = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    value = torch_fn(tz, torch.as_tensor(y), **kwargs)
    value.backward()
    return value.item(), tz.grad.numpy()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", [(1, 2), (8, 3), (16, 10)])
def test_softmax_ce_matches_torch(backend, seed, shape):
    functional = pytest.importorskip("torch.nn.functional")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape) * 3
    y = rng.integers(0, shape[1], shape[0])
    expected, expected_grad = torch_loss_and_grad(functional.cross_entropy, z, y)
    loss = gpunn.SoftmaxCrossEntropy()
    value = float(loss.forward(backend.asarray(z), backend.asarray(y)))
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(
        host(backend, loss.backward()), expected_grad, rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", [(1,), (9,), (9, 1)])
def test_bce_matches_torch(backend, seed, shape):
    functional = pytest.importorskip("torch.nn.functional")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape) * 5
    y = rng.integers(0, 2, shape).astype(float)
    expected, expected_grad = torch_loss_and_grad(functional.binary_cross_entropy_with_logits, z, y)
    loss = gpunn.BinaryCrossEntropy()
    value = float(loss.forward(backend.asarray(z), backend.asarray(y)))
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(
        host(backend, loss.backward()), expected_grad, rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", [(1, 1), (9, 1), (6, 4)])
def test_mse_matches_torch(backend, seed, shape):
    functional = pytest.importorskip("torch.nn.functional")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape)
    y = rng.standard_normal(shape)
    expected, expected_grad = torch_loss_and_grad(functional.mse_loss, z, y)
    loss = gpunn.MeanSquaredError()
    value = float(loss.forward(backend.asarray(z), backend.asarray(y)))
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(
        host(backend, loss.backward()), expected_grad, rtol=1e-12, atol=1e-15
    )


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------

BIG = float(np.float32(1e30))  # the sum over a batch of such losses still fits in float32
fixture_ok = settings(  # fixed examples, nothing written to disk: the same run everywhere
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@st.composite
def logits_and_labels(draw):
    n = draw(st.integers(1, 6))
    c = draw(st.integers(1, 6))
    z = draw(hnp.arrays(np.float64, (n, c), elements=st.floats(-1e4, 1e4, allow_nan=False)))
    y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    return z, y


@fixture_ok
@given(data=logits_and_labels())
def test_softmax_ce_is_nonnegative_and_grad_rows_sum_to_zero(backend, data):
    z, y = data
    loss = gpunn.SoftmaxCrossEntropy()
    value = float(loss.forward(backend.asarray(z), backend.asarray(y)))
    grad = host(backend, loss.backward())
    assert value >= 0 and np.isfinite(value)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12)
    assert np.all(grad >= -1 / len(y) - 1e-15) and np.all(grad <= 1 / len(y) + 1e-15)


@fixture_ok
@given(
    z=hnp.arrays(np.float32, st.integers(1, 8), elements=st.floats(-BIG, BIG, width=32)),
    seed=st.integers(0, 100),
)
def test_bce_is_nonnegative_and_finite_for_any_float32_logits(backend, z, seed):
    y = np.random.default_rng(seed).integers(0, 2, z.shape).astype(np.float32)
    loss = gpunn.BinaryCrossEntropy()
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        value = float(loss.forward(backend.asarray(z), backend.asarray(y)))
        grad = host(backend, loss.backward())
    assert value >= 0 and np.isfinite(value)
    assert np.all(np.isfinite(grad)) and np.all(np.abs(grad) <= 1 / len(z) + 1e-7)
