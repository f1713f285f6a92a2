"""Tests for the CNN layers (Conv2D, MaxPool2D, AvgPool2D, Flatten, BatchNorm1D/2D) and how
Sequential holds them: float64 gradient checks of every layer, the pool-before-ReLU and
conv+pool plumbing against the plain order, shapes, input_shape, running statistics as state.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpunn
from gpunn.testing import check_layer_gradients, check_model_gradients

TOL = 1e-6


def worst(errors: dict[str, float]) -> float:
    return max(errors.values())


def distinct(shape, seed=0):
    """Values at least 0.01 apart: a finite-difference step never changes which one is max."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n) * 0.01 - n * 0.005).reshape(shape)


def random_conv_shapes(count, seed):
    """(x shape, Conv2D arguments) drawn at random: strides, paddings and kernels up to 4."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
        stride = tuple(int(v) for v in rng.integers(1, 4, size=2))
        padding = tuple(int(v) for v in rng.integers(0, 3, size=2))
        H = int(rng.integers(max(1, kh - 2 * padding[0]), 8))
        W = int(rng.integers(max(1, kw - 2 * padding[1]), 8))
        N, C, O = (int(v) for v in rng.integers(1, 4, size=3))
        cases.append(((N, C, H, W), (C, O, (kh, kw), stride, padding)))
    return cases


CONV_CASES = [
    ((2, 3, 7, 6), (3, 4, 3, 1, 0)),  # odd sizes
    ((1, 1, 5, 5), (1, 2, 3, 1, 1)),  # one sample, one channel
    ((2, 2, 4, 5), (2, 3, (4, 5), 1, 0)),  # kernel = input size
    ((2, 1, 8, 7), (1, 2, 5, 2, 2)),  # stride 2, padding 2
    ((2, 2, 9, 8), (2, 2, 2, 3, 0)),  # stride > kernel
    *random_conv_shapes(4, seed=1),
]


@pytest.mark.parametrize(("x_shape", "args"), CONV_CASES)
def test_conv2d_gradient_check(x_shape, args):
    x = np.random.default_rng(2).standard_normal(x_shape)
    errors = check_layer_gradients(gpunn.Conv2D(*args), x, seed=3)
    assert set(errors) == {"0.W", "0.b", "input"}
    assert worst(errors) <= TOL, errors


@pytest.mark.parametrize(
    ("x_shape", "kernel", "stride"),
    [
        ((2, 3, 6, 6), 2, None),
        ((2, 2, 7, 5), 3, 2),
        ((1, 1, 4, 4), 4, None),
        ((2, 2, 7, 9), (3, 2), (2, 3)),
    ],
)
def test_pooling_gradient_checks(x_shape, kernel, stride):
    x = distinct(x_shape, seed=4)
    for layer in (gpunn.MaxPool2D(kernel, stride), gpunn.AvgPool2D(kernel, stride)):
        errors = check_layer_gradients(layer, x)
        assert worst(errors) <= TOL, (layer, errors)


def test_flatten_gradient_check_and_order():
    x = np.random.default_rng(5).standard_normal((3, 2, 3, 4))
    assert worst(check_layer_gradients(gpunn.Flatten(), x)) <= TOL
    model = gpunn.Sequential([gpunn.Flatten()], backend="numpy", dtype="float64")
    np.testing.assert_array_equal(model.forward(x), x.reshape(3, -1))  # C order: w fastest


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    ("layer", "x_shape"),
    [
        (lambda: gpunn.BatchNorm1D(3), (5, 3)),
        (lambda: gpunn.BatchNorm2D(2), (3, 2, 4, 5)),
        (lambda: gpunn.BatchNorm2D(2), (1, 2, 3, 3)),  # one sample: statistics over pixels
    ],
)
def test_batch_norm_gradient_check_in_both_modes(layer, x_shape, training):
    x = np.random.default_rng(6).standard_normal(x_shape) * 3 + 1
    bnorm = layer()
    errors = check_layer_gradients(bnorm, x, training=training)
    assert set(errors) == {"0.gamma", "0.beta", "input"}
    assert worst(errors) <= TOL, errors


def small_cnn(merge: bool, bn: bool = False):
    """conv -> ReLU -> max-pool 2 (moved before the ReLU and fused with the conv when
    ``merge``; a Dropout(0) in between keeps the plain order) -> second conv block -> Dense."""
    gap = [] if merge else [gpunn.Dropout(0.0)]
    norm = [gpunn.BatchNorm2D(3)] if bn else []
    return [
        gpunn.Conv2D(2, 3, 3, padding=1),
        *norm,
        gpunn.ReLU(),
        *gap,
        gpunn.MaxPool2D(2),
        gpunn.Conv2D(3, 4, 2, stride=1),
        gpunn.ReLU(),
        *gap,
        gpunn.MaxPool2D(2, stride=1),  # moved before the ReLU, but not fused (stride 1)
        gpunn.Flatten(),
        gpunn.Dense(4 * 2 * 2, 3),
    ]


def test_pool_moves_before_relu_only_where_it_may():
    model = gpunn.Sequential(small_cnn(merge=True), backend="numpy")
    conv1, relu1, pool1, conv2, _, pool2 = model.layers[:6]
    assert conv1.merged_pool is pool1 and pool1.merged and conv1._fuses_pool()
    assert conv2.merged_pool is pool2 and pool2.merged and not conv2._fuses_pool()
    assert conv1.defer_bias and relu1.bias_from is conv1
    strided = gpunn.Sequential(
        [gpunn.Conv2D(1, 2, 3, stride=2), gpunn.ReLU(), gpunn.MaxPool2D(2)], backend="numpy"
    )
    assert strided.layers[0].merged_pool is strided.layers[2]
    assert not strided.layers[0]._fuses_pool()  # the one-GEMM form needs a stride-1 conv
    plain = gpunn.Sequential(small_cnn(merge=False), backend="numpy")
    assert all(getattr(layer, "merged_pool", None) is None for layer in plain.layers)
    assert not any(getattr(layer, "merged", False) for layer in plain.layers)
    # BatchNorm between conv and ReLU, or another activation: nothing moves
    for layers in (
        [gpunn.Conv2D(1, 2, 3), gpunn.BatchNorm2D(2), gpunn.ReLU(), gpunn.MaxPool2D(2)],
        [gpunn.Conv2D(1, 2, 3), gpunn.Tanh(), gpunn.MaxPool2D(2)],
        [gpunn.Conv2D(1, 2, 3), gpunn.ReLU(), gpunn.AvgPool2D(2)],
    ):
        model = gpunn.Sequential(layers, backend="numpy")
        assert model.layers[0].merged_pool is None
        assert not getattr(model.layers[-1], "merged", False)


@pytest.mark.parametrize("data", ["random", "ties"])
def test_moved_and_fused_pools_compute_what_the_plain_order_computes(data):
    """Outputs and every gradient equal the plain conv -> ReLU -> pool order, ties included."""
    rng = np.random.default_rng(7)
    merged = gpunn.Sequential(small_cnn(True), backend="numpy", dtype="float64", seed=8)
    plain = gpunn.Sequential(small_cnn(False), backend="numpy", dtype="float64", seed=8)
    if data == "ties":  # small integers everywhere: many equal maxima, exact zeros after bias
        x = rng.integers(-2, 3, size=(3, 2, 8, 8)).astype(float)
        for p in merged.params.values():
            p[...] = rng.integers(-1, 2, size=p.shape)
    else:
        x = rng.standard_normal((3, 2, 8, 8))
    for key, p in merged.params.items():
        plain.params[PLAIN_KEY[key.split(".")[0]] + "." + key.split(".")[1]][...] = p
    dy = rng.standard_normal((3, 3))
    out = [model.forward(x).copy() for model in (merged, plain)]
    np.testing.assert_allclose(out[0], out[1], rtol=1e-12, atol=1e-12)
    dx = []
    for model in (merged, plain):
        model.forward(x)
        dx.append(model.backward(dy, input_grad=True).copy())
    np.testing.assert_allclose(dx[0], dx[1], rtol=1e-12, atol=1e-12)
    for key, g in merged.grads.items():
        index, name = key.split(".")
        np.testing.assert_allclose(
            g, plain.grads[f"{PLAIN_KEY[index]}.{name}"], rtol=1e-12, atol=1e-12, err_msg=key
        )
    if data == "ties":
        assert (x == 0).any() and (out[0] == np.round(out[0])).all()  # exact integer arithmetic


#: layer index in small_cnn(merge=True) -> the same layer in small_cnn(merge=False)
PLAIN_KEY = {"0": "0", "3": "4", "7": "9"}


@pytest.mark.parametrize("bn", [False, True])
def test_cnn_gradient_check_through_every_path(bn):
    """A whole model: fused conv+pool, moved pool, BatchNorm (training mode), Flatten, Dense."""
    x = np.random.default_rng(9).standard_normal((4, 2, 8, 8))
    model = gpunn.Sequential(small_cnn(merge=True, bn=bn), backend="numpy", dtype="float64")
    y = np.random.default_rng(10).integers(0, 3, size=4)
    errors = check_model_gradients(model, gpunn.SoftmaxCrossEntropy(), x, y, training=True)
    if bn:  # BatchNorm removes any per-channel constant: the conv bias before it has no effect
        assert np.abs(model.grads["0.b"]).max() <= 1e-12
        del errors["0.b"]
    assert worst(errors) <= TOL, errors


# ------------------------------------------------------------------------------------------
# Arguments, configs and shapes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: gpunn.Conv2D(0, 2, 3), "in_channels"),
        (lambda: gpunn.Conv2D(1, 2.0, 3), "out_channels"),
        (lambda: gpunn.Conv2D(1, 2, 0), "kernel_size"),
        (lambda: gpunn.Conv2D(1, 2, (3, 3, 3)), "kernel_size"),
        (lambda: gpunn.Conv2D(1, 2, 3, stride=0), "stride"),
        (lambda: gpunn.Conv2D(1, 2, 3, padding=-1), "padding"),
        (lambda: gpunn.Conv2D(1, 2, 3, padding="same"), "padding"),
        (lambda: gpunn.Conv2D(1, 2, 3, init="xavier"), "init"),
        (lambda: gpunn.MaxPool2D(0), "kernel_size"),
        (lambda: gpunn.AvgPool2D(2, stride=(1, 0)), "stride"),
        (lambda: gpunn.BatchNorm1D(0), "num_features"),
        (lambda: gpunn.BatchNorm2D(3, momentum=1.5), "momentum"),
        (lambda: gpunn.BatchNorm2D(3, eps=0), "eps"),
    ],
)
def test_bad_layer_arguments_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_configs_rebuild_the_layers_through_json():
    import json

    layers = [
        gpunn.Conv2D(3, 8, (3, 5), stride=(1, 2), padding=(2, 1), init="he"),
        gpunn.MaxPool2D(3, stride=2),
        gpunn.AvgPool2D((2, 3)),
        gpunn.Flatten(),
        gpunn.BatchNorm1D(7, momentum=0.2, eps=1e-3),
        gpunn.BatchNorm2D(4),
    ]
    for layer in layers:
        config = json.loads(json.dumps(layer.config()))
        clone = type(layer)(**config)
        assert clone.config() == layer.config() and repr(clone) == repr(layer)
    assert gpunn.Conv2D(1, 6, 5, padding=2).config() == {
        "in_channels": 1,
        "out_channels": 6,
        "kernel_size": 5,
        "stride": 1,
        "padding": 2,
        "init": None,
    }
    assert layers[0].describe() == "Conv2D(3x5, stride 1x2, pad 2x1, init=he)"
    assert layers[1].describe() == "MaxPool2D(3x3, stride 2)"


def test_conv2d_weights_follow_pytorch_shapes_and_he_or_glorot():
    conv = gpunn.Conv2D(16, 32, 3)
    assert conv.param_shapes() == {"W": (32, 16, 3, 3), "b": (32,)}
    he = conv.init_params(np.random.default_rng(0), "he")["W"]
    assert abs(he.std() / np.sqrt(2 / (16 * 9)) - 1) < 0.05
    glorot = conv.init_params(np.random.default_rng(0), "glorot")["W"]
    limit = np.sqrt(6 / (16 * 9 + 32 * 9))
    assert np.abs(glorot).max() <= limit and np.abs(glorot).max() > 0.99 * limit
    model = gpunn.Sequential([gpunn.Conv2D(1, 2, 3), gpunn.ReLU()], backend="numpy", seed=1)
    first = model.params["0.W"].copy()
    again = gpunn.Sequential([gpunn.Conv2D(1, 2, 3), gpunn.ReLU()], backend="numpy", seed=1)
    np.testing.assert_array_equal(again.params["0.W"], first)  # from the seed, on the host
    assert not model.params["0.b"].any()


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        ([gpunn.Conv2D(3, 4, 3)], "expects 3 input channels but gets 1"),
        ([gpunn.Conv2D(1, 4, 9)], "does not fit"),
        ([gpunn.Conv2D(1, 4, 3), gpunn.Dense(36, 10)], r"put a Flatten\(\) before it"),
        (
            [gpunn.Conv2D(1, 4, 3), gpunn.Flatten(), gpunn.Dense(35, 10)],
            "expects 35 inputs but gets 144",
        ),
        ([gpunn.MaxPool2D(3), gpunn.MaxPool2D(3)], "window does not fit an 2x2 input"),
        ([gpunn.BatchNorm2D(2)], "expects 2 channels"),
        ([gpunn.Flatten(), gpunn.BatchNorm2D(1)], r"\(channels, height, width\) maps"),
    ],
)
def test_sequential_checks_that_the_layers_fit_before_any_data(layers, match):
    with pytest.raises(ValueError, match=match):
        gpunn.Sequential(layers, backend="numpy", input_shape=(1, 8, 8))


def test_summary_shows_every_layer_output_shape():
    from gpunn.presets import lenet5

    model = gpunn.Sequential(lenet5(), backend="numpy", input_shape=(1, 28, 28))
    lines = model.summary().splitlines()
    assert lines[1].split() == ["input", "1", "x", "28", "x", "28"]
    assert lines[2].split() == ["0", "Conv2D(5x5,", "pad", "2)", "6", "x", "28", "x", "28", "156"]
    assert lines[4].split() == ["2", "MaxPool2D(2x2)", "6", "x", "14", "x", "14", "0"]
    assert lines[7].split() == ["5", "MaxPool2D(2x2)", "16", "x", "5", "x", "5", "0"]
    assert lines[8].split() == ["6", "Flatten", "400", "0"]
    assert lines[-1].split()[:2] == ["total", "61,706"]


def test_input_shape_is_learnt_from_the_first_data_and_then_enforced():
    layers = [gpunn.Conv2D(1, 2, 3), gpunn.ReLU(), gpunn.Flatten(), gpunn.Dense(72, 3)]
    model = gpunn.Sequential(layers, backend="numpy")
    assert model.input_shape is None and model.out_features == 3 and model.input_rank == 3
    with pytest.raises(ValueError, match="input_shape"):
        model.summary()
    rng = np.random.default_rng(0)
    X, y = rng.random((10, 1, 8, 8)), rng.integers(0, 3, 10)
    with pytest.raises(ValueError, match="layer 3 .*expects 72 inputs but gets 98"):
        model.predict(rng.random((2, 1, 9, 9)))  # a shape that does not fit: nothing learnt
    assert model.input_shape is None
    model.fit(X, y, loss=gpunn.SoftmaxCrossEntropy(), optimizer=gpunn.SGD(0.1), epochs=1, verbose=0)
    assert model.input_shape == (1, 8, 8) and model.output_shape == (3,)
    assert "1 x 8 x 8" in model.summary()
    with pytest.raises(
        ValueError, match=r"samples of shape \(1, 8, 9\), the model expects \(1, 8, 8\)"
    ):
        model.predict(rng.random((2, 1, 8, 9)))
    with pytest.raises(
        ValueError, match=r"4-D \(samples, channels, height, width\).*reshape\(-1, 1, 8, 8\)"
    ):
        model.evaluate(X.reshape(10, 64), y)
    with pytest.raises(ValueError, match="takes samples of shape"):
        model.set_input_shape((1, 9, 9))


def test_predict_gives_c_ordered_outputs_and_fit_refuses_feature_map_outputs():
    rng = np.random.default_rng(1)
    X, y = rng.random((6, 1, 6, 6)), rng.integers(0, 2, 6)
    model = gpunn.Sequential([gpunn.Conv2D(1, 2, 3), gpunn.ReLU()], backend="numpy")
    out = model.predict(X)
    assert out.shape == (6, 2, 4, 4) and out.flags.c_contiguous  # a copy, in the usual order
    before = model.flat_params.copy()
    with pytest.raises(ValueError, match=r"output for one sample has shape \(2, 4, 4\).*Flatten"):
        model.fit(X, y, loss=gpunn.SoftmaxCrossEntropy(), optimizer=gpunn.SGD(0.1), verbose=0)
    np.testing.assert_array_equal(model.flat_params, before)


def test_workspaces_follow_the_batch_size():
    """Steps at changing batch sizes give what a fresh model gives (workspaces re-made)."""
    from gpunn.presets import lenet5

    rng = np.random.default_rng(2)
    model = gpunn.Sequential(lenet5(image_size=12), backend="numpy", dtype="float64", seed=3)
    loss = gpunn.SoftmaxCrossEntropy()
    for n in (5, 2, 5, 1):
        x, y = rng.standard_normal((n, 1, 12, 12)), rng.integers(0, 10, n)
        fresh = gpunn.Sequential(lenet5(image_size=12), backend="numpy", dtype="float64", seed=3)
        fresh.flat_params[...] = model.flat_params
        for m in (model, fresh):
            loss.forward(m.forward(x), y)
            m.backward(loss.backward())
        np.testing.assert_array_equal(model.flat_grads, fresh.flat_grads)
        model.flat_params -= 0.1 * model.flat_grads


# ------------------------------------------------------------------------------------------
# BatchNorm state: running statistics in flat_state
# ------------------------------------------------------------------------------------------


def bn_model(backend="numpy", dtype="float64"):
    layers = [
        gpunn.Dense(3, 4),
        gpunn.BatchNorm1D(4, momentum=0.25),
        gpunn.ReLU(),
        gpunn.Dense(4, 2),
    ]
    return gpunn.Sequential(layers, backend=backend, dtype=dtype, seed=4)


def test_running_statistics_are_state_updated_by_training_forwards_only():
    model = bn_model()
    assert set(model.state) == {"1.running_mean", "1.running_var"}
    assert np.shares_memory(model.state["1.running_var"], model.flat_state)
    np.testing.assert_array_equal(model.state["1.running_mean"], np.zeros(4))
    np.testing.assert_array_equal(model.state["1.running_var"], np.ones(4))
    x = np.random.default_rng(5).standard_normal((6, 3)) * 2 + 1
    z = x @ model.params["0.W"] + model.params["0.b"]
    model.forward(x, training=False)
    np.testing.assert_array_equal(model.state["1.running_var"], np.ones(4))  # inference: unchanged
    model.forward(x)
    np.testing.assert_allclose(model.state["1.running_mean"], 0.25 * z.mean(0), rtol=1e-13)
    np.testing.assert_allclose(
        model.state["1.running_var"], 0.75 + 0.25 * z.var(0, ddof=1), rtol=1e-13
    )
    # inference normalises with the running statistics
    bn_layer = model.layers[1]
    out = bn_layer.forward(z, training=False)
    rm, rv = model.state["1.running_mean"], model.state["1.running_var"]
    np.testing.assert_allclose(out, (z - rm) / np.sqrt(rv + 1e-5), rtol=1e-12)  # gamma 1, beta 0


def test_optimizers_never_touch_the_state():
    model = bn_model()
    x, y = np.random.default_rng(6).standard_normal((8, 3)), np.arange(8) % 2
    loss = gpunn.SoftmaxCrossEntropy()
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    state = model.flat_state.copy()
    for opt in (gpunn.SGD(0.1, momentum=0.9, weight_decay=0.1), gpunn.AdamW(0.1)):
        opt.step(model)
        assert opt.state == {} or all(
            s.shape == model.flat_params.shape for s in opt.state.values()
        )
    np.testing.assert_array_equal(model.flat_state, state)


def test_to_state_dict_and_load_state_dict_carry_the_state():
    model = bn_model(dtype="float32")
    x = np.random.default_rng(7).standard_normal((8, 3)).astype(np.float32)
    model.forward(x)  # the running statistics move away from 0 and 1
    clone = model.to("numpy")
    assert clone is not model and clone.input_shape == (3,)
    np.testing.assert_array_equal(clone.flat_state, model.flat_state)
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))
    state = model.state_dict()
    assert {"1.running_mean", "1.running_var", "0.W", "1.gamma"} <= set(state)
    fresh = bn_model(dtype="float32")
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.flat_state, model.flat_state)
    np.testing.assert_array_equal(fresh.flat_params, model.flat_params)
    with pytest.raises(ValueError, match="missing"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "1.running_var"})
    with pytest.raises(ValueError, match="state 1.running_mean has shape"):
        fresh.load_state_dict({**state, "1.running_mean": np.zeros(5)})


def test_fit_refuses_a_batch_size_that_leaves_one_sample_for_batchnorm():
    model = bn_model()
    X, y = np.random.default_rng(8).standard_normal((9, 3)), np.arange(9) % 2
    before = model.flat_params.copy()
    with pytest.raises(ValueError, match="needs batches of at least 2 .* last batch .* holds 1"):
        model.fit(
            X,
            y,
            loss=gpunn.SoftmaxCrossEntropy(),
            optimizer=gpunn.SGD(0.1),
            batch_size=4,
            verbose=0,
        )
    np.testing.assert_array_equal(model.flat_params, before)
    model.fit(
        X, y, loss=gpunn.SoftmaxCrossEntropy(), optimizer=gpunn.SGD(0.1), batch_size=3, verbose=0
    )
    # BatchNorm2D on maps larger than 1x1 has several values per channel even for one sample
    cnn = gpunn.Sequential(
        [gpunn.Conv2D(1, 2, 3), gpunn.BatchNorm2D(2), gpunn.Flatten(), gpunn.Dense(8, 2)],
        backend="numpy",
    )
    cnn.fit(
        np.ones((3, 1, 4, 4)),
        np.arange(3) % 2,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.SGD(0.1),
        batch_size=2,
        verbose=0,
    )
