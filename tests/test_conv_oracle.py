"""Random small CNNs against PyTorch float64 autograd and torch.optim (the oracle).

Each network is built twice, as gpunn layers and as the matching torch.nn modules, from the same
weights. In float64 the forward pass, the loss, every parameter gradient, the input gradient,
and the weights and BatchNorm running statistics after 10 steps of SGD (momentum, Nesterov,
weight decay) and Adam/AdamW must agree within 1e-9 (relative to each tensor's largest value).
The architectures cover stride > 1, padding, pairs, every activation, max and average pooling
(the max-pool moved before ReLU and fused with its conv, and not), BatchNorm1D/2D and Flatten.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpunn

torch = pytest.importorskip("torch", reason="PyTorch is the oracle (optional)")
nn = torch.nn
torch.set_num_threads(1)  # tiny tensors: a thread pool only waits on a busy machine

TOL = 1e-9

# A network is a list of layer specs: ("conv", out, kernel, stride, padding), ("bn",),
# ("act", name), ("pool", "max" | "avg", kernel, stride), ("flatten",), ("dense", out)
LENET_LIKE = [
    ("conv", 4, 3, 1, 1),
    ("act", "relu"),
    ("pool", "max", 2, None),  # moved before the ReLU and fused with the conv
    ("conv", 5, (2, 3), 1, 0),
    ("bn",),
    ("act", "relu"),
    ("pool", "max", 2, 1),  # after BatchNorm: stays where it is
    ("flatten",),
    ("dense", 6),
    ("bn",),
    ("act", "relu"),
    ("dense", 3),
]
STRIDED = [
    ("conv", 3, 3, 2, 1),
    ("act", "relu"),
    ("pool", "max", 3, 1),  # moved before the ReLU, not fused (stride-2 conv, 3x3 pool)
    ("conv", 4, 1, 2, 0),
    ("act", "relu"),
    ("pool", "max", 2, None),  # moved, not fused: a 2x2 pool, but after a stride-2 conv
    ("conv", 2, 1, 1, 0),
    ("act", "tanh"),
    ("pool", "avg", (1, 2), None),
    ("flatten",),
    ("dense", 3),
]


def random_spec(seed: int, in_shape: tuple[int, int, int]) -> list[tuple]:
    """A random CNN whose every layer fits (shapes tracked with gpunn's own output_shape)."""
    rng = np.random.default_rng(seed)
    spec: list[tuple] = []
    shape = in_shape
    for _ in range(int(rng.integers(1, 3))):
        k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        s, p = int(rng.integers(1, 3)), int(rng.integers(0, 2))
        conv = ("conv", int(rng.integers(1, 5)), k, s, p)
        try:
            shape = gpunn.Conv2D(shape[0], *conv[1:]).output_shape(shape)
        except ValueError:
            continue
        spec.append(conv)
        if rng.random() < 0.5:
            spec.append(("bn",))
        spec.append(("act", str(rng.choice(["relu", "leaky_relu", "tanh", "sigmoid"]))))
        kind, pk = str(rng.choice(["max", "avg"])), int(rng.integers(2, 4))
        stride = None if rng.random() < 0.5 else int(rng.integers(1, 3))
        if shape[1] >= pk and shape[2] >= pk:
            spec.append(("pool", kind, pk, stride))
            shape = gpunn.MaxPool2D(pk, stride).output_shape(shape)
    spec += [("flatten",), ("dense", int(rng.integers(3, 7)))]
    if rng.random() < 0.5:
        spec.append(("bn",))
    spec += [("act", "relu"), ("dense", 3)]
    return spec


def build(spec: list[tuple], in_shape: tuple[int, int, int], seed: int):
    """(gpunn float64 model, torch model) with the same weights, random biases and BN affines."""
    layers, modules = [], []
    shape: tuple[int, ...] = in_shape
    for item in spec:
        kind = item[0]
        if kind == "conv":
            _, out, k, s, p = item
            layers.append(gpunn.Conv2D(shape[0], out, k, stride=s, padding=p))
            modules.append(nn.Conv2d(shape[0], out, k, stride=s, padding=p, dtype=torch.float64))
        elif kind == "bn" and len(shape) == 3:
            layers.append(gpunn.BatchNorm2D(shape[0], momentum=0.2))
            modules.append(nn.BatchNorm2d(shape[0], momentum=0.2, dtype=torch.float64))
        elif kind == "bn":
            layers.append(gpunn.BatchNorm1D(shape[0], momentum=0.2))
            modules.append(nn.BatchNorm1d(shape[0], momentum=0.2, dtype=torch.float64))
        elif kind == "act":
            layers.append(
                {"relu": gpunn.ReLU, "tanh": gpunn.Tanh, "sigmoid": gpunn.Sigmoid}.get(
                    item[1], lambda: gpunn.LeakyReLU(0.1)
                )()
            )
            modules.append(
                {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}.get(
                    item[1], lambda: nn.LeakyReLU(0.1)
                )()
            )
        elif kind == "pool":
            _, how, k, s = item
            layers.append((gpunn.MaxPool2D if how == "max" else gpunn.AvgPool2D)(k, s))
            modules.append((nn.MaxPool2d if how == "max" else nn.AvgPool2d)(k, s))
        elif kind == "flatten":
            layers.append(gpunn.Flatten())
            modules.append(nn.Flatten())
        else:
            layers.append(gpunn.Dense(shape[0], item[1]))
            modules.append(nn.Linear(shape[0], item[1], dtype=torch.float64))
        shape = layers[-1].output_shape(shape)
    model = gpunn.Sequential(
        layers, backend="numpy", dtype="float64", seed=seed, input_shape=in_shape
    )
    rng = np.random.default_rng(seed + 100)
    for key, p in model.params.items():
        if key.endswith((".b", ".beta")):
            p[...] = rng.standard_normal(p.shape) * 0.3
        elif key.endswith(".gamma"):
            p[...] = 1 + rng.standard_normal(p.shape) * 0.3
    net = nn.Sequential(*modules)
    with torch.no_grad():
        for (key, p), t in zip(model.params.items(), torch_params(net, model), strict=True):
            t.copy_(torch.from_numpy(np.ascontiguousarray(to_torch_layout(key, p))))
    return model, net


def torch_params(net, model):
    """Torch parameters in the order of gpunn's params (W/b, gamma/beta per layer)."""
    out = []
    for key in model.params:
        i, name = key.split(".")
        module = net[int(i)]
        out.append(module.weight if name in ("W", "gamma") else module.bias)
    return out


def to_torch_layout(key: str, a: np.ndarray) -> np.ndarray:
    """gpunn's Dense W is (in, out), torch's Linear weight (out, in); the rest match as is."""
    return a.T if key.endswith(".W") and a.ndim == 2 else a


def rel(got, want, floor: float = 1e-300) -> float:
    """max |got - want| / max |want|; ``floor`` bounds the denominator from below (for a
    quantity that is zero in exact arithmetic, such as the gradient of a bias that BatchNorm
    removes, where both sides return rounding noise)."""
    want = np.asarray(want)
    return float(np.abs(np.asarray(got) - want).max() / max(np.abs(want).max(), floor))


def batch(seed: int, n: int, in_shape):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *in_shape)), rng.integers(0, 3, n)


