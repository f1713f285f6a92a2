"""Tests for gpunn.layer and gpunn.layers: Dense (x @ W + b), Dropout and the Layer base class."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn
from gpunn.math.dense import dense_backward, dense_forward
from gpunn.math.dropout import dropout_backward, dropout_forward, dropout_mask
from gpunn.testing import check_function_gradients, check_layer_gradients

W = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (in=2, out=3)
B = np.array([0.5, -1.0, 2.0])
X = np.array([[1.0, 1.0], [2.0, -1.0], [0.0, 0.5], [-3.0, 0.25]])


def dense_model(backend, dtype="float64"):
    model = gpunn.Sequential([gpunn.Dense(2, 3)], backend=backend, dtype=dtype)
    model.params["0.W"][...] = backend.asarray(W, dtype=dtype)
    model.params["0.b"][...] = backend.asarray(B, dtype=dtype)
    return model


# ------------------------------------------------------------------------------------------
# Dense
# ------------------------------------------------------------------------------------------


def test_dense_parameter_shapes():
    layer = gpunn.Dense(2, 3)
    assert layer.param_shapes() == {"W": (2, 3), "b": (3,)}
    assert layer.output_width(2) == 3
    model = gpunn.Sequential([layer], backend="numpy")
    assert model.params["0.W"].shape == (2, 3) and model.params["0.b"].shape == (3,)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_forward_is_x_at_w_plus_b(backend, dtype):
    model = dense_model(backend, dtype)
    z = backend.to_numpy(model.forward(backend.asarray(X, dtype=dtype)))
    assert z.dtype == np.dtype(dtype) and z.shape == (4, 3)
    expected = np.array([[5.5, 6.0, 11.0], [-1.5, -2.0, 2.0], [2.5, 1.5, 5.0], [-1.5, -5.75, -5.5]])
    np.testing.assert_allclose(expected, X @ W + B)  # the table above is right
    np.testing.assert_allclose(z, expected, rtol=1e-6 if dtype == "float32" else 1e-15)


def test_dense_backward_known_values(backend):
    model = dense_model(backend)
    model.forward(backend.asarray(X))
    dz = np.arange(12.0).reshape(4, 3) - 5
    dx = backend.to_numpy(model.backward(backend.asarray(dz), input_grad=True))
    np.testing.assert_allclose(backend.to_numpy(model.grads["0.W"]), X.T @ dz, rtol=1e-15)
    np.testing.assert_allclose(backend.to_numpy(model.grads["0.b"]), dz.sum(axis=0), rtol=1e-15)
    np.testing.assert_allclose(dx, dz @ W.T, rtol=1e-15)


def test_dense_functions_on_raw_arrays():
    z = dense_forward(X, W, B, xp=np)
    np.testing.assert_array_equal(z, X @ W + B)
    dz = np.ones((4, 3))
    dW, db = np.empty((2, 3)), np.empty(3)
    dx = dense_backward(dz, X, W, xp=np, dW=dW, db=db)
    np.testing.assert_allclose(dW, X.T @ dz)
    np.testing.assert_allclose(db, [4.0, 4.0, 4.0])
    np.testing.assert_allclose(dx, dz @ W.T)
    assert dense_backward(dz, X, W, xp=np, dW=dW, db=db, need_dx=False) is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_follows_the_batch_size(backend, dtype):
    """Forward and backward stay right when the batch size changes (one sample included)."""
    model = dense_model(backend, dtype)
    rtol = 1e-5 if dtype == "float32" else 1e-13
    for n in (4, 1, 7, 1, 4):
        rng = np.random.default_rng(n)
        x, dz = rng.standard_normal((n, 2)), rng.standard_normal((n, 3))
        z = backend.to_numpy(model.forward(backend.asarray(x, dtype=dtype)))
        np.testing.assert_allclose(z, x @ W + B, rtol=rtol, atol=rtol)
        dx = model.backward(backend.asarray(dz, dtype=dtype), input_grad=True)
        grads = {k: backend.to_numpy(v) for k, v in model.grads.items()}
        assert grads["0.W"].dtype == np.dtype(dtype) and grads["0.b"].dtype == np.dtype(dtype)
        np.testing.assert_allclose(grads["0.W"], x.T @ dz, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(grads["0.b"], dz.sum(axis=0), rtol=rtol, atol=rtol)
        assert dx is not None
        np.testing.assert_allclose(backend.to_numpy(dx), dz @ W.T, rtol=rtol, atol=rtol)


@pytest.mark.parametrize(
    "after",
    [
        lambda: [gpunn.Dropout(0.5)],
        lambda: [gpunn.Dropout(0.0), gpunn.ReLU()],
        lambda: [gpunn.Dense(3, 2)],
        lambda: [],
    ],
    ids=["dropout", "dropout-relu", "dense", "last"],
)
@pytest.mark.parametrize("training", [False, True])
def test_dense_adds_its_own_bias_unless_an_activation_follows_it(backend, after, training):
    """Only an activation right after a Dense layer takes over its bias (adding it in its own
    pass); before a Dropout, another Dense layer or at the end the layer adds b itself."""
    layers = [gpunn.Dense(2, 3), *after()]
    model = gpunn.Sequential(layers, backend=backend, dtype="float64")
    model.params["0.W"][...] = backend.asarray(W)
    model.params["0.b"][...] = backend.asarray(B)
    out = backend.to_numpy(model.layers[0].forward(backend.asarray(X), training=training))
    np.testing.assert_allclose(out, X @ W + B, rtol=1e-15)
    assert not model.layers[0].defer_bias
    if len(layers) == 1 or not training:  # inference through Dropout is the identity
        y = backend.to_numpy(model.forward(backend.asarray(X), training=False))
        h = X @ W + B
        if len(layers) > 1 and isinstance(layers[1], gpunn.Dense):
            h = h @ backend.to_numpy(model.params["1.W"]) + backend.to_numpy(model.params["1.b"])
        if isinstance(layers[-1], gpunn.ReLU):
            h = np.maximum(h, 0)
        np.testing.assert_allclose(y, h, rtol=1e-15)


@pytest.mark.parametrize(
    "args",
    [(0, 3), (3, 0), (-1, 2), (2.5, 3), (True, 3), ("3", 2), (2, None)],
)
def test_dense_rejects_bad_sizes(args):
    with pytest.raises(ValueError, match="Dense"):
        gpunn.Dense(*args)


def test_dense_rejects_unknown_init():
    with pytest.raises(ValueError, match="init"):
        gpunn.Dense(2, 3, init="xavier")


def test_dense_config_rebuilds_the_layer():
    layer = gpunn.Dense(4, 5, init="he")
    assert layer.config() == {"in_features": 4, "out_features": 5, "init": "he"}
    clone = gpunn.Dense(**layer.config())
    assert clone.config() == layer.config()
    assert repr(layer) == "Dense(in_features=4, out_features=5, init='he')"


def test_dense_init_params_he_and_glorot():
    n_in, n_out = 400, 300
    he = gpunn.Dense(n_in, n_out, init="he").init_params(np.random.default_rng(0), "glorot")
    assert set(he) == {"W"} and he["W"].shape == (n_in, n_out)  # b starts at zero
    assert abs(he["W"].std() / np.sqrt(2 / n_in) - 1) < 0.02
    assert abs(he["W"].mean()) < 0.01 * np.sqrt(2 / n_in) * 10
    limit = np.sqrt(6 / (n_in + n_out))
    glorot = gpunn.Dense(n_in, n_out, init="glorot").init_params(np.random.default_rng(0), "he")
    assert np.abs(glorot["W"]).max() <= limit
    assert np.abs(glorot["W"]).max() > 0.99 * limit  # uniform over the whole range
    assert abs(glorot["W"].std() / (limit / np.sqrt(3)) - 1) < 0.02
    # init=None takes what the model passes in
    free = gpunn.Dense(n_in, n_out)
    np.testing.assert_array_equal(free.init_params(np.random.default_rng(0), "he")["W"], he["W"])
    np.testing.assert_array_equal(
        free.init_params(np.random.default_rng(0), "glorot")["W"], glorot["W"]
    )


@pytest.mark.parametrize("init", [None, "he", "glorot"])
@pytest.mark.parametrize("shape", [(5, 3), (1, 4), (6, 1)])
@pytest.mark.parametrize("n", [1, 4])
def test_dense_gradient_check(backend, init, shape, n):
    x = np.random.default_rng(7).standard_normal((n, shape[0]))
    errors = check_layer_gradients(gpunn.Dense(*shape, init=init), x, backend=backend, seed=3)
    assert set(errors) == {"0.W", "0.b", "input"}
    assert all(error <= 1e-6 for error in errors.values()), errors  # NaN fails too


def test_dense_function_gradient_check():
    x = np.random.default_rng(1).standard_normal((3, 2))
    dW, db = np.empty((2, 3)), np.empty(3)
    error = check_function_gradients(
        lambda v: dense_forward(v, W, B, xp=np),
        lambda dz: dense_backward(dz, x, W, xp=np, dW=dW, db=db),
        x,
    )
    assert error <= 1e-6


# ------------------------------------------------------------------------------------------
# Dropout
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, "x"])
def test_dropout_rejects_bad_p(p):
    with pytest.raises((ValueError, TypeError)):
        gpunn.Dropout(p)


def test_dropout_config():
    assert gpunn.Dropout().p == 0.5
    assert gpunn.Dropout(0.25).config() == {"p": 0.25}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.75])
def test_dropout_training_zeroes_about_p_and_scales_the_rest(backend, dtype, p):
    model = gpunn.Sequential([gpunn.Dropout(p)], backend=backend, dtype=dtype, seed=4)
    x = np.random.default_rng(0).uniform(1, 2, size=(200, 50))  # never 0 itself
    y = backend.to_numpy(model.forward(backend.asarray(x, dtype=dtype), training=True))
    assert y.dtype == np.dtype(dtype)
    dropped = y == 0
    assert abs(dropped.mean() - p) < 0.03
    rtol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(y[~dropped], x[~dropped] / (1 - p), rtol=rtol)
    # the backward uses the very same mask
    dx = backend.to_numpy(
        model.backward(backend.asarray(np.ones_like(x), dtype=dtype), input_grad=True)
    )
    np.testing.assert_array_equal(dx == 0, dropped)
    np.testing.assert_allclose(dx[~dropped], 1 / (1 - p), rtol=rtol)


def test_dropout_is_identity_at_inference_and_for_p_zero(backend):
    x = np.random.default_rng(0).standard_normal((20, 10))
    model = gpunn.Sequential([gpunn.Dropout(0.5)], backend=backend, dtype="float64")
    np.testing.assert_array_equal(backend.to_numpy(model.forward(x, training=False)), x)
    dense = gpunn.Sequential(
        [gpunn.Dense(10, 10), gpunn.Dropout(0.5)], backend=backend, dtype="float64"
    )
    expected = backend.to_numpy(dense.forward(x, training=False)).copy()
    np.testing.assert_array_equal(backend.to_numpy(dense.predict(x)), expected)
    dy = np.random.default_rng(1).standard_normal((20, 10))
    np.testing.assert_array_equal(
        backend.to_numpy(model.backward(backend.asarray(dy), input_grad=True)), dy
    )
    zero = gpunn.Sequential([gpunn.Dropout(0.0)], backend=backend, dtype="float64")
    np.testing.assert_array_equal(backend.to_numpy(zero.forward(x, training=True)), x)


def test_dropout_masks_repeat_with_the_seed_and_change_between_steps(backend):
    x = np.ones((30, 20))

    def masks(seed):
        model = gpunn.Sequential([gpunn.Dropout(0.5)], backend=backend, seed=seed)
        return [backend.to_numpy(model.forward(x)).copy() for _ in range(2)]

    a, b, c = masks(1), masks(1), masks(2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], c[0])


def test_each_dropout_layer_of_a_model_draws_its_own_masks(backend):
    """Two Dropout layers of one model (and the same layer of models with other seeds) must
    not drop the same units: each layer's generator is seeded from the model seed and its
    position, so masks repeat with the seed and differ between layers."""
    x = np.ones((40, 30))
    model = gpunn.Sequential(
        [gpunn.Dropout(0.5), gpunn.Tanh(), gpunn.Dropout(0.5)], backend=backend, seed=3
    )
    model.forward(backend.asarray(x))
    first, second = (backend.to_numpy(model.layers[i].mask) for i in (0, 2))
    assert not np.array_equal(first != 0, second != 0)
    agree = np.mean((first != 0) == (second != 0))
    assert 0.35 < agree < 0.65  # independent masks agree on about half the units
    again = gpunn.Sequential(
        [gpunn.Dropout(0.5), gpunn.Tanh(), gpunn.Dropout(0.5)], backend=backend, seed=3
    )
    again.forward(backend.asarray(x))
    np.testing.assert_array_equal(backend.to_numpy(again.layers[2].mask), second)


def test_dropout_mask_keeps_exactly_the_draws_below_1_minus_p():
    """mask = 1[u < 1 - p] / (1 - p): a draw equal to 1 - p is dropped, as documented."""
    u = np.array([0.0, 0.2499, 0.25, 0.2501, 0.75, 0.999])
    np.testing.assert_array_equal(dropout_mask(u, 0.75, xp=np), [4, 4, 0, 0, 0, 0])
    np.testing.assert_array_equal(dropout_mask(u, 0.25, xp=np), [4 / 3] * 4 + [0, 0])


def test_dropout_function_gradient_check_with_fixed_mask():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 5))
    mask = (rng.random((6, 5)) < 0.6) / 0.6
    np.testing.assert_array_equal(dropout_forward(x, mask, xp=np), x * mask)
    error = check_function_gradients(
        lambda v: dropout_forward(v, mask, xp=np),
        lambda dy: dropout_backward(dy, mask, xp=np),
        x,
    )
    assert error <= 1e-6


def test_dropout_in_a_network_backpropagates_through_its_mask(backend):
    """Dense -> Dropout -> Dense: gradients equal those of the same net with the mask fixed."""
    layers = [gpunn.Dense(4, 6), gpunn.Tanh(), gpunn.Dropout(0.4), gpunn.Dense(6, 2)]
    model = gpunn.Sequential(layers, backend=backend, dtype="float64", seed=2)
    x = np.random.default_rng(0).standard_normal((5, 4))
    out = backend.to_numpy(model.forward(backend.asarray(x), training=True)).copy()
    mask = backend.to_numpy(layers[2].mask).copy()
    dy = np.random.default_rng(1).standard_normal((5, 2))
    dx = backend.to_numpy(model.backward(backend.asarray(dy), input_grad=True)).copy()
    grads = {k: backend.to_numpy(v).copy() for k, v in model.grads.items()}
    p = {k: backend.to_numpy(v) for k, v in model.params.items()}
    h = np.tanh(x @ p["0.W"] + p["0.b"])
    np.testing.assert_allclose(out, (h * mask) @ p["3.W"] + p["3.b"], rtol=1e-12)
    dh = (dy @ p["3.W"].T) * mask
    dz = dh * (1 - h**2)
    np.testing.assert_allclose(grads["3.W"], (h * mask).T @ dy, rtol=1e-12)
    np.testing.assert_allclose(grads["3.b"], dy.sum(0), rtol=1e-12)
    np.testing.assert_allclose(grads["0.W"], x.T @ dz, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["0.b"], dz.sum(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, dz @ p["0.W"].T, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------
# Layer base class
# ------------------------------------------------------------------------------------------


def test_layer_base_defaults():
    layer = gpunn.Layer()
    assert layer.param_shapes() == {} and layer.config() == {}
    assert layer.init_params(np.random.default_rng(0), "he") == {}
    assert layer.output_width(7) == 7
    assert repr(layer) == "Layer()"
    with pytest.raises(NotImplementedError):
        layer.forward(np.zeros((1, 1)))
    with pytest.raises(NotImplementedError):
        layer.backward(np.zeros((1, 1)))


def test_layer_workspace_is_reused_while_the_shape_stays(backend):
    layer = gpunn.Layer()
    layer.bind(backend.xp, backend.xp.dtype("float32"), {}, {})
    a = layer.workspace("a", (3, 4))
    assert a.shape == (3, 4) and a.dtype == np.float32
    assert layer.workspace("a", (3, 4)) is a
    assert layer.workspace("b", (3, 4)) is not a
    c = layer.workspace("a", (5, 4))
    assert c.shape == (5, 4) and c is not a
