"""Tests of accuracy targets: digits via `gpunn train`, spirals via fit, the article's network."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import gpunn
from gpunn.datasets import spirals, train_val_test_split

#: learning runs of many steps: they check convergence, not device rules, so the `backend`
#: fixture gives them NumPy and a real GPU but not the (slower) emulation of CuPy
pytestmark = pytest.mark.slow


def test_gpunn_train_defaults_reach_97_percent_on_digits(tmp_path: pathlib.Path) -> None:
    env = dict(os.environ, GPUNN_BACKEND="numpy", GPUNN_DATA=str(tmp_path / "cache"))
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "gpunn", "train"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    match = re.search(r"^test accuracy: (\d+\.\d\d)%", result.stdout, re.MULTILINE)
    assert match, result.stdout
    accuracy = float(match.group(1))
    # a measurement for the report, not an assertion: timings are for benchmarks
    print(f"\ngpunn train (defaults, numpy): test accuracy {accuracy:.2f}%, wall time {wall:.2f} s")
    assert accuracy >= 97.0, result.stdout


def test_spirals_reach_99_percent_with_two_hidden_layers(backend: gpunn.Backend) -> None:
    X, y = spirals(3000, classes=3, seed=0)
    train, val, test = train_val_test_split(X, y, val=0.1, test=0.2, seed=0)
    model = gpunn.Sequential(
        [gpunn.Dense(2, 64), gpunn.ReLU(), gpunn.Dense(64, 64), gpunn.ReLU(), gpunn.Dense(64, 3)],
        backend=backend,
        seed=0,
    )
    history = model.fit(
        *train,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.Adam(1e-2),
        epochs=60,
        batch_size=64,
        validation_data=val,
        verbose=0,
    )
    result = model.evaluate(*test)
    print(
        f"\nspirals (3 classes, 3000 points) on {backend.spec}: test accuracy {result['accuracy']}"
    )
    assert result["accuracy"] >= 0.99
    assert history["val_accuracy"][-1] >= 0.99


def test_the_articles_network_trained_through_fit(backend: gpunn.Backend) -> None:
    """3 inputs, 4 sigmoid hidden units, 1 output; log loss; full-batch gradient descent for
    1500 iterations: the loss never rises and the rounded outputs are the targets."""
    X = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0])
    model = gpunn.Sequential(
        [gpunn.Dense(3, 4), gpunn.Sigmoid(), gpunn.Dense(4, 1)], backend=backend, seed=1
    )
    history = model.fit(
        X,
        y,
        loss=gpunn.BinaryCrossEntropy(),
        optimizer=gpunn.SGD(lr=1.0),
        epochs=1500,
        batch_size=4,
        verbose=0,
    )
    loss = np.array(history["loss"])
    assert len(loss) == 1500
    rises = np.flatnonzero(np.diff(loss) > 0)
    assert rises.size == 0, f"the loss rose after epochs {rises[:10] + 1}"
    assert loss[-1] < 0.02 < 0.5 < loss[0]
    probabilities = 1 / (1 + np.exp(-backend.to_numpy(model.predict(X)).ravel()))
    np.testing.assert_array_equal(np.round(probabilities), y)
    assert history["accuracy"][-1] == 1.0
    assert model.evaluate(X, y)["accuracy"] == pytest.approx(1.0)
