"""Tests for gpunn.testing: the gradient checker measures errors and catches wrong gradients."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn
from gpunn.math.activations import tanh_forward
from gpunn.testing import (
    check_function_gradients,
    check_layer_gradients,
    check_loss_gradients,
    check_model_gradients,
    ftz,
    relative_error,
)

WRONG = 1e-2  # a wrong gradient must show an error at least this large


# ------------------------------------------------------------------------------------------
# relative_error
# ------------------------------------------------------------------------------------------


def test_relative_error_known_values():
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.2])) == pytest.approx(0.2 / 2.2)
    assert relative_error(np.array([-1.0]), np.array([1.0])) == pytest.approx(2.0)
    # entries far below the largest gradient are measured against a floor of 1e-3 * max
    assert relative_error(np.array([1e-9, 1.0]), np.array([2e-9, 1.0])) == pytest.approx(1e-6)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.zeros((0, 2)), np.zeros((0, 2))) == 0.0
    assert relative_error(np.ones((2, 3)), np.ones(6)) == 0.0  # compared element by element


def test_relative_error_rejects_different_sizes():
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(np.ones(3), np.ones(4))


# ------------------------------------------------------------------------------------------
# Deliberately broken layers, losses and functions are caught
# ------------------------------------------------------------------------------------------


class WrongWeightGrad(gpunn.Dense):
    def backward(self, dy, *, need_dx=True):
        dx = super().backward(dy, need_dx=need_dx)
        self.grads["W"] *= 1.1
        return dx


class WrongBiasGrad(gpunn.Dense):
    def backward(self, dy, *, need_dx=True):
        dx = super().backward(dy, need_dx=need_dx)
        self.grads["b"][...] = 0.0
        return dx


class WrongInputGrad(gpunn.Dense):
    def backward(self, dy, *, need_dx=True):
        super().backward(dy, need_dx=need_dx)
        return dy @ self.params["W"].T * 0.5 if need_dx else None


class WrongTanh(gpunn.Tanh):
    def backward(self, dy, *, need_dx=True):
        return dy * (1 - self.a)  # should be 1 - a**2


class WrongSigmoid(gpunn.Sigmoid):
    def backward(self, dy, *, need_dx=True):
        return self.a * (1 - self.a) + 0 * dy  # forgets the incoming gradient


X = np.random.default_rng(0).standard_normal((5, 4))


@pytest.mark.parametrize(
    "cls, bad, good",
    [
        (WrongWeightGrad, "0.W", ("0.b", "input")),
        (WrongBiasGrad, "0.b", ("0.W", "input")),
        (WrongInputGrad, "input", ("0.W", "0.b")),
    ],
)
def test_check_layer_gradients_catches_a_broken_dense_layer(backend, cls, bad, good):
    errors = check_layer_gradients(cls(4, 3), X, backend=backend)
    assert set(errors) == {"0.W", "0.b", "input"}
    assert errors[bad] > WRONG, errors
    for key in good:
        assert errors[key] <= 1e-6, errors


@pytest.mark.parametrize(
    "cls, bad, good",
    [
        (WrongWeightGrad, "1.W", ("1.b", "input")),
        (WrongBiasGrad, "1.b", ("1.W", "input")),
        (WrongInputGrad, "input", ("1.W", "1.b")),
    ],
)
def test_check_model_gradients_catches_a_broken_dense_layer(backend, cls, bad, good):
    """The same, behind an activation (so the input gradient is needed inside the model)."""
    model = gpunn.Sequential([gpunn.Tanh(), cls(4, 3)], backend=backend, dtype="float64")
    errors = check_model_gradients(model, gpunn.MeanSquaredError(), X, np.ones((5, 3)), eps=1e-5)
    assert errors[bad] > WRONG, errors
    for key in good:
        assert errors[key] <= 1e-6, errors


@pytest.mark.parametrize("cls", [WrongTanh, WrongSigmoid])
def test_check_layer_gradients_catches_a_broken_activation(backend, cls):
    assert check_layer_gradients(cls(), X, backend=backend)["input"] > WRONG


def test_a_broken_activation_shows_in_the_weights_before_it(backend):
    layers = [gpunn.Dense(4, 6), WrongTanh(), gpunn.Dense(6, 2)]
    model = gpunn.Sequential(layers, backend=backend, dtype="float64")
    errors = check_model_gradients(model, gpunn.SoftmaxCrossEntropy(), X, [0, 1, 1, 0, 1], eps=1e-5)
    assert errors["0.W"] > WRONG and errors["0.b"] > WRONG
    assert errors["2.W"] <= 1e-6 and errors["2.b"] <= 1e-6


class BCEWithoutMean(gpunn.BinaryCrossEntropy):
    def backward(self):
        return super().backward() * self.z.shape[0]  # forgets the 1/N


class MSEWithoutTwo(gpunn.MeanSquaredError):
    def backward(self):
        return super().backward() / 2


class CEWithoutOneHot(gpunn.SoftmaxCrossEntropy):
    def backward(self):
        dz = super().backward().copy()  # (softmax - onehot) / N
        dz[np.arange(len(self.y)), self.y] += 1 / len(self.y)  # ... without the - onehot
        return dz


@pytest.mark.parametrize(
    "loss, z, y",
    [
        (BCEWithoutMean(), np.array([0.3, -1.2, 2.0]), np.array([1.0, 0.0, 0.0])),
        (MSEWithoutTwo(), np.array([[0.3, -1.2], [2.0, 0.1]]), np.zeros((2, 2))),
        (CEWithoutOneHot(), np.array([[0.3, -1.2, 0.5], [2.0, 0.1, 0.0]]), np.array([0, 2])),
    ],
)
def test_check_loss_gradients_catches_a_broken_loss(loss, z, y):
    assert check_loss_gradients(loss, z, y) > WRONG


def test_check_function_gradients_catches_a_broken_pair():
    x = np.random.default_rng(1).standard_normal((3, 4))
    a = np.tanh(x)
    right = check_function_gradients(
        lambda v: tanh_forward(v, xp=np), lambda dy: dy * (1 - a**2), x
    )
    wrong = check_function_gradients(lambda v: tanh_forward(v, xp=np), lambda dy: dy * (1 - a), x)
    assert right <= 1e-6 and wrong > WRONG


# ------------------------------------------------------------------------------------------
# The checker itself
# ------------------------------------------------------------------------------------------


def test_checker_leaves_the_parameters_as_it_found_them(backend):
    model = gpunn.Sequential(
        [gpunn.Dense(4, 5), gpunn.Sigmoid(), gpunn.Dense(5, 1)], backend=backend, dtype="float64"
    )
    before = backend.to_numpy(model.flat_params).copy()
    x = X.copy()
    errors = check_model_gradients(model, gpunn.BinaryCrossEntropy(), x, [1, 0, 0, 1, 1], eps=1e-5)
    assert all(error <= 1e-6 for error in errors.values()), errors  # NaN fails too
    np.testing.assert_array_equal(backend.to_numpy(model.flat_params), before)
    np.testing.assert_array_equal(x, X)


def test_check_layer_gradients_reports_every_parameter_and_the_input(backend):
    errors = check_layer_gradients(gpunn.Dense(4, 2), X, backend=backend)
    assert set(errors) == {"0.W", "0.b", "input"}
    assert all(isinstance(v, float) for v in errors.values())
    assert all(error <= 1e-6 for error in errors.values()), errors  # NaN fails too


def test_relative_error_of_nan_is_not_small():
    """A NaN gradient must never pass a ``<= tolerance`` check."""
    error = relative_error(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    assert not error <= 1e-6


# ------------------------------------------------------------------------------------------
# ftz: expectations as a GPU computes them (float32 subnormals flushed)
# ------------------------------------------------------------------------------------------


def test_flush_subnormals_flushes_float32_subnormals_only():
    x = np.array([1e-45, -1e-45, -1e-40, 1.2e-38, -3.0, 0.0, np.nan, np.inf], np.float32)
    flushed = ftz.flush_subnormals(x)
    assert flushed is not x and x[0] == np.float32(1e-45)  # a new array: x is left alone
    np.testing.assert_array_equal(flushed, [0, 0, 0, np.float32(1.2e-38), -3, 0, np.nan, np.inf])
    assert list(np.signbit(flushed[:3])) == [False, True, True]  # a zero of the same sign
    x64 = np.array([5e-324, -1e-310])
    assert ftz.flush_subnormals(x64) is x64  # float64 is never flushed
    assert ftz.flush_subnormals(0.5) == 0.5 and ftz.flush_subnormals(np.float32(1e-45)) == 0


def test_expected_flushes_arguments_and_results():
    z = np.array([1e-45, -1e-38, 2.0, -2.0], np.float32)

    def leaky(z: np.ndarray, slope: float = 0.01) -> np.ndarray:
        return np.maximum(z, np.float32(slope) * z)

    # -1e-38 * 0.01 is a subnormal result; 1e-45 a subnormal argument
    np.testing.assert_array_equal(ftz.expected(leaky, z), np.array([0, 0, 2, -0.02], np.float32))
    naive = ftz.expected(leaky, z, ftz=False)
    assert naive[0] == np.float32(1e-45) and naive[1] != 0
    assert z[0] == np.float32(1e-45)  # the caller's array is untouched
    pair = ftz.expected(lambda a: (a * 1, a.astype(np.float64) * 1e-310), z)
    assert pair[0][0] == 0 and pair[1][2] == 2e-310  # float64 results keep their subnormals


def test_flushing_updates_in_place_state_as_a_gpu_keeps_it():
    def step(p: np.ndarray, g: np.ndarray, *, lr: float) -> None:
        p -= np.float32(lr) * g

    p = np.array([1e-45, 1.0, 2e-38], np.float32)
    g = np.array([0.0, 1e-45, 1e-36], np.float32)
    naive = p.copy()
    step(naive, g, lr=0.01)
    ftz.flushing(step)(p, g, lr=0.01)
    assert p[0] == 0 and p[1] == 1 and g[1] == 0  # subnormal arguments are zeros to the step
    assert p[2] == 0 and 0 < naive[2] < np.finfo(np.float32).tiny  # a subnormal result too
