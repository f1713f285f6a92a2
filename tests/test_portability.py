"""Tests that the math uses only names CuPy also has, so it runs on CuPy without changes.

No GPU is needed: a stand-in array module wraps NumPy but lets through only the attribute names
the real ``cupy`` module (installed here) defines, and arrays made through it only allow the
methods and attributes ``cupy.ndarray`` defines. Any other name fails the test and is recorded.
Layers get the stand-in as their ``xp`` through a hand-made ``Backend``; losses, optimizers and
validation look ``xp`` up with ``namespace(array)``, which is patched to return the stand-in.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types

import numpy as np
import pytest

import gpunn
from gpunn import backend as backend_module

cupy = pytest.importorskip("cupy", reason="needs the cupy package (a GPU is not needed)")


class NotInCupy(AssertionError):
    """Raised (and recorded) when the code asks for a name CuPy does not define."""


class Recorder:
    def __init__(self) -> None:
        self.used: set[str] = set()
        self.missing: list[str] = []

    def check(self, ref: object, name: str, path: str) -> None:
        if not hasattr(ref, name):
            self.missing.append(path)
            raise NotInCupy(f"{path} exists in NumPy but not in CuPy")
        self.used.add(path)


class CheckedArray(np.ndarray):
    """A NumPy array whose public attributes must also exist on ``cupy.ndarray``."""

    recorder: Recorder | None = None

    def __getattribute__(self, name):
        recorder = CheckedArray.recorder
        if recorder is not None and not name.startswith("_"):
            recorder.check(cupy.ndarray, name, f"ndarray.{name}")
        return np.ndarray.__getattribute__(self, name)


def checked(value):
    if type(value) is np.ndarray:
        return value.view(CheckedArray)
    return value


class Proxy:
    """A NumPy module, function or object, with CuPy's counterpart deciding which names exist."""

    def __init__(self, real, ref, path, recorder):
        self._real, self._ref, self._path, self._recorder = real, ref, path, recorder

    def __getattr__(self, name):
        path = f"{self._path}.{name}"
        self._recorder.check(self._ref, name, path)
        value = getattr(self._real, name)
        if isinstance(value, type) or not (isinstance(value, types.ModuleType) or callable(value)):
            return value  # dtypes, classes and constants pass through unchanged
        return Proxy(value, getattr(self._ref, name), path, self._recorder)

    def __call__(self, *args, **kwargs):
        result = self._real(*args, **kwargs)
        if isinstance(result, np.random.Generator):
            return Proxy(result, cupy.random.Generator, "Generator", self._recorder)
        if isinstance(result, tuple):
            return tuple(checked(r) for r in result)
        return checked(result)

    def __repr__(self):
        return f"<numpy as cupy: {self._path}>"


@pytest.fixture
def cupy_like(monkeypatch):
    """(backend, recorder): a Backend whose xp is the stand-in; namespace() returns it too."""
    recorder = Recorder()
    xp = Proxy(np, cupy, "xp", recorder)
    for name in ("gpunn.training",):  # the model imports it lazily (Sequential.fit)
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    original = backend_module.namespace
    for name, module in list(sys.modules.items()):
        in_gpunn = name == "gpunn" or name.startswith("gpunn.")
        if in_gpunn and getattr(module, "namespace", None) is original:
            monkeypatch.setattr(module, "namespace", lambda a: xp)
    monkeypatch.setattr(CheckedArray, "recorder", recorder)
    return gpunn.Backend("numpy", None, xp), recorder


def network():
    return [
        gpunn.Dense(5, 8),
        gpunn.ReLU(),
        gpunn.Dense(8, 8),
        gpunn.LeakyReLU(0.1),
        gpunn.Dropout(0.25),
        gpunn.Dense(8, 6),
        gpunn.Sigmoid(),
        gpunn.Dense(6, 6),
        gpunn.Tanh(),
    ]


