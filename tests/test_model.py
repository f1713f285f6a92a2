"""Tests for gpunn.model.Sequential: forward/backward, flat buffers, init, copies, grad checks."""

from __future__ import annotations

import re

import numpy as np
import pytest

import gpunn
from gpunn.testing import check_model_gradients

ACTIVATIONS = {
    "relu": gpunn.ReLU,
    "leaky": lambda: gpunn.LeakyReLU(0.1),
    "sigmoid": gpunn.Sigmoid,
    "tanh": gpunn.Tanh,
}


def mlp(widths, activation="tanh", **kwargs):
    """Dense layers of the given widths with an activation between each pair."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(gpunn.Dense(n_in, n_out))
        if i < len(widths) - 2 and activation is not None:
            layers.append(ACTIVATIONS[activation]())
    return gpunn.Sequential(layers, **kwargs)


def host(backend, a):
    return backend.to_numpy(a).copy()


# ------------------------------------------------------------------------------------------
# Forward and backward against hand-written NumPy
# ------------------------------------------------------------------------------------------


def reference_forward(p, x):
    h1 = np.maximum(x @ p["0.W"] + p["0.b"], 0)
    h2 = 1 / (1 + np.exp(-(h1 @ p["2.W"] + p["2.b"])))
    return h1, h2, h2 @ p["4.W"] + p["4.b"]


def small_net(backend, dtype="float64"):
    layers = [
        gpunn.Dense(4, 6),
        gpunn.ReLU(),
        gpunn.Dense(6, 5),
        gpunn.Sigmoid(),
        gpunn.Dense(5, 3),
    ]
    return gpunn.Sequential(layers, backend=backend, dtype=dtype, seed=1)


def test_forward_matches_numpy(backend):
    model = small_net(backend)
    x = np.random.default_rng(0).standard_normal((7, 4))
    p = {k: host(backend, v) for k, v in model.params.items()}
    out = host(backend, model.forward(backend.asarray(x)))
    np.testing.assert_allclose(out, reference_forward(p, x)[2], rtol=1e-13, atol=1e-15)
    assert model.in_features == 4 and model.out_features == 3


def test_backward_matches_numpy(backend):
    model = small_net(backend)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((7, 4)), rng.standard_normal((7, 3))
    p = {k: host(backend, v) for k, v in model.params.items()}
    model.forward(backend.asarray(x))
    assert model.backward(backend.asarray(dy)) is None
    h1, h2, _ = reference_forward(p, x)
    dz2 = (dy @ p["4.W"].T) * h2 * (1 - h2)
    dz1 = (dz2 @ p["2.W"].T) * (h1 > 0)
    expected = {
        "4.W": h2.T @ dy,
        "4.b": dy.sum(0),
        "2.W": h1.T @ dz2,
        "2.b": dz2.sum(0),
        "0.W": x.T @ dz1,
        "0.b": dz1.sum(0),
    }
    for key, value in expected.items():
        np.testing.assert_allclose(host(backend, model.grads[key]), value, rtol=1e-12, atol=1e-14)


def test_backward_returns_input_gradient_when_asked(backend):
    """input_grad=True must give dL/dx even when the first layer is a Dense layer."""
    model = small_net(backend)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((7, 4)), rng.standard_normal((7, 3))
    p = {k: host(backend, v) for k, v in model.params.items()}
    model.forward(backend.asarray(x))
    dx = model.backward(backend.asarray(dy), input_grad=True)
    assert dx is not None
    h1, h2, _ = reference_forward(p, x)
    dz2 = (dy @ p["4.W"].T) * h2 * (1 - h2)
    dz1 = (dz2 @ p["2.W"].T) * (h1 > 0)
    np.testing.assert_allclose(host(backend, dx), dz1 @ p["0.W"].T, rtol=1e-12, atol=1e-14)
    # an activation in front: dx goes through it too
    front = gpunn.Sequential([gpunn.Tanh(), gpunn.Dense(4, 3)], backend=backend, dtype="float64")
    front.forward(backend.asarray(x))
    dx = host(backend, front.backward(backend.asarray(dy), input_grad=True))
    expected = (dy @ host(backend, front.params["1.W"]).T) * (1 - np.tanh(x) ** 2)
    np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------
# Parameters and gradients: dicts of views into the flat buffers
# ------------------------------------------------------------------------------------------


def test_params_and_grads_are_keyed_by_layer_index(backend):
    model = small_net(backend)
    keys = ["0.W", "0.b", "2.W", "2.b", "4.W", "4.b"]
    assert list(model.params) == keys and list(model.grads) == keys
    shapes = {"0.W": (4, 6), "0.b": (6,), "2.W": (6, 5), "2.b": (5,), "4.W": (5, 3), "4.b": (3,)}
    for key, shape in shapes.items():
        assert model.params[key].shape == shape and model.grads[key].shape == shape
        assert model.params[key].dtype == model.flat_params.dtype
    assert model.num_params == 4 * 6 + 6 + 6 * 5 + 5 + 5 * 3 + 3
    assert model.flat_params.ndim == 1 and model.flat_params.size >= model.num_params
    assert model.flat_grads.shape == model.flat_params.shape


def test_param_views_share_memory_with_the_flat_buffers(backend):
    model = small_net(backend)
    flat_before = host(backend, model.flat_params)
    # writing a view changes the flat buffer, in one place only
    model.params["2.W"][1, 2] = 123.0
    model.params["4.b"][...] = -7.0
    flat = host(backend, model.flat_params)
    changed = np.flatnonzero(flat != flat_before)
    assert len(changed) == 1 + 3 and 123.0 in flat[changed] and np.sum(flat == -7.0) == 3
    # writing the flat buffer changes every view
    model.flat_params[...] = 0.5
    for value in model.params.values():
        assert np.all(host(backend, value) == 0.5)
    model.flat_grads[...] = 2.0
    for value in model.grads.values():
        assert np.all(host(backend, value) == 2.0)
    model.grads["0.W"][0, 0] = 9.0
    assert 9.0 in host(backend, model.flat_grads)
    model.zero_grad()
    assert not np.any(host(backend, model.flat_grads))


def test_each_parameter_starts_on_a_64_element_boundary_and_the_padding_stays_zero(backend):
    """Aligned starts keep every W and b on whole 256-byte (float32) lines for the GEMMs and the
    fused kernels; the gaps between them stay 0 in both buffers, so whole-buffer sums (the
    epoch's weight checksum, a data-parallel all-reduce) see only the parameters."""
    model = small_net(backend)
    starts = [start for start, _ in model.layout.values()]
    assert starts == [0, 64, 128, 192, 256, 320]  # each of the six fits in one 64-block
    assert model.flat_params.size == 384
    used = np.zeros(model.flat_params.size, dtype=bool)
    for start, shape in model.layout.values():
        used[start : start + int(np.prod(shape))] = True
    model.forward(backend.asarray(np.ones((2, 4))))
    model.backward(backend.asarray(np.ones((2, 3))))
    gpunn.SGD(0.1).step(model)
    assert not np.any(host(backend, model.flat_params)[~used])
    assert not np.any(host(backend, model.flat_grads)[~used])


def test_the_caller_s_gradient_array_is_left_as_it_was(backend):
    """backward reads dL/dlogits and never writes into it, even when the last layer is one
    (ReLU) that works in place on the gradient a layer after it hands over."""
    for last in (gpunn.ReLU, gpunn.Sigmoid, gpunn.Tanh, lambda: gpunn.LeakyReLU(0.1)):
        model = gpunn.Sequential(
            [gpunn.Dense(4, 6), gpunn.ReLU(), gpunn.Dense(6, 3), last()],
            backend=backend,
            dtype="float64",
        )
        rng = np.random.default_rng(0)
        model.forward(backend.asarray(rng.standard_normal((5, 4))))
        dy = backend.asarray(rng.standard_normal((5, 3)))
        before = host(backend, dy)
        model.backward(dy)
        np.testing.assert_array_equal(host(backend, dy), before)


def test_backward_writes_into_flat_grads(backend):
    model = small_net(backend)
    model.forward(backend.asarray(np.ones((2, 4))))
    model.backward(backend.asarray(np.ones((2, 3))))
    flat = host(backend, model.flat_grads)
    total = sum(float(np.abs(host(backend, g)).sum()) for g in model.grads.values())
    assert total > 0
    np.testing.assert_allclose(np.abs(flat).sum(), total, rtol=1e-12)


def test_optimizer_updates_show_in_the_views(backend):
    model = small_net(backend)
    before = {k: host(backend, v) for k, v in model.params.items()}
    model.flat_grads[...] = 1.0
    gpunn.SGD(0.5).step(model)
    for key, value in model.params.items():
        np.testing.assert_allclose(host(backend, value), before[key] - 0.5, rtol=1e-15)


# ------------------------------------------------------------------------------------------
# Initialisation, seeds and dtypes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "leaky"])
def test_he_init_before_relu_family(activation):
    model = mlp([300, 400, 2], activation, backend="numpy", dtype="float64")
    W = model.params["0.W"]
    assert abs(W.std() / np.sqrt(2 / 300) - 1) < 0.02
    assert np.abs(W).max() > np.sqrt(6 / 700) * 1.5  # normal tails, not a Glorot box
    assert not np.any(model.params["0.b"])


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_glorot_init_before_sigmoid_and_tanh(activation):
    model = mlp([300, 400, 2], activation, backend="numpy", dtype="float64")
    W, limit = model.params["0.W"], np.sqrt(6 / 700)
    assert np.abs(W).max() <= limit and np.abs(W).max() > 0.99 * limit
    assert abs(W.std() / (limit / np.sqrt(3)) - 1) < 0.02
    assert not np.any(model.params["0.b"])


def test_last_layer_gets_glorot_and_explicit_init_wins():
    model = gpunn.Sequential(
        [gpunn.Dense(200, 300, init="he"), gpunn.Sigmoid(), gpunn.Dense(300, 100)],
        backend="numpy",
        dtype="float64",
    )
    he, last = model.params["0.W"], model.params["2.W"]
    assert abs(he.std() / np.sqrt(2 / 200) - 1) < 0.03
    assert np.abs(he).max() > np.sqrt(6 / 500)
    assert np.abs(last).max() <= np.sqrt(6 / 400)
    glorot = gpunn.Sequential(
        [gpunn.Dense(200, 300, init="glorot"), gpunn.ReLU()], backend="numpy", dtype="float64"
    )
    assert np.abs(glorot.params["0.W"]).max() <= np.sqrt(6 / 500)


def test_the_init_hint_comes_from_the_activation_right_after_each_dense_layer():
    """Dense -> Dense -> ReLU: the ReLU feeds on the second Dense layer only. The first gets
    Glorot (no activation follows it), exactly as an explicit init="glorot" would give it;
    layers without parameters (Dropout) are looked past."""
    rng_layers = [gpunn.Dense(30, 40), gpunn.Dense(40, 20), gpunn.ReLU(), gpunn.Dense(20, 2)]
    model = gpunn.Sequential(rng_layers, backend="numpy", dtype="float64", seed=4)
    explicit = gpunn.Sequential(
        [
            gpunn.Dense(30, 40, init="glorot"),
            gpunn.Dense(40, 20, init="he"),
            gpunn.ReLU(),
            gpunn.Dense(20, 2, init="glorot"),
        ],
        backend="numpy",
        dtype="float64",
        seed=4,
    )
    np.testing.assert_array_equal(model.flat_params, explicit.flat_params)
    past_dropout = gpunn.Sequential(
        [gpunn.Dense(30, 40), gpunn.Dropout(0.2), gpunn.ReLU(), gpunn.Dense(40, 2)],
        backend="numpy",
        dtype="float64",
        seed=4,
    )
    he = gpunn.Sequential(
        [gpunn.Dense(30, 40, init="he"), gpunn.Dense(40, 2, init="glorot")],
        backend="numpy",
        dtype="float64",
        seed=4,
    )
    np.testing.assert_array_equal(past_dropout.flat_params, he.flat_params)


def test_same_seed_same_weights_other_seed_other_weights(backend):
    a = host(backend, small_net(backend).flat_params)
    b = host(backend, small_net(backend).flat_params)
    np.testing.assert_array_equal(a, b)
    layers = [
        gpunn.Dense(4, 6),
        gpunn.ReLU(),
        gpunn.Dense(6, 5),
        gpunn.Sigmoid(),
        gpunn.Dense(5, 3),
    ]
    other = gpunn.Sequential(layers, backend=backend, dtype="float64", seed=2)
    assert not np.array_equal(a, host(backend, other.flat_params))


def test_weights_do_not_depend_on_backend_or_dtype(backend):
    ref = small_net("numpy", "float64")
    for dtype in ("float32", "float64"):
        model = small_net(backend, dtype)
        for key, value in ref.params.items():
            np.testing.assert_array_equal(host(backend, model.params[key]), value.astype(dtype))


def test_float32_by_default_and_float64_on_request(backend):
    model = gpunn.Sequential([gpunn.Dense(3, 2), gpunn.Tanh()], backend=backend)
    assert model.dtype == np.float32
    assert model.flat_params.dtype == np.float32 and model.flat_grads.dtype == np.float32
    assert all(v.dtype == np.float32 for v in model.params.values())
    x = np.ones((2, 3))  # float64 input is cast to the model's dtype
    assert model.forward(backend.asarray(x)).dtype == np.float32
    assert model.predict(x).dtype == np.float32
    wide = gpunn.Sequential([gpunn.Dense(3, 2)], backend=backend, dtype="float64")
    assert wide.flat_params.dtype == np.float64
    assert wide.forward(backend.asarray(x, dtype="float32")).dtype == np.float64


@pytest.mark.parametrize("dtype", ["float16", "int32", "double", "bfloat16"])
def test_unsupported_dtype_raises(dtype):
    with pytest.raises(ValueError, match="dtype"):
        gpunn.Sequential([gpunn.Dense(2, 2)], backend="numpy", dtype=dtype)


# ------------------------------------------------------------------------------------------
# Construction errors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layers",
    [
        [gpunn.Dense(2, 3), gpunn.Dense(4, 1)],
        [gpunn.Dense(2, 3), gpunn.ReLU(), gpunn.Dense(2, 1)],
        [gpunn.Dense(5, 3), gpunn.Tanh(), gpunn.Dropout(0.1), gpunn.Dense(3, 4), gpunn.Dense(3, 1)],
    ],
)
def test_width_mismatch_raises(layers):
    with pytest.raises(ValueError, match="inputs"):
        gpunn.Sequential(layers, backend="numpy")


