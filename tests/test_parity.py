"""Tests that every backend and dtype computes what the NumPy float64 reference computes.

Each run starts from the same seed. Forward outputs, losses, gradients and the weights after 10
steps of each optimizer must agree with the NumPy float64 run: float32 within rtol 1e-4 and
atol 1e-5 * max|reference|, float64 within rtol 1e-7 (and atol 1e-9 * max|reference|). On a
machine without a GPU this still compares NumPy float32 with NumPy float64 on every run.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpunn

TOLERANCE = {"float32": (1e-4, 1e-5), "float64": (1e-7, 1e-9)}  # (rtol, atol / max|ref|)

LOSSES = {
    "ce": (gpunn.SoftmaxCrossEntropy, 4),
    "bce": (gpunn.BinaryCrossEntropy, 1),
    "mse": (gpunn.MeanSquaredError, 3),
}

OPTIMIZERS = {
    "sgd": (gpunn.SGD, {"lr": 0.1}),
    "sgd-momentum": (gpunn.SGD, {"lr": 0.1, "momentum": 0.9}),
    "sgd-nesterov": (gpunn.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    "sgd-wd": (gpunn.SGD, {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.01}),
    "adam": (gpunn.Adam, {"lr": 0.01}),
    "adam-wd": (gpunn.Adam, {"lr": 0.01, "weight_decay": 0.01}),
    "adamw": (gpunn.AdamW, {"lr": 0.01}),
}


def build(backend, dtype, out):
    """Every activation once; no Dropout (NumPy and CuPy draw different masks)."""
    layers = [
        gpunn.Dense(6, 12),
        gpunn.ReLU(),
        gpunn.Dense(12, 10),
        gpunn.Sigmoid(),
        gpunn.Dense(10, 8),
        gpunn.LeakyReLU(0.05),
        gpunn.Dense(8, 8),
        gpunn.Tanh(),
        gpunn.Dense(8, out),
    ]
    return gpunn.Sequential(layers, backend=backend, dtype=dtype, seed=3)


def batch(loss_name, out, seed=0, n=32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6))
    if loss_name == "ce":
        return x, rng.integers(0, out, n)
    if loss_name == "bce":
        return x, rng.integers(0, 2, n).astype(float)
    return x, rng.standard_normal((n, out))


def run(backend, dtype, loss_name):
    """Forward, loss and backward once; everything copied to the host."""
    cls, out = LOSSES[loss_name]
    model, loss = build(backend, dtype, out), cls()
    x, y = batch(loss_name, out)
    ydtype = None if loss_name == "ce" else dtype
    logits = model.forward(backend.asarray(x, dtype=dtype))
    result = {"logits": backend.to_numpy(logits).copy()}
    result["loss"] = np.asarray(float(loss.forward(logits, backend.asarray(y, dtype=ydtype))))
    dx = model.backward(loss.backward())
    assert dx is None
    for key, grad in model.grads.items():
        result[f"grad {key}"] = backend.to_numpy(grad).copy()
    return result


def assert_close(got, ref, dtype, what):
    rtol, atol = TOLERANCE[dtype]
    assert got.shape == ref.shape, what
    np.testing.assert_allclose(
        got, ref, rtol=rtol, atol=atol * float(np.abs(ref).max()), err_msg=what
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_forward_loss_and_gradients_match_numpy_float64(backend, dtype, loss_name):
    reference = run(gpunn.get_backend("numpy"), "float64", loss_name)
    got = run(backend, dtype, loss_name)
    assert set(got) == set(reference)
    for key, ref in reference.items():
        assert got[key].dtype == np.dtype(dtype) or key == "loss", key
        assert_close(got[key], ref, dtype, key)


def train(backend, dtype, opt_name, steps=10):
    cls, kwargs = OPTIMIZERS[opt_name]
    model, loss, opt = build(backend, dtype, 4), gpunn.SoftmaxCrossEntropy(), cls(**kwargs)
    for step in range(steps):
        x, y = batch("ce", 4, seed=step)
        loss.forward(model.forward(backend.asarray(x, dtype=dtype)), backend.asarray(y))
        model.backward(loss.backward())
        opt.step(model)
    return {k: backend.to_numpy(v).copy() for k, v in model.params.items()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_ten_optimizer_steps_match_numpy_float64(backend, dtype, opt_name):
    reference = train(gpunn.get_backend("numpy"), "float64", opt_name)
    got = train(backend, dtype, opt_name)
    start = {k: backend.to_numpy(v) for k, v in build("numpy", "float64", 4).params.items()}
    for key, ref in reference.items():
        assert not np.allclose(ref, start[key]), f"{key} did not move"  # the steps did something
        assert got[key].dtype == np.dtype(dtype)
        assert_close(got[key], ref, dtype, f"{opt_name} {key}")


def test_float32_and_float64_really_differ():
    """The float32 run is a float32 computation (so the parity tests above are not vacuous)."""
    a = run(gpunn.get_backend("numpy"), "float32", "ce")
    b = run(gpunn.get_backend("numpy"), "float64", "ce")
    assert a["logits"].dtype == np.float32
    assert not np.array_equal(a["logits"].astype(np.float64), b["logits"])


# ------------------------------------------------------------------------------------------
# A CNN: every convolution path (fused conv + pool, moved pool, plain), pools, BatchNorm
# ------------------------------------------------------------------------------------------


def build_cnn(backend, dtype):
    layers = [
        gpunn.Conv2D(2, 4, 3, padding=1),
        gpunn.ReLU(),
        gpunn.MaxPool2D(2),  # fused with the conv
        gpunn.Conv2D(4, 4, 3, stride=2, padding=1),
        gpunn.LeakyReLU(0.1),
        gpunn.BatchNorm2D(4),  # after the activation, so that the conv's bias matters
        gpunn.AvgPool2D(2, stride=1),
        gpunn.Conv2D(4, 5, 1),
        gpunn.ReLU(),
        gpunn.MaxPool2D(1),  # moved before the ReLU
        gpunn.Flatten(),
        gpunn.Dense(5, 6),
        gpunn.Tanh(),
        gpunn.BatchNorm1D(6),
        gpunn.Dense(6, 4),
    ]
    return gpunn.Sequential(layers, backend=backend, dtype=dtype, seed=3, input_shape=(2, 8, 8))


def train_cnn(backend, dtype, opt_name, steps=10):
    cls, kwargs = OPTIMIZERS[opt_name]
    model, loss, opt = build_cnn(backend, dtype), gpunn.SoftmaxCrossEntropy(), cls(**kwargs)
    result = {}
    for step in range(steps):
        rng = np.random.default_rng(step)
        x, y = rng.standard_normal((8, 2, 8, 8)), rng.integers(0, 4, 8)
        logits = model.forward(backend.asarray(x, dtype=dtype))
        loss.forward(logits, backend.asarray(y))
        model.backward(loss.backward())
        if step == 0:  # the first step's outputs and gradients, before any update
            result["logits"] = backend.to_numpy(logits).copy()
            for key, grad in model.grads.items():
                result[f"grad {key}"] = backend.to_numpy(grad).copy()
        opt.step(model)
    for key, value in {**model.params, **model.state}.items():
        result[key] = backend.to_numpy(value).copy()
    x = np.random.default_rng(99).standard_normal((3, 2, 8, 8))
    result["predict"] = backend.to_numpy(model.predict(x)).copy()  # the running statistics
    return result


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adam"])
def test_cnn_outputs_gradients_and_ten_steps_match_numpy_float64(backend, dtype, opt_name):
    reference = train_cnn(gpunn.get_backend("numpy"), "float64", opt_name)
    got = train_cnn(backend, dtype, opt_name)
    assert set(got) == set(reference)
    for key, ref in reference.items():
        assert got[key].dtype == np.dtype(dtype), key
        assert_close(got[key], ref, dtype, key)