CASES = [
    ("lenet-like", LENET_LIKE, (2, 9, 10)),
    ("strided", STRIDED, (1, 17, 19)),
    *[(f"random-{s}", random_spec(s, (2, 9, 8)), (2, 9, 8)) for s in range(6)],
]


@pytest.mark.parametrize(("name", "spec", "in_shape"), CASES, ids=[c[0] for c in CASES])
def test_forward_and_every_gradient_match_torch(name, spec, in_shape):
    model, net = build(spec, in_shape, seed=1)
    x, y = batch(2, 5, in_shape)
    loss = gpunn.SoftmaxCrossEntropy()
    logits = model.forward(x)  # training mode: BatchNorm uses the batch's statistics
    value = float(loss.forward(logits, y))
    dx = model.backward(loss.backward(), input_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    logits_t = net(xt)
    lt = nn.functional.cross_entropy(logits_t, torch.from_numpy(y))
    lt.backward()
    assert rel(logits, logits_t.detach()) <= TOL
    assert abs(value - float(lt.detach())) <= TOL * abs(float(lt.detach()))
    assert rel(dx, xt.grad) <= TOL
    floor = 1e-6 * max(np.abs(g).max() for g in model.grads.values())
    for (key, g), t in zip(model.grads.items(), torch_params(net, model), strict=True):
        assert rel(to_torch_layout(key, g), t.grad, floor) <= TOL, key


OPTIMIZERS = {
    "sgd-momentum-wd": (
        lambda: gpunn.SGD(0.05, momentum=0.9, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
    ),
    "sgd-nesterov": (
        lambda: gpunn.SGD(0.05, momentum=0.8, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True),
    ),
    "adam": (
        lambda: gpunn.Adam(0.01, weight_decay=0.01),
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01),
    ),
    "adamw": (lambda: gpunn.AdamW(0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize(("name", "spec", "in_shape"), CASES[:4], ids=[c[0] for c in CASES[:4]])
def test_ten_step_trajectories_match_torch_optim(name, spec, in_shape, opt):
    model, net = build(spec, in_shape, seed=3)
    ours, theirs = OPTIMIZERS[opt][0](), OPTIMIZERS[opt][1](net.parameters())
    loss = gpunn.SoftmaxCrossEntropy()
    start = model.flat_params.copy()
    for step in range(10):
        x, y = batch(10 + step, 6, in_shape)
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        ours.step(model)
        theirs.zero_grad()
        nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        theirs.step()
    assert not np.allclose(model.flat_params, start)  # the steps did move the weights
    # A bias right before a BatchNorm has a gradient of exactly 0 in exact arithmetic, so both
    # sides step on rounding noise (~1e-17); Adam divides it by sqrt(v) + eps ~ 1e-8, which
    # turns it into ~1e-10 per step. Those parameters are held to 1e-8, the rest to 1e-9.
    noise_only = {
        f"{i}.b" for i, layer in enumerate(model.layers[:-1])
        if isinstance(model.layers[i + 1], gpunn.BatchNorm1D | gpunn.BatchNorm2D)
    }  # fmt: skip
    for (key, p), t in zip(model.params.items(), torch_params(net, model), strict=True):
        tol = 1e-8 if key in noise_only and opt.startswith("adam") else TOL
        assert rel(to_torch_layout(key, p), t.detach()) <= tol, key
    bn_layers = [i for i, m in enumerate(net) if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    for i in bn_layers:
        assert rel(model.state[f"{i}.running_mean"], net[i].running_mean) <= TOL
        assert rel(model.state[f"{i}.running_var"], net[i].running_var) <= TOL
    if bn_layers:  # and inference with the running statistics agrees too
        x, _ = batch(99, 4, in_shape)
        assert rel(model.predict(x), net.eval()(torch.from_numpy(x)).detach()) <= TOL


def test_max_pool_ties_in_a_network_route_like_torch():
    """Integer data and weights: tied maxima inside the fused conv+pool and a moved pool."""
    model, net = build(LENET_LIKE[:3] + [("flatten",), ("dense", 3)], (1, 8, 8), seed=5)
    rng = np.random.default_rng(6)
    with torch.no_grad():
        for (key, p), t in zip(model.params.items(), torch_params(net, model), strict=True):
            p[...] = rng.integers(-1, 2, size=p.shape)
            t.copy_(torch.from_numpy(np.ascontiguousarray(to_torch_layout(key, p))))
    x = rng.integers(0, 3, size=(4, 1, 8, 8)).astype(float)
    dy = rng.standard_normal((4, 3))
    out = model.forward(x)
    dx = model.backward(dy, input_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    yt = net(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(out, yt.detach().numpy())
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-13, atol=1e-13)
    for (key, g), t in zip(model.grads.items(), torch_params(net, model), strict=True):
        np.testing.assert_allclose(to_torch_layout(key, g), t.grad.numpy(), rtol=1e-13, atol=1e-13)