@pytest.mark.parametrize("layers", [[], [gpunn.Dense(2, 2), "relu"], [object()]])
def test_bad_layer_lists_raise(layers):
    with pytest.raises(ValueError):
        gpunn.Sequential(layers, backend="numpy")


def test_backend_none_uses_get_backend(monkeypatch):
    monkeypatch.setenv("GPUNN_BACKEND", "numpy")
    model = gpunn.Sequential([gpunn.Dense(2, 2)])
    assert model.backend is gpunn.get_backend("numpy")
    assert repr(model) == (
        "Sequential([Dense(in_features=2, out_features=2, init=None)], "
        "backend='numpy', dtype='float32')"
    )


# ------------------------------------------------------------------------------------------
# predict, to(), state_dict
# ------------------------------------------------------------------------------------------


def test_predict_returns_a_fresh_array_each_time(backend):
    model = small_net(backend, "float32")
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    p1 = model.predict(x1)
    saved = host(backend, p1)
    p2 = model.predict(x2)
    out = model.forward(backend.asarray(x2))
    assert p1 is not p2 and p2 is not out
    np.testing.assert_array_equal(host(backend, p1), saved)  # not overwritten
    saved2 = host(backend, p2)
    np.testing.assert_array_equal(saved2, host(backend, out))
    if backend.xp is np:
        assert not np.shares_memory(p1, p2) and not np.shares_memory(p2, out)
    model.forward(backend.asarray(x1))  # reuses the model's own output array ...
    np.testing.assert_array_equal(host(backend, p2), saved2)  # ... but not predict's
    assert isinstance(p1, backend.xp.ndarray) and p1.shape == (5, 3)