LOSSES = {
    "ce": (gpunn.SoftmaxCrossEntropy, 3),
    "bce": (gpunn.BinaryCrossEntropy, 1),
    "mse": (gpunn.MeanSquaredError, 2),
}
OPTIMIZERS = {
    "sgd": (gpunn.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    "adam": (gpunn.Adam, {"lr": 0.01, "weight_decay": 1e-3}),
    "adamw": (gpunn.AdamW, {"lr": 0.01}),
}


def train(backend, loss_name, opt_name, steps=3):
    cls, out = LOSSES[loss_name]
    opt_cls, kwargs = OPTIMIZERS[opt_name]
    model = gpunn.Sequential(network() + [gpunn.Dense(6, out)], backend=backend, seed=1)
    loss, opt = cls(), opt_cls(**kwargs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 5))
    if loss_name == "ce":
        y = rng.integers(0, out, 12)
    elif loss_name == "bce":
        y = rng.integers(0, 2, 12).astype(np.float32)
    else:
        y = rng.standard_normal((12, out)).astype(np.float32)
    for _ in range(steps):
        logits = model.forward(backend.asarray(x, dtype=model.dtype))
        value = loss.forward(logits, backend.asarray(y))
        model.backward(loss.backward())
        opt.step(model)
    predictions = model.predict(x)
    state = opt.state_dict()
    return (
        backend.to_numpy(model.flat_params).copy(),
        float(value),
        np.asarray(predictions).copy(),
        state,
    )


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_training_step_uses_only_cupy_names(cupy_like, loss_name, opt_name):
    backend, recorder = cupy_like
    params, value, predictions, _ = train(backend, loss_name, opt_name)
    assert not recorder.missing, f"names CuPy lacks: {sorted(set(recorder.missing))}"
    assert np.isfinite(value) and np.all(np.isfinite(params))
    # the stand-in really saw the math ...
    expected = {
        "xp.matmul",
        "xp.exp",
        "xp.maximum",
        "xp.where",
        "xp.tanh",
        "xp.multiply",
        "xp.zeros",
        "xp.random.default_rng",
        "Generator.random",
    }
    expected |= {
        "ce": {"xp.log", "xp.exp", "xp.arange"},
        "bce": {"xp.log1p", "xp.abs"},
        "mse": {"xp.asarray"},
    }[loss_name]
    expected |= {"sgd": set(), "adam": {"xp.sqrt", "xp.zeros_like"}, "adamw": {"xp.sqrt"}}[opt_name]
    assert expected <= recorder.used, sorted(expected - recorder.used)
    assert any(name.startswith("ndarray.") for name in recorder.used)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_stand_in_computes_exactly_what_numpy_computes(cupy_like, loss_name, opt_name):
    backend, _ = cupy_like
    wrapped = train(backend, loss_name, opt_name)
    plain = train(gpunn.get_backend("numpy"), loss_name, opt_name)
    np.testing.assert_array_equal(wrapped[0], plain[0])
    assert wrapped[1] == plain[1]
    np.testing.assert_array_equal(wrapped[2], plain[2])


def cnn():
    """Every CNN layer kind and both pooling plumbings (fused with the conv, moved only)."""
    return [
        gpunn.Conv2D(2, 3, 3, padding=1),
        gpunn.BatchNorm2D(3),
        gpunn.ReLU(),
        gpunn.MaxPool2D(2),  # after BatchNorm: a pool layer of its own
        gpunn.Conv2D(3, 4, 2, stride=(2, 1), padding=(1, 0)),
        gpunn.ReLU(),
        gpunn.MaxPool2D(2, stride=1),  # moved before the ReLU, run by the conv
        gpunn.Conv2D(4, 4, 1),
        gpunn.LeakyReLU(0.1),
        gpunn.AvgPool2D(1),
        gpunn.Conv2D(4, 5, 1),
        gpunn.ReLU(),
        gpunn.MaxPool2D(2),  # fused with the conv into one GEMM
        gpunn.Flatten(),
        gpunn.Dense(5, 6),
        gpunn.BatchNorm1D(6),
        gpunn.Tanh(),
        gpunn.Dense(6, 3),
    ]


