"""Checkpoints of CNNs: every new layer kind, BatchNorm running statistics as state/ tensors,
the input shape, bitwise resumption (by hand and through fit), and refusal of broken files."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import safetensors
import safetensors.numpy

import gpunn
from gpunn import checkpoint as ck


def cnn_layers() -> list[gpunn.Layer]:
    """Every CNN layer kind once, with non-default settings where there are any."""
    return [
        gpunn.Conv2D(2, 4, 3, stride=(1, 2), padding=1, init="he"),  # 4 x 10 x 6
        gpunn.BatchNorm2D(4, momentum=0.2),
        gpunn.ReLU(),
        gpunn.MaxPool2D(2),  # 4 x 5 x 3
        gpunn.Conv2D(4, 5, 2),  # 5 x 4 x 2
        gpunn.ReLU(),
        gpunn.MaxPool2D(2),  # 5 x 2 x 1, moved before the ReLU and fused with the conv
        gpunn.AvgPool2D((2, 1), stride=1),  # 5 x 1 x 1
        gpunn.Flatten(),
        gpunn.Dropout(0.2),
        gpunn.Dense(5, 6),
        gpunn.BatchNorm1D(6, eps=1e-3),
        gpunn.Tanh(),
        gpunn.Dense(6, 3),
    ]


SHAPE = (2, 10, 12)


def make(dtype="float32", backend="numpy", input_shape=SHAPE) -> gpunn.Sequential:
    return gpunn.Sequential(
        cnn_layers(), backend=backend, dtype=dtype, seed=5, input_shape=input_shape
    )


def data(n=24):
    rng = np.random.default_rng(11)
    return rng.standard_normal((n, *SHAPE)), rng.integers(0, 3, size=n)


def train(model, opt, steps) -> None:
    x, y = data()
    loss = gpunn.SoftmaxCrossEntropy()
    for t in steps:
        rows = slice(6 * (t % 4), 6 * (t % 4) + 6)
        loss.forward(model.forward(x[rows]), y[rows])
        model.backward(loss.backward())
        opt.step(model)


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_summary_of_the_test_model_has_every_kind():
    kinds = {layer.kind for layer in cnn_layers()}
    assert {"Conv2D", "MaxPool2D", "AvgPool2D", "Flatten", "BatchNorm1D", "BatchNorm2D"} <= kinds
    assert kinds <= set(ck.LAYER_KINDS)
    model = make()  # the layers fit the input shape
    assert model.layers[0].merged_pool is None  # BatchNorm sits between conv and ReLU
    assert model.layers[4].merged_pool is model.layers[6] and model.layers[4]._fuses_pool()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_keeps_parameters_state_and_input_shape(tmp_path: pathlib.Path, dtype):
    model, opt = make(dtype), gpunn.Adam(1e-2)
    train(model, opt, range(3))
    path = ck.save(model, tmp_path / "cnn.safetensors", opt, step=3)
    with safetensors.safe_open(str(path), framework="np") as f:
        names = set(f.keys())
        meta = f.metadata()
    assert {"state/1.running_mean", "state/1.running_var", "state/11.running_var"} <= names
    assert "model/0.W" in names and json.loads(meta["input_shape"]) == list(SHAPE)
    loaded, opt2, info = ck.load_with_optimizer(path, backend="numpy")
    assert loaded.input_shape == SHAPE and info["step"] == 3
    assert [layer.config() for layer in loaded.layers] == [layer.config() for layer in model.layers]
    assert same_bits(loaded.flat_params, model.flat_params)
    assert same_bits(loaded.flat_state, model.flat_state)
    assert not same_bits(loaded.flat_state, make(dtype).flat_state)  # statistics were saved
    x, _ = data()
    assert same_bits(loaded.predict(x), model.predict(x))
    assert ck.read_info(path)["input_shape"] == list(SHAPE)


@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path: pathlib.Path, opt_name):
    """8 steps straight vs 3, save, load, 5 more: weights, running statistics and optimizer
    state match bit for bit (Dropout masks included: NumPy generator states are saved)."""

    def optimizer():
        return gpunn.SGD(0.05, momentum=0.9) if opt_name == "SGD" else gpunn.Adam(1e-2)

    straight, opt = make(), optimizer()
    train(straight, opt, range(8))
    first, opt1 = make(), optimizer()
    train(first, opt1, range(3))
    path = ck.save(first, tmp_path / "m.safetensors", opt1, step=3)
    resumed, opt2, info = ck.load_with_optimizer(path, backend="numpy")
    train(resumed, opt2, range(info["step"], 8))
    assert same_bits(resumed.flat_params, straight.flat_params)
    assert same_bits(resumed.flat_state, straight.flat_state)
    for key, value in opt.state.items():
        assert same_bits(opt2.state[key], value), key


def test_fit_save_resume_evaluate_workflow(tmp_path: pathlib.Path):
    """fit learns the input shape; the checkpoint keeps it; fit resumed from the file with
    initial_epoch ends where an uninterrupted fit ends; evaluate of the file agrees."""
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((40, *SHAPE)), rng.integers(0, 3, 40)
    kw = dict(loss=gpunn.SoftmaxCrossEntropy(), batch_size=8, verbose=0, seed=1)
    straight = gpunn.Sequential(cnn_layers(), backend="numpy", seed=5)  # no input_shape
    straight.fit(X, y, optimizer=gpunn.Adam(1e-2), epochs=3, **kw)
    first = gpunn.Sequential(cnn_layers(), backend="numpy", seed=5)
    opt = gpunn.Adam(1e-2)
    first.fit(X, y, optimizer=opt, epochs=1, **kw)
    path = first.save(tmp_path / "e1.safetensors", opt, epoch=1)
    resumed, opt2, info = ck.load_with_optimizer(path, backend="numpy")
    assert resumed.input_shape == SHAPE
    resumed.fit(X, y, optimizer=opt2, epochs=2, initial_epoch=info["epoch"], **kw)
    assert same_bits(resumed.flat_params, straight.flat_params)
    assert same_bits(resumed.flat_state, straight.flat_state)
    final = ck.save(resumed, tmp_path / "e3.safetensors")
    assert ck.load(final, backend="numpy").evaluate(X, y) == straight.evaluate(X, y)


def test_files_without_input_shape_still_load(tmp_path: pathlib.Path):
    """Files written before input_shape existed: an MLP takes it from its first Dense layer, a
    CNN learns it from its first data."""
    mlp = gpunn.Sequential([gpunn.Dense(4, 3), gpunn.ReLU(), gpunn.Dense(3, 2)], backend="numpy")
    cnn = make(input_shape=None)
    for model, expected in ((mlp, (4,)), (cnn, None)):
        path = ck.save(model, tmp_path / "old.safetensors")
        rewrite(path, drop_meta="input_shape")
        loaded = ck.load(path, backend="numpy")
        assert loaded.input_shape == expected
        assert same_bits(loaded.flat_params, model.flat_params)


def rewrite(path, *, drop_meta=None, meta=None, tensors=None, drop_tensor=None) -> None:
    """Edit a checkpoint and sign it again, so the check under test is what must catch it."""
    with safetensors.safe_open(str(path), framework="np") as f:
        old_meta = dict(f.metadata())
        old_tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    old_meta.pop(drop_meta, None)
    old_meta.update(meta or {})
    old_tensors.pop(drop_tensor, None)
    old_tensors.update(tensors or {})
    old_meta["sha256"] = ck.tensor_digest(old_tensors)
    old_meta["metadata_sha256"] = ck.metadata_digest(old_meta)
    path.write_bytes(safetensors.numpy.save(old_tensors, metadata=old_meta))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (dict(drop_tensor="state/1.running_var"), r"missing \['state/1.running_var'\]"),
        (dict(tensors={"state/2.running_mean": np.zeros(4, np.float32)}), "unexpected"),
        (
            dict(tensors={"state/1.running_mean": np.zeros(5, np.float32)}),
            "state/1.running_mean has shape",
        ),
        (dict(tensors={"state/1.running_mean": np.zeros(4)}), "is float64, expected float32"),
        (dict(meta={"input_shape": "[2, 10]"}), "cannot build the model"),
        (dict(meta={"input_shape": "[2, 0, 12]"}), "input_shape"),
        (dict(meta={"input_shape": '"2x10x12"'}), "input_shape"),
    ],
)
def test_broken_state_or_input_shape_is_refused(tmp_path: pathlib.Path, edit, match):
    path = ck.save(make(), tmp_path / "m.safetensors")
    rewrite(path, **edit)
    with pytest.raises(ValueError, match=match) as info:
        ck.load(path, backend="numpy")
    assert str(path) in str(info.value)


def test_non_finite_running_statistics_are_not_saved(tmp_path: pathlib.Path):
    model = make()
    model.state["1.running_var"][0] = np.nan
    with pytest.raises(ValueError, match="state 1.running_var has 1 non-finite"):
        ck.save(model, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