def test_predict_uses_inference_mode(backend):
    layers = [gpunn.Dense(6, 8), gpunn.Tanh(), gpunn.Dropout(0.5), gpunn.Dense(8, 2)]
    model = gpunn.Sequential(layers, backend=backend, dtype="float64")
    x = np.random.default_rng(0).standard_normal((4, 6))
    expected = host(backend, model.forward(backend.asarray(x), training=False))
    np.testing.assert_array_equal(host(backend, model.predict(x)), expected)
    np.testing.assert_array_equal(host(backend, model.predict(x)), expected)


def test_predict_on_a_model_of_activations_only(backend):
    """A model without Dense layers (width None) still predicts, like its forward does."""
    model = gpunn.Sequential([gpunn.Tanh()], backend=backend, dtype="float64")
    x = np.random.default_rng(0).standard_normal((3, 5))
    np.testing.assert_allclose(host(backend, model.predict(x)), np.tanh(x), rtol=1e-15)


def test_to_copies_weights_into_an_independent_model(backend):
    source = small_net("numpy", "float32")
    clone = source.to(backend)
    assert clone is not source and clone.backend == backend
    assert clone.dtype == source.dtype and clone.seed == source.seed
    assert [type(layer) for layer in clone.layers] == [type(layer) for layer in source.layers]
    assert all(a is not b for a, b in zip(clone.layers, source.layers, strict=True))
    for key, value in source.params.items():
        np.testing.assert_array_equal(host(backend, clone.params[key]), value)
    x = np.random.default_rng(0).standard_normal((3, 4))
    np.testing.assert_allclose(
        host(backend, clone.predict(x)), source.predict(x), rtol=1e-5, atol=1e-6
    )
    before = source.flat_params.copy()
    clone.flat_params[...] = 0  # changing the copy leaves the source alone ...
    np.testing.assert_array_equal(source.flat_params, before)
    source.params["0.W"][...] = 3.0  # ... and the other way round
    assert not np.any(host(backend, clone.flat_params))


