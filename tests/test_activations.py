"""Tests for gpunn.activations: known values, stability, derivatives and gradient checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpunn
from gpunn.math.activations import (
    leaky_relu_backward,
    leaky_relu_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    softmax_backward,
    softmax_forward,
    tanh_backward,
    tanh_forward,
)
from gpunn.testing import check_function_gradients, check_layer_gradients, ftz

Z = np.array([[-2.0, -0.5, 0.0, 0.5, 2.0], [-3.0, 1.0, -1e-3, 1e-3, 10.0]])
SIG = 1.0 / (1.0 + np.exp(-Z))

FORWARD = {
    "ReLU": (gpunn.ReLU, {}, np.maximum(Z, 0.0)),
    "LeakyReLU": (gpunn.LeakyReLU, {}, np.where(Z > 0, Z, 0.01 * Z)),
    "LeakyReLU(0.2)": (gpunn.LeakyReLU, {"slope": 0.2}, np.where(Z > 0, Z, 0.2 * Z)),
    "Sigmoid": (gpunn.Sigmoid, {}, SIG),
    "Tanh": (gpunn.Tanh, {}, np.tanh(Z)),
}
# dL/dz for dL/da = 1 everywhere (ReLU's kink at 0 takes derivative 0, LeakyReLU's the slope)
DERIVATIVE = {
    "ReLU": (Z > 0).astype(float),
    "LeakyReLU": np.where(Z > 0, 1.0, 0.01),
    "LeakyReLU(0.2)": np.where(Z > 0, 1.0, 0.2),
    "Sigmoid": SIG * (1 - SIG),
    "Tanh": 1 - np.tanh(Z) ** 2,
}
SMOOTH = ("Sigmoid", "Tanh")


def run_layer(layer, x, backend, dtype, dy=None):
    """Forward (and backward if dy is given) through a one-layer model; host results."""
    model = gpunn.Sequential([layer], backend=backend, dtype=dtype)
    a = backend.to_numpy(model.forward(backend.asarray(x, dtype=dtype))).copy()
    if dy is None:
        return a, None
    dz = model.backward(backend.asarray(dy, dtype=dtype), input_grad=True)
    return a, backend.to_numpy(dz).copy()


@pytest.mark.parametrize("name", sorted(FORWARD))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_and_backward_known_values(backend, name, dtype):
    cls, kwargs, expected = FORWARD[name]
    a, dz = run_layer(cls(**kwargs), Z, backend, dtype, dy=np.ones_like(Z))
    assert a.dtype == np.dtype(dtype) and dz.dtype == np.dtype(dtype)
    tol = 1e-6 if dtype == "float32" else 1e-15
    np.testing.assert_allclose(a, expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(dz, DERIVATIVE[name], rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(FORWARD))
def test_backward_scales_the_incoming_gradient(backend, name):
    cls, kwargs, _ = FORWARD[name]
    dy = np.random.default_rng(3).standard_normal(Z.shape)
    _, dz = run_layer(cls(**kwargs), Z, backend, "float64", dy=dy)
    np.testing.assert_allclose(dz, dy * DERIVATIVE[name], rtol=1e-14, atol=1e-15)


def test_sigmoid_exact_values(backend):
    z = backend.asarray([0.0, np.log(3.0), -np.log(3.0)], dtype="float64")
    a = backend.to_numpy(sigmoid_forward(z, xp=backend.xp))
    np.testing.assert_allclose(a, [0.5, 0.75, 0.25], rtol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_is_stable_for_large_inputs(backend, dtype):
    big = 1000.0 if dtype == "float32" else 1e5
    z = np.array([[-big, -100.0, -89.0, 89.0, 100.0, big]])
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        a, dz = run_layer(gpunn.Sigmoid(), z, backend, dtype, dy=np.ones_like(z))
    assert a[0, 0] == 0.0 and a[0, -1] == 1.0  # exact limits
    assert np.all(np.isfinite(a)) and np.all((a >= 0) & (a <= 1))
    assert np.all(np.isfinite(dz)) and dz[0, 0] == 0.0 and dz[0, -1] == 0.0
    if dtype == "float64":
        np.testing.assert_allclose(a[0, 1:-1], 1 / (1 + np.exp(-z[0, 1:-1])), rtol=1e-14)


def test_softmax_exact_values(backend):
    """Rows [0, log 2, log 5] -> [1, 2, 5] / 8; a constant row -> uniform."""
    z = backend.asarray([[0.0, np.log(2.0), np.log(5.0)], [7.0, 7.0, 7.0]], dtype="float64")
    a = backend.to_numpy(softmax_forward(z, xp=backend.xp))
    np.testing.assert_allclose(a, [[1 / 8, 2 / 8, 5 / 8], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-14)
    assert backend.to_numpy(z)[1, 0] == 7.0  # the input is left as it was


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_is_stable_for_large_logits(backend, dtype):
    """exp(1000) overflows; shifted by the row maximum it never does."""
    z = backend.asarray([[1000.0, 999.0, -1000.0], [-1000.0, -1001.0, -1000.0]], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        a = backend.to_numpy(softmax_forward(z, xp=backend.xp))
    assert a.dtype == np.dtype(dtype)
    q = np.exp(-1.0)  # shifted by the row maximum, the rows are (0, -1, -2000), (0, -1, 0)
    tol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(a[0], [1 / (1 + q), q / (1 + q), 0.0], rtol=tol, atol=tol)
    np.testing.assert_allclose(a[1], [1 / (2 + q), q / (2 + q), 1 / (2 + q)], rtol=tol)


def test_softmax_normalises_each_row_of_a_stack_over_the_last_axis() -> None:
    """A (B, N, C) stack is B * N rows, each shifted by its own maximum: rows whose large logit
    sits in different columns get one-hot probabilities (a shift by a maximum over any other
    axis would not be one constant per row, and would give these rows 1/2 in a second place)."""
    z = np.zeros((2, 2, 3))
    z[0, 0, 0] = z[0, 1, 1] = z[1, 0, 2] = z[1, 1, 0] = 1000.0
    with np.errstate(over="raise", invalid="raise"):
        a = softmax_forward(z, xp=np)
    np.testing.assert_array_equal(a, np.where(z > 0, 1.0, 0.0))


def test_softmax_backward_of_a_stack_is_that_of_each_row() -> None:
    """The backward of a (B, N, C) stack equals the backward of its B * N rows as (B N, C)."""
    rng = np.random.default_rng(3)
    a = softmax_forward(rng.standard_normal((2, 3, 4)), xp=np)
    da = rng.standard_normal((2, 3, 4))
    rows = softmax_backward(da.reshape(6, 4), a.reshape(6, 4), xp=np)
    np.testing.assert_allclose(softmax_backward(da, a, xp=np), rows.reshape(2, 3, 4), rtol=1e-14)


def test_softmax_into_out(backend):
    z = backend.asarray(np.random.default_rng(5).standard_normal((4, 3)))
    out = backend.xp.empty_like(z)
    assert softmax_forward(z, xp=backend.xp, out=out) is out
    expected = np.exp(backend.to_numpy(z))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=1e-12)


def test_tanh_saturates_without_warnings(backend):
    z = np.array([[-1000.0, 1000.0]])
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        a, dz = run_layer(gpunn.Tanh(), z, backend, "float32", dy=np.ones_like(z))
    np.testing.assert_array_equal(a, [[-1.0, 1.0]])
    np.testing.assert_array_equal(dz, [[0.0, 0.0]])


def test_layers_follow_the_batch_size(backend):
    for layer in (gpunn.ReLU(), gpunn.LeakyReLU(), gpunn.Sigmoid(), gpunn.Tanh()):
        model = gpunn.Sequential([layer], backend=backend, dtype="float64")
        for n in (3, 5, 1):
            x = np.random.default_rng(n).standard_normal((n, 4))
            a = backend.to_numpy(model.forward(backend.asarray(x)))
            assert a.shape == (n, 4)
            dz = model.backward(backend.asarray(np.ones((n, 4))), input_grad=True)
            assert dz.shape == (n, 4)


def test_leaky_relu_slope_validation_and_config():
    assert gpunn.LeakyReLU().slope == 0.01
    assert gpunn.LeakyReLU(0.3).config() == {"slope": 0.3}
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="slope"):
            gpunn.LeakyReLU(bad)


def test_init_hints():
    assert gpunn.ReLU.init_hint == gpunn.LeakyReLU.init_hint == "he"
    assert gpunn.Sigmoid.init_hint == gpunn.Tanh.init_hint == "glorot"


# ------------------------------------------------------------------------------------------
# Gradient checks (float64, central differences)
# ------------------------------------------------------------------------------------------


def away_from_kink(shape, seed, margin=1e-2):
    """Standard normal values pushed away from 0 so |x| > margin (ReLU's kink)."""
    x = np.random.default_rng(seed).standard_normal(shape)
    return x + np.where(x >= 0, margin, -margin)


@pytest.mark.parametrize("name", sorted(FORWARD))
def test_layer_gradient_check(backend, name):
    cls, kwargs, _ = FORWARD[name]
    x = away_from_kink((6, 5), seed=1)
    assert np.abs(x).min() > 1e-2
    errors = check_layer_gradients(cls(**kwargs), x, backend=backend)
    assert set(errors) == {"input"}
    assert errors["input"] <= 1e-6, errors


FUNCTIONS = {
    "relu": (
        lambda z: relu_forward(z, xp=np),
        lambda z, a, dy: relu_backward(dy, z, xp=np),
    ),
    "leaky_relu": (
        lambda z: leaky_relu_forward(z, 0.05, xp=np),
        lambda z, a, dy: leaky_relu_backward(dy, z, 0.05, xp=np),
    ),
    "sigmoid": (
        lambda z: sigmoid_forward(z, xp=np),
        lambda z, a, dy: sigmoid_backward(dy, a, xp=np),
    ),
    "tanh": (
        lambda z: tanh_forward(z, xp=np),
        lambda z, a, dy: tanh_backward(dy, a, xp=np),
    ),
    "softmax": (
        lambda z: softmax_forward(z, xp=np),
        lambda z, a, dy: softmax_backward(dy, a, xp=np),
    ),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_function_pair_gradient_check(name):
    forward, backward = FUNCTIONS[name]
    z = away_from_kink((4, 7), seed=2) * 3
    a = forward(z.copy())
    error = check_function_gradients(forward, lambda dy: backward(z, a, dy), z)
    assert error <= 1e-6


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------

finite_float32 = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=2, max_side=8),
    elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
)
fixture_ok = settings(  # fixed examples, nothing written to disk: the same run everywhere
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


SUBNORMAL = np.float32(1e-45)  # the smallest positive float32: 2**-149


@fixture_ok
@given(z=finite_float32)
@example(z=np.array([SUBNORMAL, -SUBNORMAL, 0.0, 1e-38], dtype=np.float32))
def test_sigmoid_in_unit_interval_for_any_finite_float32(backend, z):
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        a = backend.to_numpy(sigmoid_forward(backend.asarray(z), xp=backend.xp))
    assert a.dtype == np.float32 and a.shape == z.shape
    assert np.all((a >= 0) & (a <= 1))
    reference = 0.5 * (1 + np.tanh(z.astype(np.float64) / 2))
    np.testing.assert_allclose(a, reference, rtol=0, atol=1e-6)
    order = np.argsort(z.ravel(), kind="stable")
    assert np.all(np.diff(a.ravel()[order]) >= -1.2e-7)  # monotone up to one rounding


@fixture_ok
@given(z=finite_float32, slope=st.floats(0, 0.99))
@example(z=np.array([SUBNORMAL], dtype=np.float32), slope=0.0)  # the GPU's answer is 0
@example(z=np.array([-1e-38, 1e-38, 3e-38], dtype=np.float32), slope=0.5)  # slope z subnormal
def test_leaky_relu_is_max_of_z_and_slope_z(backend, z, slope):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = backend.to_numpy(leaky_relu_forward(backend.asarray(z), slope, xp=backend.xp))
        tanh = backend.to_numpy(tanh_forward(backend.asarray(z), xp=backend.xp))
    # on a GPU float32 subnormals are flushed (CuPy's -ftz=true): max(z, slope z) is 0 at 1e-45
    want = ftz.expected(lambda z: np.maximum(z, np.float32(slope) * z), z, ftz=backend.is_gpu)
    np.testing.assert_array_equal(a, want)
    assert np.all(np.abs(tanh) <= 1)
