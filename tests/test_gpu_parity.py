"""GPU parity: each fused kernel against its reference, and whole training runs CuPy vs NumPy.

Every test here is marked ``gpu`` and skipped, with the probe's reason, where CuPy has no usable
GPU. Each comparison runs the fused kernel on the GPU and the reference on NumPy from the same
host inputs. The worst errors are attached to the test as ``parity:<quantity>`` properties, which
``scripts/gpu_check.py`` gathers into its report.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import gpunn
import gpunn.math.conv
import gpunn.math.pool
from gpunn import backend as backend_module
from gpunn import kernels
from gpunn.kernels.activation import ACTIVATIONS

pytestmark = pytest.mark.gpu

DTYPES = ("float32", "float64")
ODD_SIZES = (0, 1, 3, 1023, 4097)
#: fused (GPU) vs reference (NumPy): a few ulps of reordering, FMA contraction and libm differences
TOL = {"float32": (2e-5, 1e-6), "float64": (1e-11, 1e-13)}

Record = Callable[[str, float], None]


@pytest.fixture(scope="module")
def gpu() -> gpunn.Backend:
    """The CuPy backend on device 0, or a skip naming why it is unavailable."""
    usable, reason, _ = backend_module._probe_cupy(0)
    if not usable:
        pytest.skip(f"CuPy backend unavailable: {reason}")
    return gpunn.get_backend("cupy")


@pytest.fixture(autouse=True)
def _fresh_dispatch():
    """Tests that set GPUNN_FUSED reset the dispatch; forget their decisions afterwards too."""
    yield
    kernels.reset()


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Record:
    """``record(name, error)`` attaches ``parity:<name>`` to this test's report."""

    def append(name: str, value: float) -> None:
        request.node.user_properties.append((f"parity:{name}", float(value)))

    return append


def _host(backend: gpunn.Backend, a: Any) -> np.ndarray:
    return np.asarray(backend.to_numpy(a))


def _check(backend: gpunn.Backend, got: Any, want: Any, dtype: str, record: Record, name: str):
    """got (device) == want (host) within TOL[dtype]; records the worst relative error."""
    got, want = _host(backend, got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.dtype, got.shape, want.shape)
    if want.size:
        scale = max(float(np.abs(want).max()), 1e-30)
        record(f"{name}_{dtype}", float(np.abs(got.astype(np.float64) - want).max()) / scale)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# ==========================================================================================
# Each fused kernel against its reference
# ==========================================================================================


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("keep_z", [False, True])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_fused_bias_activation_forward(
    gpu: gpunn.Backend, record: Record, act: str, keep_z: bool, dtype: str
) -> None:
    xp, fused = gpu.xp, kernels.fused("bias_activation_forward", gpu.xp)
    rng = np.random.default_rng(1)
    for n in ODD_SIZES:
        z = (rng.standard_normal((n, 17)) * 4).astype(dtype)  # (N, out) = x @ W
        b = rng.standard_normal(17).astype(dtype)  # (out,)
        z[:, :2] = -b[:2]  # z + b == 0 exactly: the kink
        want_z = z + b
        want = kernels.reference("bias_activation_forward")(z, b, act, slope=0.05, xp=np)
        zd, out = xp.array(z), xp.empty((n, 17), dtype=dtype)  # a copy: it may be written
        got = fused(zd, xp.asarray(b), act, slope=0.05, xp=xp, out=out, keep_z=keep_z)
        assert got is out
        _check(gpu, got, want, dtype, record, f"bias_{act}")
        if keep_z:
            _check(gpu, zd, want_z, dtype, record, "bias_add")
        _check(
            gpu,
            fused(xp.asarray(z), xp.asarray(b), act, slope=0.05, xp=xp),
            want,
            dtype,
            record,
            f"bias_{act}",
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_fused_activation_backward(gpu: gpunn.Backend, record: Record, act: str, dtype: str):
    xp, fused = gpu.xp, kernels.fused("activation_backward", gpu.xp)
    rng = np.random.default_rng(2)
    for n in ODD_SIZES:
        z = (rng.standard_normal((n, 33)) * 4).astype(dtype)
        z[:, 0] = 0  # the kink
        a = kernels.reference("bias_activation_forward")(
            z, np.zeros(33, dtype), act, slope=0.05, xp=np
        )
        s = a if act in ("sigmoid", "tanh") else z
        da = rng.standard_normal((n, 33)).astype(dtype)
        want = kernels.reference("activation_backward")(da, s, act, slope=0.05, xp=np)
        got = fused(xp.asarray(da), xp.asarray(s), act, slope=0.05, xp=xp)
        _check(gpu, got, want, dtype, record, f"{act}_backward")
        if act in ("relu", "leaky_relu"):  # from the output a: the same, exactly
            got_a = fused(xp.asarray(da), xp.asarray(a), act, slope=0.05, xp=xp)
            np.testing.assert_array_equal(_host(gpu, got_a), _host(gpu, got))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [1, 10, 1000, 3000])