def test_to_copies_the_trained_weights_not_the_initial_ones(backend):
    """A model moved after training carries what training did, biases included (they start
    at 0, so a copy of the seed's initial weights would have them all 0)."""
    source = small_net("numpy", "float32")
    initial = source.flat_params.copy()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 4)), rng.integers(0, 3, 16)
    loss, opt = gpunn.SoftmaxCrossEntropy(), gpunn.SGD(0.5)
    for _ in range(3):
        loss.forward(source.forward(x), y)
        source.backward(loss.backward())
        opt.step(source)
    assert not np.array_equal(source.flat_params, initial) and np.any(source.params["4.b"])
    clone = source.to(backend)
    np.testing.assert_array_equal(host(backend, clone.flat_params), source.flat_params)


def test_to_keeps_layer_settings(backend):
    layers = [gpunn.Dense(3, 4, init="he"), gpunn.LeakyReLU(0.2), gpunn.Dropout(0.3)]
    clone = gpunn.Sequential(layers + [gpunn.Dense(4, 1)], backend="numpy").to(backend)
    assert clone.layers[0].init == "he" and clone.layers[1].slope == 0.2
    assert clone.layers[2].p == 0.3


def test_state_dict_round_trip(backend):
    model = small_net(backend)
    state = model.state_dict()
    assert list(state) == list(model.params)
    assert all(type(v) is np.ndarray for v in state.values())
    state["0.W"][...] = 1.0  # a copy: the model is unchanged
    assert not np.all(host(backend, model.params["0.W"]) == 1.0)
    other = gpunn.Sequential(
        [gpunn.Dense(4, 6), gpunn.ReLU(), gpunn.Dense(6, 5), gpunn.Sigmoid(), gpunn.Dense(5, 3)],
        backend=backend,
        dtype="float64",
        seed=9,
    )
    other.load_state_dict(state)
    for key, value in state.items():
        np.testing.assert_array_equal(host(backend, other.params[key]), value)
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({k: v for k, v in state.items() if k != "2.b"})
    bad = dict(state, **{"2.b": np.zeros(4)})
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(bad)