def train_cnn(backend, opt_name, steps=3):
    opt_cls, kwargs = OPTIMIZERS[opt_name]
    model = gpunn.Sequential(cnn(), backend=backend, seed=2, input_shape=(2, 10, 9))
    assert model.layers[10]._fuses_pool() and model.layers[4].merged_pool is model.layers[6]
    loss, opt = gpunn.SoftmaxCrossEntropy(), opt_cls(**kwargs)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 2, 10, 9)), rng.integers(0, 3, 6)
    for _ in range(steps):
        value = loss.forward(
            model.forward(backend.asarray(x, dtype=model.dtype)), backend.asarray(y)
        )
        model.backward(loss.backward())
        opt.step(model)
    predictions = model.predict(x)
    return (
        backend.to_numpy(model.flat_params).copy(),
        backend.to_numpy(model.flat_state).copy(),
        float(value),
        np.asarray(predictions).copy(),
    )


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_cnn_training_step_uses_only_cupy_names(cupy_like, opt_name):
    backend, recorder = cupy_like
    params, state, value, predictions = train_cnn(backend, opt_name)
    assert not recorder.missing, f"names CuPy lacks: {sorted(set(recorder.missing))}"
    assert np.isfinite(value) and np.all(np.isfinite(params)) and np.all(np.isfinite(state))
    expected = {
        "xp.lib.stride_tricks.as_strided",  # im2col's patches
        "xp.matmul",
        "xp.greater",  # max-pool's running comparison
        "xp.sqrt",  # batch norm
        "xp.sum",
        "ndarray.transpose",
        "ndarray.flags",
    }
    assert expected <= recorder.used, sorted(expected - recorder.used)
    plain = train_cnn(gpunn.get_backend("numpy"), opt_name)
    for got, want in zip((params, state, value, predictions), plain, strict=True):
        np.testing.assert_array_equal(got, want)


def test_cnn_checkpoint_moves_between_backends_bit_for_bit(cupy_like, tmp_path):
    """Saved from the stand-in backend, loaded on NumPy, and back: every bit is kept."""
    from gpunn import checkpoint

    backend, recorder = cupy_like
    model = gpunn.Sequential(cnn(), backend=backend, seed=2, input_shape=(2, 10, 9))
    x = np.random.default_rng(1).standard_normal((6, 2, 10, 9))
    model.forward(backend.asarray(x, dtype=model.dtype))  # running statistics move
    path = checkpoint.save(model, tmp_path / "cnn.safetensors")
    on_numpy = checkpoint.load(path, backend="numpy")
    back = checkpoint.load(
        checkpoint.save(on_numpy, tmp_path / "back.safetensors"), backend=backend
    )
    for other in (on_numpy, back):
        np.testing.assert_array_equal(
            other.backend.to_numpy(other.flat_params), model.backend.to_numpy(model.flat_params)
        )
        np.testing.assert_array_equal(
            other.backend.to_numpy(other.flat_state), model.backend.to_numpy(model.flat_state)
        )
        np.testing.assert_array_equal(np.asarray(other.predict(x)), np.asarray(model.predict(x)))
    assert not recorder.missing


def test_losses_and_optimizers_get_the_stand_in(cupy_like):
    backend, recorder = cupy_like
    z = backend.xp.asarray(np.random.default_rng(0).standard_normal((4, 3)))
    assert gpunn.nn.losses.namespace(z) is backend.xp and gpunn.nn.optim.namespace(z) is backend.xp
    gpunn.SoftmaxCrossEntropy().forward(z, np.array([0, 1, 2, 0]))
    assert "xp.arange" in recorder.used


def test_stand_in_rejects_and_records_numpy_only_names(cupy_like):
    backend, recorder = cupy_like
    module_only = sorted(n for n in dir(np) if not n.startswith("_") and not hasattr(cupy, n))
    array_only = sorted(
        n for n in dir(np.ndarray) if not n.startswith("_") and not hasattr(cupy.ndarray, n)
    )
    assert module_only and array_only
    with pytest.raises(NotInCupy):
        getattr(backend.xp, module_only[0])
    a = backend.xp.zeros(3)
    assert isinstance(a, CheckedArray)
    with pytest.raises(NotInCupy):
        getattr(a, array_only[0])
    assert recorder.missing == [f"xp.{module_only[0]}", f"ndarray.{array_only[0]}"]