def test_fused_softmax_cross_entropy(gpu: gpunn.Backend, record: Record, c: int, dtype: str):
    xp, fused = gpu.xp, kernels.fused("softmax_cross_entropy", gpu.xp)
    rng = np.random.default_rng(3)
    for n in ODD_SIZES:
        z = (rng.standard_normal((n, c)) * 5).astype(dtype)  # (N, C)
        y = rng.integers(0, c, size=n)  # (N,)
        if n >= 2:
            y[0], y[1] = 0, c - 1  # both ends of the class range
        want_loss, want_dz = kernels.reference("softmax_cross_entropy")(z, y, xp=np)
        zd = xp.asarray(z)
        loss, dz = fused(zd, xp.asarray(y), xp=xp)
        assert loss.shape == () and loss.dtype == want_loss.dtype
        _check(gpu, loss, want_loss, dtype, record, "softmax_xent_loss")
        _check(gpu, dz, want_dz, dtype, record, "softmax_xent_dlogits")
        np.testing.assert_array_equal(_host(gpu, zd), z)  # the logits are left alone


def test_fused_softmax_cross_entropy_non_contiguous_and_bad_label(gpu: gpunn.Backend) -> None:
    xp, fused = gpu.xp, kernels.fused("softmax_cross_entropy", gpu.xp)
    rng = np.random.default_rng(4)
    wide = rng.standard_normal((6, 20)).astype("float32")
    y = rng.integers(0, 10, size=6)
    loss, dz = fused(xp.asarray(wide)[:, ::2], xp.asarray(y), xp=xp)  # a strided view
    want_loss, want_dz = kernels.reference("softmax_cross_entropy")(wide[:, ::2], y, xp=np)
    np.testing.assert_allclose(_host(gpu, dz), want_dz, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=2e-5)
    y[2] = 10  # out of range: the kernel makes the loss NaN rather than read past the row
    loss, _ = fused(xp.asarray(wide)[:, ::2], xp.asarray(y), xp=xp)
    assert np.isnan(float(loss))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("column", [False, True], ids=["N", "Nx1"])
def test_fused_binary_cross_entropy(gpu: gpunn.Backend, record: Record, column: bool, dtype: str):
    xp, fused = gpu.xp, kernels.fused("binary_cross_entropy", gpu.xp)
    rng = np.random.default_rng(5)
    for n in ODD_SIZES:
        shape = (n, 1) if column else (n,)
        z = (rng.standard_normal(shape) * 30).astype(dtype)  # large |z|: the stable forms matter
        y = rng.integers(0, 2, size=shape).astype(dtype)
        want_loss, want_dz = kernels.reference("binary_cross_entropy")(z, y, xp=np)
        loss, dz = fused(xp.asarray(z), xp.asarray(y), xp=xp)
        assert loss.shape == ()
        _check(gpu, loss, want_loss, dtype, record, "bce_loss")
        _check(gpu, dz, want_dz, dtype, record, "bce_dlogits")