def test_load_state_dict_refuses_a_same_size_array_of_another_shape(backend):
    """A transposed W (6, 4) has the size of W (4, 6) but would scramble every weight. The
    refusal comes before anything is copied, wherever the bad entry sits."""
    model = small_net(backend)
    before = host(backend, model.flat_params)
    state = {k: v + 1.0 for k, v in model.state_dict().items()}  # other values than the model's
    for key, shape in (("0.W", (4, 6)), ("4.W", (5, 3))):
        W = state[key]
        for bad in (W.T.copy(), W.reshape(-1), W.reshape(W.size // 3, 3)[::-1]):
            if bad.shape == W.shape:
                continue
            with pytest.raises(
                ValueError, match=rf"parameter {key} has shape .* {re.escape(str(shape))}"
            ):
                model.load_state_dict(dict(state, **{key: bad}))
            np.testing.assert_array_equal(host(backend, model.flat_params), before)


# ------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------


def test_same_seed_gives_bitwise_identical_weights_after_20_steps():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6))
    y = rng.integers(0, 3, 32)

    def train():
        layers = [
            gpunn.Dense(6, 16),
            gpunn.ReLU(),
            gpunn.Dropout(0.3),
            gpunn.Dense(16, 8),
            gpunn.Tanh(),
            gpunn.Dense(8, 3),
        ]
        model = gpunn.Sequential(layers, backend="numpy", seed=5)
        loss, opt = gpunn.SoftmaxCrossEntropy(), gpunn.Adam(1e-2)
        for step in range(20):
            batch = slice(step % 4 * 8, step % 4 * 8 + 8)
            loss.forward(model.forward(x[batch]), y[batch])
            model.backward(loss.backward())
            opt.step(model)
        return model.flat_params.copy()

    first, second = train(), train()
    assert first.tobytes() == second.tobytes()
    assert not np.array_equal(first, small_net("numpy", "float32").flat_params[: first.size])


