"""Tests for gpunn.optim: SGD, Adam and AdamW follow torch.optim step by step; state and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpunn
from gpunn.math.optim import adam_update, sgd_update

CONFIGS = {
    "sgd": (gpunn.SGD, {"lr": 0.1}),
    "sgd-momentum": (gpunn.SGD, {"lr": 0.1, "momentum": 0.9}),
    "sgd-nesterov": (gpunn.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    "sgd-wd": (gpunn.SGD, {"lr": 0.1, "weight_decay": 0.05}),
    "sgd-momentum-wd": (gpunn.SGD, {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.1}),
    "sgd-nesterov-wd": (
        gpunn.SGD,
        {"lr": 0.05, "momentum": 0.7, "nesterov": True, "weight_decay": 0.2},
    ),
    "adam": (gpunn.Adam, {"lr": 0.01}),
    "adam-betas-eps": (gpunn.Adam, {"lr": 0.02, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6}),
    "adam-wd": (gpunn.Adam, {"lr": 0.01, "weight_decay": 0.1}),
    "adamw": (gpunn.AdamW, {"lr": 0.01}),  # torch's AdamW default weight_decay is 1e-2 too
    "adamw-wd": (gpunn.AdamW, {"lr": 0.01, "beta1": 0.85, "weight_decay": 0.3}),
}


def torch_optimizer(torch, cls, kwargs, params):
    kwargs = dict(kwargs)
    beta1, beta2 = kwargs.pop("beta1", 0.9), kwargs.pop("beta2", 0.999)
    if cls is gpunn.SGD:
        return torch.optim.SGD(params, **kwargs)
    torch_cls = torch.optim.AdamW if cls is gpunn.AdamW else torch.optim.Adam
    return torch_cls(params, betas=(beta1, beta2), **kwargs)


def make_model(backend, dtype="float64", seed=0):
    layers = [gpunn.Dense(5, 7), gpunn.Tanh(), gpunn.Dense(7, 3)]
    return gpunn.Sequential(layers, backend=backend, dtype=dtype, seed=seed)


def data(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5)), rng.integers(0, 3, n)


def train_step(model, loss, x, y):
    loss.forward(model.forward(model.backend.asarray(x)), model.backend.asarray(y))
    model.backward(loss.backward())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ten_steps_match_torch_optim(backend, name):
    torch = pytest.importorskip("torch")
    cls, kwargs = CONFIGS[name]
    model = make_model(backend)
    p = {k: backend.to_numpy(v).copy() for k, v in model.params.items()}
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    net = net.double()
    with torch.no_grad():
        for i, key in ((0, "0"), (2, "2")):
            net[i].weight.copy_(torch.from_numpy(p[f"{key}.W"].T))  # torch stores W.T
            net[i].bias.copy_(torch.from_numpy(p[f"{key}.b"]))
    ours, theirs = cls(**kwargs), torch_optimizer(torch, cls, kwargs, net.parameters())
    loss = gpunn.SoftmaxCrossEntropy()
    for step in range(10):
        x, y = data(seed=step)
        train_step(model, loss, x, y)
        ours.step(model)
        theirs.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        theirs.step()
        for i, key in ((0, "0"), (2, "2")):
            for mine, ref in (
                (model.params[f"{key}.W"], net[i].weight.detach().numpy().T),
                (model.params[f"{key}.b"], net[i].bias.detach().numpy()),
            ):
                got = backend.to_numpy(mine)
                assert np.abs(got - ref).max() <= 1e-10 * np.abs(ref).max(), (name, step, key)
    assert ours.step_count == 10


def test_default_hyperparameters_match_torch():
    torch = pytest.importorskip("torch")
    params = [torch.nn.Parameter(torch.zeros(1))]
    for cls, torch_cls in ((gpunn.Adam, torch.optim.Adam), (gpunn.AdamW, torch.optim.AdamW)):
        ours, ref = cls().hyperparams(), torch_cls(params).defaults
        assert (ours["lr"], (ours["beta1"], ours["beta2"])) == (ref["lr"], ref["betas"])
        assert (ours["eps"], ours["weight_decay"]) == (ref["eps"], ref["weight_decay"])
    sgd, ref = gpunn.SGD(0.1).hyperparams(), torch.optim.SGD(params, lr=0.1).defaults
    for key in ("lr", "momentum", "nesterov", "weight_decay"):
        assert sgd[key] == ref[key]


def test_default_hyperparameters():
    assert gpunn.AdamW().weight_decay == 1e-2
    adam = gpunn.Adam()
    assert (adam.lr, adam.beta1, adam.beta2, adam.eps, adam.weight_decay) == (
        1e-3,
        0.9,
        0.999,
        1e-8,
        0.0,
    )
    sgd = gpunn.SGD(0.1)
    assert (sgd.momentum, sgd.nesterov, sgd.weight_decay) == (0.0, False, 0.0)


# ------------------------------------------------------------------------------------------
# Update rules by hand (also run where torch is missing)
# ------------------------------------------------------------------------------------------

P0 = np.array([1.0, -2.0, 0.5, 3.0])
G = np.array([0.5, 0.25, -1.0, 0.0])


def run_flat(backend, opt, steps, grad=G, p0=P0):
    """Steps of ``opt`` on a one-layer model whose first four parameters are p0, gradients g."""
    model = gpunn.Sequential([gpunn.Dense(2, 2)], backend=backend, dtype="float64")
    model.flat_params[...] = 0
    model.params["0.W"][...] = backend.asarray(p0.reshape(2, 2))
    for _ in range(steps):
        model.flat_grads[...] = 0
        model.grads["0.W"][...] = backend.asarray(grad.reshape(2, 2))
        opt.step(model)
    return backend.to_numpy(model.params["0.W"]).reshape(-1)


def test_sgd_plain_and_weight_decay_by_hand(backend):
    np.testing.assert_allclose(run_flat(backend, gpunn.SGD(0.1), 2), P0 - 0.2 * G, rtol=1e-15)
    p1 = P0 - 0.1 * (G + 0.5 * P0)
    p2 = p1 - 0.1 * (G + 0.5 * p1)
    got = run_flat(backend, gpunn.SGD(0.1, weight_decay=0.5), 2)
    np.testing.assert_allclose(got, p2, rtol=1e-15)


def test_sgd_momentum_and_nesterov_by_hand(backend):
    lr, m = 0.1, 0.9
    # momentum: buf1 = g, buf2 = m g + g
    expected = P0 - lr * G - lr * (m * G + G)
    got = run_flat(backend, gpunn.SGD(lr, momentum=m), 2)
    np.testing.assert_allclose(got, expected, rtol=1e-15)
    # nesterov: d = g + m buf
    expected = P0 - lr * (G + m * G) - lr * (G + m * (m * G + G))
    got = run_flat(backend, gpunn.SGD(lr, momentum=m, nesterov=True), 2)
    np.testing.assert_allclose(got, expected, rtol=1e-15)


def test_adam_first_step_is_lr_times_sign(backend):
    got = run_flat(backend, gpunn.Adam(lr=0.01, eps=1e-12), 1)  # sign(0) = 0: no 0/0
    np.testing.assert_allclose(got, P0 - 0.01 * np.sign(G), rtol=1e-11)


def test_adam_l2_decay_versus_adamw_decoupled_decay(backend):
    zero = np.zeros(4)
    # Adam: the decay enters the gradient, so the first step is lr * sign(p)
    got = run_flat(backend, gpunn.Adam(lr=0.01, eps=1e-12, weight_decay=0.5), 1, grad=zero)
    np.testing.assert_allclose(got, P0 - 0.01 * np.sign(P0), rtol=1e-11)
    # AdamW: p *= 1 - lr * wd, and a zero gradient moves nothing else
    got = run_flat(backend, gpunn.AdamW(lr=0.01, weight_decay=0.5), 1, grad=zero)
    np.testing.assert_allclose(got, P0 * (1 - 0.01 * 0.5), rtol=1e-15)


def test_adam_two_steps_by_hand(backend):
    lr, b1, b2, eps = 0.1, 0.8, 0.9, 1e-3
    m1, v1 = (1 - b1) * G, (1 - b2) * G**2
    p1 = P0 - lr / (1 - b1) * m1 / (np.sqrt(v1) / math.sqrt(1 - b2) + eps)
    m2, v2 = b1 * m1 + (1 - b1) * G, b2 * v1 + (1 - b2) * G**2
    p2 = p1 - lr / (1 - b1**2) * m2 / (np.sqrt(v2) / math.sqrt(1 - b2**2) + eps)
    got = run_flat(backend, gpunn.Adam(lr=lr, beta1=b1, beta2=b2, eps=eps), 2)
    np.testing.assert_allclose(got, p2, rtol=1e-14)


def test_update_functions_on_raw_arrays():
    p, buf = P0.copy(), np.zeros(4)
    sgd_update(p, G, buf, lr=0.1, momentum=0.5, xp=np)
    np.testing.assert_allclose(p, P0 - 0.1 * G)
    np.testing.assert_allclose(buf, G)
    p, m, v = P0.copy(), np.zeros(4), np.zeros(4)
    adam_update(p, G, m, v, step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-12, xp=np)
    np.testing.assert_allclose(p, P0 - 0.1 * np.sign(G), rtol=1e-11)


def test_update_functions_default_to_plain_sgd_and_l2_adam():
    """The update rules' defaults are torch's: SGD without momentum (no buffer needed, as the
    tutorial network calls it) and Adam's coupled L2 decay unless ``decoupled=True``."""
    p = P0.copy()
    sgd_update(p, G, None, lr=0.1, xp=np)
    np.testing.assert_array_equal(p, P0 - 0.1 * G)
    zero = np.zeros(4)
    p, m, v = P0.copy(), np.zeros(4), np.zeros(4)
    kwargs = {"step": 1, "lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-12, "xp": np}
    adam_update(p, zero, m, v, weight_decay=0.5, **kwargs)
    np.testing.assert_allclose(p, P0 - 0.01 * np.sign(P0), rtol=1e-11)  # decay in the gradient


def test_step_updates_in_place(backend):
    model = make_model(backend)
    flat, view = model.flat_params, model.params["0.W"]
    before = backend.to_numpy(view).copy()
    train_step(model, gpunn.SoftmaxCrossEntropy(), *data())
    for opt in (gpunn.SGD(0.1, momentum=0.9), gpunn.Adam(), gpunn.AdamW()):
        opt.step(model)
    assert model.flat_params is flat and model.params["0.W"] is view
    assert not np.array_equal(backend.to_numpy(view), before)


def test_learning_rate_can_change_between_steps(backend):
    opt = gpunn.SGD(0.1)
    opt.lr = 0.5  # what a schedule does
    np.testing.assert_allclose(run_flat(backend, opt, 1), P0 - 0.5 * G, rtol=1e-15)


# ------------------------------------------------------------------------------------------
# Hyperparameter checks
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (gpunn.SGD, {"lr": -0.1}),
        (gpunn.SGD, {"lr": float("nan")}),
        (gpunn.SGD, {"lr": float("inf")}),
        (gpunn.SGD, {"lr": "fast"}),
        (gpunn.SGD, {"lr": None}),
        (gpunn.SGD, {"lr": 0.1, "momentum": -0.5}),
        (gpunn.SGD, {"lr": 0.1, "weight_decay": -1e-4}),
        (gpunn.SGD, {"lr": 0.1, "nesterov": True}),
        (gpunn.SGD, {"lr": 0.1, "momentum": 0.0, "nesterov": True}),
        (gpunn.Adam, {"lr": -1e-3}),
        (gpunn.Adam, {"beta1": 1.0}),
        (gpunn.Adam, {"beta1": -0.1}),
        (gpunn.Adam, {"beta2": 1.0}),
        (gpunn.Adam, {"beta2": 1.5}),
        (gpunn.Adam, {"eps": -1e-8}),
        (gpunn.Adam, {"weight_decay": -0.1}),
        (gpunn.AdamW, {"beta1": 1.0}),
        (gpunn.AdamW, {"weight_decay": -1e-2}),
        (gpunn.AdamW, {"lr": float("nan")}),
    ],
)
def test_bad_hyperparameters_raise_value_error(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


# ------------------------------------------------------------------------------------------
# state_dict / load_state_dict
# ------------------------------------------------------------------------------------------

STATEFUL = {
    "sgd": (gpunn.SGD, {"lr": 0.1}),
    "sgd-momentum": (gpunn.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    "adam": (gpunn.Adam, {"lr": 0.01, "weight_decay": 0.01}),
    "adamw": (gpunn.AdamW, {"lr": 0.01}),
}


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_resuming_from_state_dict_matches_an_uninterrupted_run(backend, name):
    cls, kwargs = STATEFUL[name]
    loss = gpunn.SoftmaxCrossEntropy()
    straight, opt = make_model(backend), cls(**kwargs)
    for step in range(10):
        train_step(straight, loss, *data(step))
        opt.step(straight)
    resumed, first = make_model(backend), cls(**kwargs)
    for step in range(5):
        train_step(resumed, loss, *data(step))
        first.step(resumed)
    state = first.state_dict()
    assert state["kind"] == cls.kind and state["step"] == 5
    assert state["hyperparams"] == first.hyperparams()
    assert all(type(v) is np.ndarray for v in state["state"].values())
    second = cls(**{**kwargs, "lr": 0.5})  # the learning rate comes back from the state too
    second.load_state_dict(state)
    assert second.hyperparams() == first.hyperparams() and second.step_count == 5
    for step in range(5, 10):
        train_step(resumed, loss, *data(step))
        second.step(resumed)
    np.testing.assert_array_equal(
        backend.to_numpy(resumed.flat_params), backend.to_numpy(straight.flat_params)
    )


def test_state_dict_is_a_copy(backend):
    model = make_model(backend)
    train_step(model, gpunn.SoftmaxCrossEntropy(), *data())
    opt = gpunn.Adam(0.01)
    opt.step(model)
    state = opt.state_dict()
    state["state"]["exp_avg"][...] = 99.0
    assert not np.any(backend.to_numpy(opt.state["exp_avg"]) == 99.0)


def test_load_state_dict_does_not_share_arrays_with_the_dict(backend):
    """Stepping after a load must not write into the dict that was loaded (nor a 2nd loader)."""
    model = make_model(backend)
    train_step(model, gpunn.SoftmaxCrossEntropy(), *data())
    first = gpunn.SGD(0.1, momentum=0.9)
    first.step(model)
    state = first.state_dict()
    saved = state["state"]["momentum_buffer"].copy()
    a, b = gpunn.SGD(0.1, momentum=0.9), gpunn.SGD(0.1, momentum=0.9)
    a.load_state_dict(state)
    b.load_state_dict(state)
    a.step(model)
    np.testing.assert_array_equal(state["state"]["momentum_buffer"], saved)
    b.step(model)
    np.testing.assert_array_equal(
        backend.to_numpy(a.state["momentum_buffer"]), backend.to_numpy(b.state["momentum_buffer"])
    )


def test_load_state_dict_rejects_foreign_state():
    model = make_model("numpy")
    adam = gpunn.Adam()
    adam.step(model)
    state = adam.state_dict()
    with pytest.raises(ValueError, match="Adam"):
        gpunn.AdamW().load_state_dict(state)
    with pytest.raises(ValueError, match="SGD"):
        gpunn.SGD(0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="unknown"):
        gpunn.Adam().load_state_dict({**state, "state": {**state["state"], "other": np.zeros(1)}})
    with pytest.raises(ValueError, match="unknown"):
        gpunn.Adam().load_state_dict({**state, "hyperparams": {"momentum": 0.9}})


def test_one_optimizer_per_model():
    opt = gpunn.Adam()
    opt.step(make_model("numpy"))
    big = gpunn.Sequential([gpunn.Dense(50, 50)], backend="numpy", dtype="float64")
    with pytest.raises(ValueError, match="one optimizer per model"):
        opt.step(big)


def test_repr_lists_hyperparameters():
    assert repr(gpunn.SGD(0.1)) == ("SGD(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)")
    assert repr(gpunn.AdamW()).startswith("AdamW(lr=0.001, beta1=0.9, beta2=0.999")
