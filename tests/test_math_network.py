"""Tests for gpunn.math.network: the tutorial's network written with the pure functions alone.

It must compute exactly what a Sequential of the same layers computes (the layers run the same
math), learn XOR of the article's inputs, and have the gradients of central differences.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpunn
from gpunn.math import network
from gpunn.testing import numerical_gradient, relative_error

X = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float64)
Y = np.array([[0], [1], [1], [0]], dtype=np.float64)


def sequential_and_params(seed: int = 0):
    model = gpunn.Sequential(
        [gpunn.Dense(3, 4), gpunn.Sigmoid(), gpunn.Dense(4, 1)],
        backend="numpy",
        dtype="float64",
        seed=seed,
    )
    params = {
        "W1": model.params["0.W"].copy(),
        "b1": model.params["0.b"].copy(),
        "W2": model.params["2.W"].copy(),
        "b2": model.params["2.b"].copy(),
    }
    return model, params


def test_train_step_follows_sequential_and_sgd_step_for_step():
    model, params = sequential_and_params()
    loss, opt = gpunn.BinaryCrossEntropy(), gpunn.SGD(lr=1.0)
    for _ in range(200):
        expected = float(loss.forward(model.forward(X), Y))
        model.backward(loss.backward())
        opt.step(model)
        got = float(network.train_step(params, X, Y, lr=1.0, xp=np))
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(params["W1"], model.params["0.W"], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(params["b2"], model.params["2.b"], rtol=1e-10, atol=1e-13)


def test_the_tutorial_network_learns_xor_and_its_loss_never_rises():
    _, params = sequential_and_params()
    losses = [float(network.train_step(params, X, Y, lr=1.0, xp=np)) for _ in range(1500)]
    assert losses[0] > 0.6 and losses[-1] < 0.05
    assert np.all(np.diff(losses) <= 0)
    logits, _ = network.forward(params, X, xp=np)
    np.testing.assert_array_equal((logits > 0).astype(float), Y)


def test_backward_matches_central_differences():
    _, params = sequential_and_params(seed=3)
    rng = np.random.default_rng(0)
    for value in params.values():
        value[...] = rng.standard_normal(value.shape)

    def loss_value() -> float:
        z2, _ = network.forward(params, X, xp=np)
        return float(gpunn.math.binary_cross_entropy_forward(z2, Y, xp=np))

    z2, a1 = network.forward(params, X, xp=np)
    dz2 = gpunn.math.binary_cross_entropy_backward(z2, Y, xp=np)
    grads = network.backward(params, X, a1, dz2, xp=np)
    for name, value in params.items():
        numeric = numerical_gradient(loss_value, value, eps=1e-6)
        assert relative_error(grads[name], numeric) < 1e-6, name