# ------------------------------------------------------------------------------------------
# Gradient checks of whole networks (float64, central differences)
# ------------------------------------------------------------------------------------------

NETWORKS = [
    # (widths, activation, loss)
    ([3, 2], None, "ce"),
    ([3, 1], None, "bce"),
    ([4, 5, 3], "tanh", "ce"),
    ([4, 6, 1], "sigmoid", "bce"),
    ([3, 5, 4, 2], "relu", "mse"),
    ([5, 8, 6, 4, 3], "leaky", "ce"),
    ([2, 3, 3, 3, 1], "tanh", "bce"),
    ([6, 4, 4, 4, 2], "sigmoid", "mse"),
    ([3, 7, 1], "relu", "bce"),
    ([4, 9, 2], "leaky", "mse"),
    ([5, 3, 6, 4], "sigmoid", "ce"),
    ([2, 10, 10, 2], "relu", "ce"),
]
EPS = 1e-5  # rounding noise of the difference quotient ~1e-16 * loss / EPS stays << 1e-6
KINK_MARGIN = 1e-3  # |z| at every ReLU input; perturbations move z by at most ~1e-4


def targets(loss, rng, n, width):
    if loss == "ce":
        return gpunn.SoftmaxCrossEntropy(), rng.integers(0, width, n)
    if loss == "bce":
        return gpunn.BinaryCrossEntropy(), rng.integers(0, 2, n).astype(float)
    return gpunn.MeanSquaredError(), rng.standard_normal((n, width))


def kink_distance(model, x):
    """Smallest |z| that enters a ReLU-family layer for input x (inf if there is none)."""
    model.forward(model.backend.asarray(x), training=False)
    gaps = [
        float(np.abs(model.backend.to_numpy(layer.z)).min())
        for layer in model.layers
        if isinstance(layer, gpunn.ReLU | gpunn.LeakyReLU)
    ]
    return min(gaps, default=np.inf)