#: (x_shape, kernel, stride, padding): LeNet-5's and the digits CNN's col2im (conv + pool), and
#: odd sizes with overlap; a large batch so that the grid is big
CONV_CASES = (
    ((256, 6, 14, 14), 6, 2, 0),
    ((256, 32, 4, 4), 4, 2, 1),
    ((3, 5, 11, 9), 3, (2, 1), (1, 0)),
    ((1, 1, 5, 5), 5, 1, 2),
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_last", [False, True], ids=["nchw", "batch_last"])
def test_fused_col2im(gpu: gpunn.Backend, record: Record, batch_last: bool, dtype: str) -> None:
    """Each pixel's terms are added in the reference's order: equal up to FTZ and FMA."""
    xp, fused = gpu.xp, kernels.fused("col2im", gpu.xp)
    rng = np.random.default_rng(11)
    for x_shape, k, s, p in CONV_CASES:
        (kh, kw), (sh, sw), (ph, pw) = (gpunn.math.conv.pair(v) for v in (k, s, p))
        N, C, H, W = x_shape
        Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        cols = rng.standard_normal((C * kh * kw, N * Ho * Wo)).astype(dtype)
        want = kernels.reference("col2im")(cols, x_shape, k, s, p, xp=np, batch_last=batch_last)
        got = fused(xp.asarray(cols), x_shape, k, s, p, xp=xp, batch_last=batch_last)
        _check(gpu, got, want, dtype, record, "col2im")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("x_shape", "k", "s"),
    [((256, 6, 28, 28), 2, 2), ((7, 3, 9, 11), 3, 2), ((2, 2, 17, 18), 17, 1)],
    ids=["lenet-2x2", "overlap-odd", "int32-argmax"],
)
def test_fused_max_pool_backward(
    gpu: gpunn.Backend, record: Record, x_shape: tuple, k: int, s: int, dtype: str
) -> None:
    """Ties (integer inputs) included: the gradient goes where the forward's argmax says."""
    xp, fused = gpu.xp, kernels.fused("max_pool2d_backward", gpu.xp)
    rng = np.random.default_rng(12)
    x = rng.integers(-2, 3, size=x_shape).astype(dtype)
    _, argmax = gpunn.math.pool.max_pool2d_forward(x, k, s, xp=np)
    dy = rng.standard_normal(argmax.shape).astype(dtype)
    want = kernels.reference("max_pool2d_backward")(dy, argmax, x_shape, k, s, xp=np)
    got = fused(xp.asarray(dy), xp.asarray(argmax), x_shape, k, s, xp=xp)
    _check(gpu, got, want, dtype, record, "max_pool_backward")


