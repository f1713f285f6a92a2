"""Tests the article's network: 3 inputs, 4 sigmoid hidden units, 1 output, learns XOR of 2 bits.

Inputs [0,0,1], [0,1,1], [1,0,1], [1,1,1] with targets 0, 1, 1, 0; binary cross-entropy from
logits; full-batch gradient descent (SGD, lr 1.0) for 1500 iterations on every available
backend. The loss must never rise, the final loss must be small and the rounded predictions
must equal the targets.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpunn

#: learning runs of many steps: they check convergence, not device rules, so the `backend`
#: fixture gives them NumPy and a real GPU but not the (slower) emulation of CuPy
pytestmark = pytest.mark.slow

X = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=float)
Y = np.array([0, 1, 1, 0], dtype=float)
ITERATIONS = 1500
LR = 1.0
SEED = 0


def train(backend, dtype):
    layers = [gpunn.Dense(3, 4), gpunn.Sigmoid(), gpunn.Dense(4, 1)]
    model = gpunn.Sequential(layers, backend=backend, dtype=dtype, seed=SEED)
    loss, opt = gpunn.BinaryCrossEntropy(), gpunn.SGD(LR)
    x, y = backend.asarray(X, dtype=dtype), backend.asarray(Y, dtype=dtype)
    history = []
    for _ in range(ITERATIONS):
        history.append(float(loss.forward(model.forward(x), y)))
        model.backward(loss.backward())
        opt.step(model)
    history.append(float(loss.forward(model.forward(x), y)))
    logits = backend.to_numpy(model.predict(X)).reshape(-1)
    return np.array(history), logits


def check_learned(history, logits):
    assert history[0] > 0.6  # it starts near log 2 ...
    assert history[-1] < 0.05  # ... and ends small
    probabilities = 1 / (1 + np.exp(-logits.astype(np.float64)))
    np.testing.assert_array_equal((probabilities > 0.5).astype(float), Y)


def test_float64_loss_never_rises_and_learns_xor(backend):
    history, logits = train(backend, "float64")
    rises = np.flatnonzero(np.diff(history) > 0)
    assert rises.size == 0, f"loss rose at steps {rises[:10]}"
    check_learned(history, logits)


def test_float32_loss_never_rises_beyond_rounding_and_learns_xor(backend):
    history, logits = train(backend, "float32")
    rises = np.flatnonzero(np.diff(history) > 1e-7 * history[:-1])
    assert rises.size == 0, f"loss rose at steps {rises[:10]}"
    check_learned(history, logits)
    reference, _ = train(gpunn.get_backend("numpy"), "float64")
    np.testing.assert_allclose(history, reference, rtol=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predictions_are_confident(backend, dtype):
    _, logits = train(backend, dtype)
    probabilities = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert np.all(np.abs(probabilities - Y) < 0.1)