@pytest.mark.parametrize("widths, activation, loss_name", NETWORKS)
def test_network_gradient_check(backend, widths, activation, loss_name):
    model = mlp(widths, activation, backend=backend, dtype="float64", seed=len(widths))
    for data_seed in range(20):  # the first data that keeps every ReLU input off its kink
        rng = np.random.default_rng(data_seed)
        x = rng.standard_normal((5, widths[0]))
        if kink_distance(model, x) > KINK_MARGIN:
            break
    assert kink_distance(model, x) > KINK_MARGIN
    loss, y = targets(loss_name, rng, 5, widths[-1])
    errors = check_model_gradients(model, loss, x, y, eps=EPS)
    assert set(errors) == set(model.params) | {"input"}
    assert all(error <= 1e-6 for error in errors.values()), errors  # NaN fails too


# ------------------------------------------------------------------------------------------
# A training step with host data, any batch size
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_name", ["ce", "bce", "mse"])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_float32_training_step_with_float64_host_targets(backend, loss_name, n):
    """Targets straight from NumPy (float64 / int64) must work for a float32 model, N = 1 too."""
    out = 1 if loss_name == "bce" else 3
    grads = {}
    for dtype in ("float32", "float64"):
        model = mlp([4, 5, out], "tanh", backend=backend, dtype=dtype, seed=2)
        rng = np.random.default_rng(n)
        x = rng.standard_normal((n, 4))
        loss, y = targets(loss_name, rng, n, out)
        loss.forward(model.forward(backend.asarray(x)), backend.asarray(y))
        model.backward(loss.backward())
        grads[dtype] = {k: host(backend, g) for k, g in model.grads.items()}
        assert all(g.dtype == np.dtype(dtype) for g in grads[dtype].values())
        gpunn.SGD(0.1).step(model)
    for key, ref in grads["float64"].items():
        np.testing.assert_allclose(grads["float32"][key], ref, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# summary()
# --------------------------------------------------------------------------------------------


def test_summary_lists_each_layer_with_its_output_shape_and_parameters():
    model = gpunn.Sequential(
        [gpunn.Dense(64, 128), gpunn.ReLU(), gpunn.Dropout(0.2), gpunn.Dense(128, 10, init="he")],
        backend="numpy",
    )
    lines = model.summary().splitlines()
    assert lines[0].split() == ["#", "layer", "output", "shape", "parameters"]
    assert lines[1].split() == ["input", "64"]
    assert lines[2].split() == ["0", "Dense", "128", "8,320"]  # 64 * 128 + 128
    assert lines[3].split() == ["1", "ReLU", "128", "0"]
    assert lines[4].split() == ["2", "Dropout(p=0.2)", "128", "0"]
    assert lines[5].split() == ["3", "Dense(init=he)", "10", "1,290"]
    assert lines[6].split()[:2] == ["total", f"{model.num_params:,}"]
    assert "float32" in lines[6]
    assert len({len(line.rstrip()) for line in lines[:6]}) <= 2  # aligned columns
    assert "Backend(" not in model.summary() and "None" not in model.summary()


class Flatten(gpunn.Layer):
    """A stand-in for a layer that changes the shape of a sample (as a convolution does)."""

    kind = "Flatten"

    def output_shape(self, in_shape):
        size = 1
        for d in in_shape:
            size *= d
        return (size,)

    def forward(self, x, *, training=True):
        return x.reshape(len(x), -1)


def test_summary_asks_each_layer_for_its_output_shape():
    model = gpunn.Sequential([Flatten(), gpunn.Dense(12, 4)], backend="numpy")
    lines = model.summary(input_shape=(3, 2, 2)).splitlines()
    assert lines[1].split() == ["input", "3", "x", "2", "x", "2"]
    assert lines[2].split() == ["0", "Flatten", "12", "0"]
    assert lines[3].split() == ["1", "Dense", "4", "52"]
    with pytest.raises(ValueError, match="input_shape"):
        gpunn.Sequential([Flatten(), gpunn.ReLU()], backend="numpy").summary()