OPTIMIZER_CASES = {
    "sgd": ("sgd_update", {"lr": 0.1}),
    "sgd-wd": ("sgd_update", {"lr": 0.1, "weight_decay": 0.01}),
    "momentum": ("sgd_update", {"lr": 0.1, "momentum": 0.9}),
    "nesterov-wd": (
        "sgd_update",
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    ),
    "adam": ("adam_update", {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
    "adam-l2": (
        "adam_update",
        {"lr": 1e-2, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1},
    ),
    "adamw": (
        "adam_update",
        {
            "lr": 1e-3,
            "beta1": 0.9,
            "beta2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.01,
            "decoupled": True,
        },
    ),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(OPTIMIZER_CASES))
def test_fused_optimizer_updates(gpu: gpunn.Backend, record: Record, case: str, dtype: str):
    name, kwargs = OPTIMIZER_CASES[case]
    xp, fused = gpu.xp, kernels.fused(name, gpu.xp)
    rng = np.random.default_rng(6)
    for n in (*ODD_SIZES, 1 << 20):
        p = rng.standard_normal(n).astype(dtype)
        if name == "adam_update":
            state = [np.zeros_like(p), np.zeros_like(p)]
        else:
            state = [np.zeros_like(p) if kwargs.get("momentum") else None]
        pd = xp.array(p)  # copies: both runs update in place
        state_d = [None if s is None else xp.array(s) for s in state]
        for step in range(1, 4):
            g = rng.standard_normal(n).astype(dtype)
            extra = {"step": step} if name == "adam_update" else {}
            kernels.reference(name)(p, g, *state, **kwargs, **extra, xp=np)
            fused(pd, xp.asarray(g), *state_d, **kwargs, **extra, xp=xp)
        _check(gpu, pd, p, dtype, record, f"{case}_params")
        for got, want in zip(state_d, state, strict=True):
            if want is not None:
                _check(gpu, got, want, dtype, record, f"{case}_state")


# ==========================================================================================
# The dispatch on the GPU
# ==========================================================================================


def test_every_fused_kernel_passes_its_self_check_on_the_gpu(
    gpu: gpunn.Backend, record: Record
) -> None:
    kernels.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = kernels.self_check_all(gpu.xp)
    messages = [str(w.message) for w in caught if "fused kernel" in str(w.message)]
    assert messages == []
    for key, outcome in report.items():
        assert outcome.status == "fused", f"{key}: {outcome.reason}"
        record(f"self_check_{outcome.name}", outcome.max_rel_error or 0.0)
    for name in kernels.NAMES:
        assert kernels.get(name, gpu.xp) is not kernels.reference(name)


def test_gpunn_fused_0_gives_references_on_the_gpu(
    gpu: gpunn.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUNN_FUSED", "0")
    kernels.reset()
    for name in kernels.NAMES:
        assert kernels.get(name, gpu.xp) is kernels.reference(name)


# ==========================================================================================
# Whole training runs: CuPy against NumPy from one seed
# ==========================================================================================

ACTIVATION_LAYERS = {
    "relu": gpunn.ReLU,
    "leaky_relu": gpunn.LeakyReLU,
    "sigmoid": gpunn.Sigmoid,
    "tanh": gpunn.Tanh,
}
RUNS = {
    "relu-softmax-nesterov": (
        "relu",
        "softmax",
        lambda: gpunn.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    ),
    "tanh-softmax-adam": ("tanh", "softmax", lambda: gpunn.Adam(1e-3)),
    "leaky-bce-adamw": ("leaky_relu", "bce", lambda: gpunn.AdamW(1e-3)),
    "sigmoid-softmax-sgd": ("sigmoid", "softmax", lambda: gpunn.SGD(0.5)),
}
FEATURES, HIDDEN, CLASSES, SAMPLES, BATCH = 20, 32, 5, 512, 64


def _dataset(loss_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (SAMPLES, FEATURES) float32 and labels from a fixed random teacher."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SAMPLES, FEATURES)).astype("float32")
    scores = x @ rng.standard_normal((FEATURES, CLASSES))  # (SAMPLES, CLASSES)
    if loss_kind == "bce":
        return x, (scores[:, 0] > 0).astype("float32")
    return x, scores.argmax(axis=1)


def _models(act: str, loss_kind: str, gpu: gpunn.Backend) -> tuple[gpunn.Sequential, ...]:
    out = 1 if loss_kind == "bce" else CLASSES
    layer = ACTIVATION_LAYERS[act]
    cpu = gpunn.Sequential(
        [
            gpunn.Dense(FEATURES, HIDDEN),
            layer(),
            gpunn.Dense(HIDDEN, HIDDEN),
            layer(),
            gpunn.Dense(HIDDEN, out),
        ],
        backend="numpy",
        seed=0,
    )
    return cpu, cpu.to(gpu)


def _train(model: gpunn.Sequential, loss_kind: str, make_opt: Any, x: Any, y: Any, steps: int):
    """The manual loop: forward, loss, backward, step. Returns the loss of every step."""
    loss = gpunn.BinaryCrossEntropy() if loss_kind == "bce" else gpunn.SoftmaxCrossEntropy()
    opt = make_opt()
    curve = []
    for step in range(steps):
        start = (step * BATCH) % SAMPLES
        xb, yb = x[start : start + BATCH], y[start : start + BATCH]
        logits = model.forward(xb)
        curve.append(loss.forward(logits, model.backend.asarray(yb)))
        model.backward(loss.backward())
        opt.step(model)
    return np.array([float(v) for v in curve]), loss


def _accuracy(model: gpunn.Sequential, loss: gpunn.Loss, x: np.ndarray, y: np.ndarray) -> float:
    logits = model.predict(x)
    return float(loss.correct(logits, model.backend.asarray(y))) / len(y)


@pytest.mark.parametrize("fused", ["1", "0"], ids=["fused", "unfused"])
@pytest.mark.parametrize("run", list(RUNS))
def test_training_loss_curve_and_accuracy_match_numpy(
    gpu: gpunn.Backend, record: Record, monkeypatch: pytest.MonkeyPatch, run: str, fused: str
) -> None:
    monkeypatch.setenv("GPUNN_FUSED", fused)
    kernels.reset()  # GPUNN_FUSED is read once, and again after a reset
    act, loss_kind, make_opt = RUNS[run]
    x, y = _dataset(loss_kind)
    cpu, gpu_model = _models(act, loss_kind, gpu)
    cpu_curve, cpu_loss = _train(cpu, loss_kind, make_opt, x, y, steps=100)
    gpu_curve, gpu_loss = _train(gpu_model, loss_kind, make_opt, x, y, steps=100)
    record("loss_curve_100_steps", float(np.max(np.abs(gpu_curve - cpu_curve) / cpu_curve)))
    np.testing.assert_allclose(gpu_curve, cpu_curve, rtol=1e-3)
    acc_cpu, acc_gpu = _accuracy(cpu, cpu_loss, x, y), _accuracy(gpu_model, gpu_loss, x, y)
    record("accuracy_points", abs(acc_gpu - acc_cpu) * 100)
    assert abs(acc_gpu - acc_cpu) <= 0.01, (acc_cpu, acc_gpu)


@pytest.mark.parametrize("fused", ["1", "0"], ids=["fused", "unfused"])
@pytest.mark.parametrize("run", list(RUNS))
def test_training_weights_match_numpy_after_10_steps(
    gpu: gpunn.Backend, record: Record, monkeypatch: pytest.MonkeyPatch, run: str, fused: str
) -> None:
    monkeypatch.setenv("GPUNN_FUSED", fused)
    kernels.reset()  # GPUNN_FUSED is read once, and again after a reset
    act, loss_kind, make_opt = RUNS[run]
    x, y = _dataset(loss_kind)
    cpu, gpu_model = _models(act, loss_kind, gpu)
    _train(cpu, loss_kind, make_opt, x, y, steps=10)
    _train(gpu_model, loss_kind, make_opt, x, y, steps=10)
    back = gpu_model.to("numpy")  # copies the GPU weights to the host
    for key, want in cpu.params.items():
        got = back.params[key]
        scale = max(float(np.abs(want).max()), 1e-30)
        record("weights_10_steps", float(np.abs(got - want).max()) / scale)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=key)


# ==========================================================================================
# TF32 (opt-in)
# ==========================================================================================


def _matmuls(gpu: gpunn.Backend) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(float64 product, float32 GPU product with TF32 off, with TF32 on, flag when on)."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((1024, 1024)).astype("float32")
    b = rng.standard_normal((1024, 1024)).astype("float32")
    exact = a.astype(np.float64) @ b.astype(np.float64)
    xp = gpu.xp
    try:
        off = gpunn.get_backend("cupy", tf32=False)
        c_off = off.to_numpy(xp.matmul(xp.asarray(a), xp.asarray(b)))
        on = gpunn.get_backend("cupy", tf32=True)
        flag = on.tf32
        c_on = on.to_numpy(xp.matmul(xp.asarray(a), xp.asarray(b)))
    finally:
        gpunn.get_backend("cupy", tf32=False)
    return exact, c_off, c_on, flag


def test_tf32_opt_in_sets_the_flag_and_stays_within_1e_3(gpu: gpunn.Backend, record: Record):
    exact, c_off, c_on, flag = _matmuls(gpu)
    assert flag is True
    assert gpunn.get_backend("cupy").tf32 is False  # switched back off
    err_off = np.linalg.norm(c_off - exact) / np.linalg.norm(exact)
    err_on = np.linalg.norm(c_on - exact) / np.linalg.norm(exact)
    change = np.linalg.norm(c_on - c_off) / np.linalg.norm(c_off)
    record("matmul_fp32_vs_fp64", err_off)
    record("matmul_tf32_vs_fp64", err_on)
    record("matmul_tf32_vs_fp32", change)
    assert err_off < 1e-5
    assert err_on < 2e-3 and change < 2e-3


def test_tf32_opt_in_changes_float32_matmul_results(gpu: gpunn.Backend) -> None:
    """TF32 rounds the inputs to 10 mantissa bits: identical results mean it did not engage."""
    _, c_off, c_on, _ = _matmuls(gpu)
    assert not np.array_equal(c_on, c_off), "tf32=True left float32 matmul results unchanged"
