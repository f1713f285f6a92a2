"""gpunn.kernels without a GPU: references vs the core, the dispatch and its self-check, the CUDA.

* Each reference composition agrees with the core functions it composes and passes a float64
  finite-difference gradient check.
* The dispatch returns references on NumPy, honours GPUNN_FUSED=0, and its self-check falls back
  (warning once) when a fake "fused" kernel on a fake array module is wrong, raises or fails to
  build.
* Every ElementwiseKernel body compiles as plain host C++: a fake array module whose
  ElementwiseKernel runs that host code lets the real fused wrappers (argument order, scalars,
  in-place outputs) run here, against the references, over odd sizes. (Compiling the kernels as
  CuPy does, and running them under CUDA's rules, are the cuda_on_cpu tests.)
* scripts/gpu_check.py exits with a clear line when there is no GPU.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gpunn
from gpunn import kernels
from gpunn.kernels import cuda_source
from gpunn.kernels.activation import ACTIVATIONS
from gpunn.kernels.softmax_xent import MAX_THREADS, block_size
from gpunn.kernels.spec import compare
from gpunn.math import activations, losses
from gpunn.math.dense import dense_forward
from gpunn.testing import check_function_gradients

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "float64")
ODD_SIZES = (0, 1, 3, 1023, 4097)
LOSS_EPS = 1e-5  # difference-quotient rounding ~1e-16 * loss / eps stays well under 1e-6


@pytest.fixture(autouse=True)
def _clean_dispatch():
    """Each test starts and ends with the stock fused builders and no cached decisions."""
    saved = dict(kernels._FUSED)
    kernels.reset()
    yield
    kernels._FUSED.clear()
    kernels._FUSED.update(saved)
    kernels.reset()


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ==========================================================================================
# Reference compositions against the core
# ==========================================================================================

CORE_FORWARD = {
    "relu": lambda z, slope: activations.relu_forward(z, xp=np),
    "leaky_relu": lambda z, slope: activations.leaky_relu_forward(z, slope, xp=np),
    "sigmoid": lambda z, slope: activations.sigmoid_forward(z, xp=np),
    "tanh": lambda z, slope: activations.tanh_forward(z, xp=np),
}


def _away_from_kinks(z: np.ndarray) -> np.ndarray:
    """Move entries within 0.05 of 0 to +-0.5: central differences are exact only off the kink."""
    z = z.copy()
    near = np.abs(z) < 0.05
    z[near] = np.where(z[near] >= 0, 0.5, -0.5)
    return z


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_bias_activation_reference_is_dense_bias_then_core_activation(act: str) -> None:
    rng = _rng(1)
    x, W, b = rng.standard_normal((6, 5)), rng.standard_normal((5, 4)), rng.standard_normal(4)
    z_core = dense_forward(x, W, b, xp=np)  # (6, 4) = x @ W + b
    expected = CORE_FORWARD[act](z_core, 0.2)

    z = x @ W
    a = kernels.reference("bias_activation_forward")(z, b, act, slope=0.2, xp=np)
    np.testing.assert_array_equal(a, expected)
    np.testing.assert_array_equal(z, x @ W)  # without keep_z the reference leaves z alone

    out = np.empty_like(z)
    a = kernels.reference("bias_activation_forward")(
        z, b, act, slope=0.2, xp=np, out=out, keep_z=True
    )
    assert a is out
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(z, z_core)  # keep_z: z now holds the pre-activation


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_backward_reference_passes_gradient_check(act: str) -> None:
    rng = _rng(2)
    b = rng.standard_normal(7)
    z = _away_from_kinks(rng.standard_normal((5, 7)) * 2 + b) - b  # z + b is off the kink
    forward = kernels.reference("bias_activation_forward")
    backward = kernels.reference("activation_backward")
    a = forward(z, b, act, slope=0.1, xp=np)
    s = a if act in ("sigmoid", "tanh") else z + b
    error = check_function_gradients(
        lambda t: forward(t, b, act, slope=0.1, xp=np),
        lambda dy: backward(dy, s, act, slope=0.1, xp=np),
        z,
    )
    assert error < 1e-6


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_relu_backward_from_output_equals_backward_from_input(act: str) -> None:
    """The fused forward may keep only a: a > 0 exactly when z > 0, zeros and underflow included."""
    z = np.array([-2.0, -1e-45, -0.0, 0.0, 1e-45, 3.0, -1e-30, 1e-30], dtype=np.float32)
    da = np.arange(1, z.size + 1, dtype=np.float32)
    a = kernels.reference("bias_activation_forward")(
        z, np.zeros(1, np.float32), act, slope=0.01, xp=np
    )
    backward = kernels.reference("activation_backward")
    np.testing.assert_array_equal(
        backward(da, a, act, slope=0.01, xp=np), backward(da, z, act, slope=0.01, xp=np)
    )


def test_softmax_cross_entropy_reference_matches_the_loss_class() -> None:
    rng = _rng(3)
    z = rng.standard_normal((6, 5)) * 3
    y = rng.integers(0, 5, size=6)
    loss_obj = gpunn.SoftmaxCrossEntropy()
    expected_loss = float(loss_obj.forward(z, y))
    expected_dz = loss_obj.backward().copy()

    z_before = z.copy()
    loss, dz = kernels.reference("softmax_cross_entropy")(z, y, xp=np)
    np.testing.assert_array_equal(z, z_before)  # the logits are not overwritten
    assert loss.shape == () and float(loss) == expected_loss
    np.testing.assert_array_equal(dz, expected_dz)

    error = check_function_gradients(
        lambda t: kernels.reference("softmax_cross_entropy")(t, y, xp=np)[0],
        lambda r: r * dz,
        z,
        eps=LOSS_EPS,
    )
    assert error < 1e-6


def test_softmax_cross_entropy_reference_empty_batch() -> None:
    z = np.zeros((0, 4), dtype=np.float32)
    loss, dz = kernels.reference("softmax_cross_entropy")(z, np.zeros(0, np.int64), xp=np)
    assert float(loss) == 0.0 and loss.dtype == np.float32
    assert dz.shape == (0, 4)


@pytest.mark.parametrize("shape", [(7,), (7, 1), (0,)])
def test_binary_cross_entropy_reference_matches_core(shape: tuple[int, ...]) -> None:
    rng = _rng(4)
    z = rng.standard_normal(shape) * 4
    y = rng.integers(0, 2, size=shape).astype(np.float64)
    loss, dz = kernels.reference("binary_cross_entropy")(z, y, xp=np)
    assert float(loss) == float(losses.binary_cross_entropy_forward(z, y, xp=np))
    np.testing.assert_array_equal(dz, losses.binary_cross_entropy_backward(z, y, xp=np))
    if shape[0]:
        error = check_function_gradients(
            lambda t: kernels.reference("binary_cross_entropy")(t, y, xp=np)[0],
            lambda r: r * dz,
            z,
            eps=LOSS_EPS,
        )
        assert error < 1e-6


@pytest.mark.parametrize(
    "make",
    [
        lambda: gpunn.SGD(0.1),
        lambda: gpunn.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda: gpunn.Adam(0.01, weight_decay=0.01),
        lambda: gpunn.AdamW(0.01),
    ],
    ids=["sgd", "sgd-nesterov-wd", "adam-wd", "adamw"],
)
def test_optimizer_references_take_the_optimizer_classes_arguments(make: Any) -> None:
    """Calling the reference as a call site would gives exactly what the optimizer class does."""
    model = gpunn.Sequential(
        [gpunn.Dense(4, 3), gpunn.ReLU(), gpunn.Dense(3, 2)], backend="numpy", seed=0
    )
    opt = make()
    p = model.flat_params.copy()
    state = {name: np.zeros_like(p) for name in opt.state_names}
    rng = _rng(5)
    for step in range(1, 4):
        model.flat_grads[...] = rng.standard_normal(p.shape).astype(p.dtype)
        g = model.flat_grads.copy()
        opt.step(model)
        if isinstance(opt, gpunn.Adam):
            kernels.reference("adam_update")(
                p,
                g,
                state["exp_avg"],
                state["exp_avg_sq"],
                step=step,
                lr=opt.lr,
                beta1=opt.beta1,
                beta2=opt.beta2,
                eps=opt.eps,
                weight_decay=opt.weight_decay,
                decoupled=opt.decoupled,
                xp=np,
            )
        else:
            kernels.reference("sgd_update")(
                p,
                g,
                state.get("momentum_buffer"),
                lr=opt.lr,
                momentum=opt.momentum,
                nesterov=opt.nesterov,
                weight_decay=opt.weight_decay,
                xp=np,
            )
        np.testing.assert_array_equal(p, model.flat_params)


# ==========================================================================================
# The dispatch and the self-check, with fake array modules
# ==========================================================================================


def _fake_xp(name: str, device: list[int] | None = None) -> types.ModuleType:
    """A module that *is* NumPy under another name; with ``device`` it reports a CUDA device."""
    xp = types.ModuleType(name)
    xp.__dict__.update({k: v for k, v in np.__dict__.items() if not k.startswith("__")})
    if device is not None:
        runtime = types.SimpleNamespace(getDevice=lambda: device[0])
        xp.cuda = types.SimpleNamespace(runtime=runtime)
    return xp


def _counting(impl: Any) -> tuple[Any, list[int]]:
    """A builder returning ``impl``, and a list counting how often it was called."""
    calls = [0]

    def builder(xp: Any) -> Any:
        calls[0] += 1
        return impl

    return builder, calls


def _good_sgd(*args: Any, **kwargs: Any) -> None:
    kernels.reference("sgd_update")(*args, **kwargs)


def _wrong_sgd(p: Any, g: Any, buf: Any, *, lr: float, **kwargs: Any) -> None:
    p -= 2 * lr * g  # twice the step: the self-check must catch it


def test_dispatch_returns_references_on_numpy() -> None:
    for name in kernels.NAMES:
        assert kernels.get(name, np) is kernels.reference(name)
    assert kernels.outcomes() == {}  # nothing to decide on NumPy: no self-check ran
    with pytest.raises(KeyError, match="no fused 'sgd_update' for array module 'numpy'"):
        kernels.fused("sgd_update", np)


def test_unknown_kernel_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known kernels: bias_activation_forward"):
        kernels.get("softmax", np)


def test_every_kernel_has_a_cupy_builder_and_names_core_functions_it_repeats() -> None:
    for name in kernels.NAMES:
        spec = kernels.spec(name)
        assert spec.repeats and (name, "cupy") in kernels._FUSED
        for qualified in spec.repeats:
            module, _, function = qualified.rpartition(".")
            assert callable(getattr(importlib.import_module(module), function)), qualified


def test_a_correct_fused_kernel_is_used_and_checked_once() -> None:
    xp = _fake_xp("fakexp")
    builder, calls = _counting(_good_sgd)
    kernels.register_fused("sgd_update", "fakexp", builder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a passing self-check warns about nothing
        for _ in range(3):
            assert kernels.get("sgd_update", xp) is _good_sgd
    assert calls[0] == 1
    outcome = kernels.outcomes()["sgd_update@fakexp"]
    assert outcome.status == "fused" and outcome.max_rel_error == 0.0


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        (lambda xp: _wrong_sgd, "differs from the reference"),
        (lambda xp: lambda *a, **k: 1 / 0, "ZeroDivisionError"),
        (
            lambda xp: (_ for _ in ()).throw(RuntimeError("nvrtc: identifier 'expp' is undefined")),
            "identifier 'expp' is undefined",
        ),
    ],
    ids=["wrong-result", "raises-when-called", "fails-to-compile"],
)
def test_a_failing_fused_kernel_warns_once_and_falls_back(builder: Any, message: str) -> None:
    xp = _fake_xp("fakexp")
    kernels.register_fused("sgd_update", "fakexp", builder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # so only gpunn's own once-only logic can dedupe
        impls = [kernels.get("sgd_update", xp) for _ in range(3)]
    assert all(impl is kernels.reference("sgd_update") for impl in impls)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert caught[0].category is RuntimeWarning
    assert "'sgd_update'" in text and "self-check" in text and message in text
    outcome = kernels.outcomes()["sgd_update@fakexp"]
    assert outcome.status == "failed" and message in outcome.reason


def test_gpunn_fused_0_uses_the_reference_without_building(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    xp = _fake_xp("fakexp")
    builder, calls = _counting(_good_sgd)
    kernels.register_fused("sgd_update", "fakexp", builder)
    monkeypatch.setenv("GPUNN_FUSED", "0")
    kernels.reset()  # the variable is read once per process, and again after a reset
    assert kernels.get("sgd_update", xp) is kernels.reference("sgd_update")
    assert calls[0] == 0
    assert kernels.outcomes()["sgd_update@fakexp"].reason == "GPUNN_FUSED=0"
    monkeypatch.setenv("GPUNN_FUSED", "1")
    assert kernels.get("sgd_update", xp) is kernels.reference("sgd_update")  # not re-read yet
    kernels.reset()
    assert kernels.get("sgd_update", xp) is _good_sgd
    assert calls[0] == 1 and kernels.outcomes()["sgd_update@fakexp"].status == "fused"


@pytest.mark.parametrize(
    ("value", "enabled"), [("0", False), ("off", False), ("1", True), ("", True)]
)
def test_fused_enabled_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool
) -> None:
    monkeypatch.setenv("GPUNN_FUSED", value)
    kernels.reset()
    assert kernels.fused_enabled() is enabled


@pytest.mark.parametrize(
    ("value", "enabled"),
    [(" 0", False), ("0 ", False), ("FALSE", False), ("No", False), (" Off ", False)]
    + [("true", True), ("YES", True), (" 1 ", True), ("2", True)],
)
def test_gpunn_fused_ignores_case_and_surrounding_spaces(
    monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool
) -> None:
    monkeypatch.setenv("GPUNN_FUSED", value)
    kernels.reset()
    assert kernels.fused_enabled() is enabled


def test_a_reference_chosen_under_gpunn_fused_0_is_not_kept_once_fused_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """reset() forgets every decision; and a decision taken only because GPUNN_FUSED=0 is
    re-made (with the self-check) as soon as fused kernels are enabled again, even if the
    decision itself was not forgotten."""
    xp = _fake_xp("fakexp")
    builder, calls = _counting(_good_sgd)
    kernels.register_fused("sgd_update", "fakexp", builder)
    monkeypatch.setenv("GPUNN_FUSED", "0")
    kernels.reset()
    assert kernels.get("sgd_update", xp) is kernels.reference("sgd_update")
    assert kernels.outcomes()["sgd_update@fakexp"].status == "reference"
    kernels.reset()
    assert kernels.outcomes() == {}
    kernels.get("sgd_update", xp)
    monkeypatch.setattr(kernels, "_enabled", True)  # enabled, the "=0" decision still cached
    assert kernels.get("sgd_update", xp) is _good_sgd
    assert calls[0] == 1 and kernels.outcomes()["sgd_update@fakexp"].status == "fused"


@pytest.mark.parametrize(
    ("dtype", "within", "beyond"),
    [("float32", 2e-5, 1e-3), ("float64", 2e-11, 5e-9)],
)
def test_the_self_check_tolerance_follows_the_dtype(
    dtype: str, within: float, beyond: float
) -> None:
    """float32 may differ by a few ulps of reordering (rtol 1e-4), float64 only by ~1e-10: a
    float64 kernel off by 5e-9 (a float32 intermediate, say) fails its self-check, and so does
    a float32 kernel off by 1e-3."""
    ref = _rng().uniform(0.5, 2.0, 64).astype(dtype)
    assert compare([ref * (1 + within)], [ref], np) == pytest.approx(within, rel=0.1)
    with pytest.raises(AssertionError, match="differs from the reference"):
        compare([ref * (1 + beyond)], [ref], np)
    with pytest.raises(AssertionError, match="the reference gives"):
        compare([ref.astype("float64" if dtype == "float32" else "float32")], [ref], np)


def test_self_check_results_are_kept_per_device() -> None:
    device = [0]
    xp = _fake_xp("fakegpu", device)
    builder, calls = _counting(_good_sgd)
    kernels.register_fused("sgd_update", "fakegpu", builder)
    kernels.get("sgd_update", xp)
    device[0] = 1
    kernels.get("sgd_update", xp)
    kernels.get("sgd_update", xp)
    device[0] = 0
    kernels.get("sgd_update", xp)
    assert calls[0] == 2
    assert {"sgd_update@fakegpu:0", "sgd_update@fakegpu:1"} <= set(kernels.outcomes())


def test_self_check_all_reports_every_kernel() -> None:
    xp = _fake_xp("fakexp")
    for name in kernels.NAMES:
        kernels.register_fused(name, "fakexp", lambda xp, name=name: kernels.reference(name))
    report = kernels.self_check_all(xp)
    assert set(report) == {f"{name}@fakexp" for name in kernels.NAMES}
    assert {o.status for o in report.values()} == {"fused"}


# ==========================================================================================
# The elementwise kernels' C++ bodies, compiled for the host and run through the fused wrappers
# ==========================================================================================

NP_TYPES = {"int32": np.int32, "int64": np.int64, "float32": np.float32, "float64": np.float64}


class _HostElementwiseKernel:
    """CuPy's ElementwiseKernel calling convention over the host-compiled body of the kernel."""

    def __init__(self, lib: ctypes.CDLL, in_params: str, out_params: str, op: str, name: str):
        self.lib, self.name = lib, name
        self.ins = cuda_source.parse_params(in_params)
        self.outs = cuda_source.parse_params(out_params)

    def __call__(self, *args: Any) -> Any:
        ins, outs = args[: len(self.ins)], list(args[len(self.ins) :])
        arrays = [a for a in (*ins, *outs) if isinstance(a, np.ndarray)]
        dtype = arrays[0].dtype
        for (t, name), a in zip((*self.ins, *self.outs), (*ins, *outs), strict=False):
            if t == "T" and isinstance(a, np.ndarray) and a.dtype != dtype:
                raise TypeError(f"{self.name}: {name} is {a.dtype}, T is {dtype}")
        shape = np.broadcast_shapes(*(a.shape for a in arrays))

        def buffer(t: str, value: Any) -> np.ndarray:
            kind = dtype if t == "T" else NP_TYPES[t]
            return np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=kind), shape))

        in_bufs = [buffer(t, a) for (t, _), a in zip(self.ins, ins, strict=True)]
        if outs:
            out_bufs = [buffer(t, a).copy() for (t, _), a in zip(self.outs, outs, strict=True)]
        else:
            out_bufs = [np.empty(shape, dtype if t == "T" else NP_TYPES[t]) for t, _ in self.outs]
        fn = getattr(self.lib, f"{self.name}_{dtype.name}")
        pointers = [ctypes.c_void_p(b.ctypes.data) for b in (*in_bufs, *out_bufs)]
        fn(*pointers, ctypes.c_longlong(int(np.prod(shape))))
        for given, buf in zip(outs, out_bufs, strict=False):
            given[...] = buf
        results = outs or out_bufs
        return results[0] if len(results) == 1 else tuple(results)


@pytest.fixture(scope="module")
def hostxp(tmp_path_factory: pytest.TempPathFactory) -> types.ModuleType:
    """NumPy whose ElementwiseKernel runs gpunn's kernel bodies compiled as host C++."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++/c++) on PATH to build the kernel bodies for the host")
    work = tmp_path_factory.mktemp("hostkernels")
    source = cuda_source.HOST_PRELUDE + "\n".join(
        cuda_source.render_host(src, dtype)
        for src in kernels.ELEMENTWISE_SOURCES
        for dtype in DTYPES
    )
    (work / "kernels.cpp").write_text(source)
    done = subprocess.run(
        [compiler, "-std=c++17", "-O2", "-shared", "-fPIC", "kernels.cpp", "-o", "kernels.so"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lib = ctypes.CDLL(str(work / "kernels.so"))
    xp = _fake_xp("hostxp")
    xp.ElementwiseKernel = lambda *a: _HostElementwiseKernel(lib, *a)
    return xp


#: the kernels built from .cu files (RawModules: run under the CUDA shim, tests/test_cuda_on_cpu_*)
RAW_KERNELS = ("softmax_cross_entropy", "col2im", "max_pool2d_backward")
HOST_KERNELS = [n for n in kernels.NAMES if n not in RAW_KERNELS]


def _host_fused(name: str, hostxp: types.ModuleType) -> Any:
    kernels.register_fused(name, "hostxp", kernels.spec(name).build_fused)
    return kernels.fused(name, hostxp)


@pytest.mark.parametrize("name", HOST_KERNELS)
def test_host_compiled_fused_kernels_pass_the_self_check(name: str, hostxp: Any) -> None:
    kernels.register_fused(name, "hostxp", kernels.spec(name).build_fused)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        impl = kernels.get(name, hostxp)
    assert impl is not kernels.reference(name)
    assert kernels.outcomes()[f"{name}@hostxp"].status == "fused"


def _assert_close(fused: Any, ref: Any, dtype: str) -> None:
    rtol, atol = {"float32": (2e-6, 1e-7), "float64": (1e-13, 1e-15)}[dtype]
    assert fused.dtype == ref.dtype and fused.shape == ref.shape
    np.testing.assert_allclose(fused, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_host_fused_activation_forward_and_backward(hostxp: Any, act: str, dtype: str) -> None:
    forward = _host_fused("bias_activation_forward", hostxp)
    backward = _host_fused("activation_backward", hostxp)
    rng = _rng(6)
    for n in ODD_SIZES:
        z = (rng.standard_normal((n, 17)) * 4).astype(dtype)
        b = rng.standard_normal(17).astype(dtype)
        z[:, :3] = -b[:3]  # z + b == 0 exactly: the kink of relu and leaky_relu
        da = rng.standard_normal((n, 17)).astype(dtype)
        ref_a = kernels.reference("bias_activation_forward")(z, b, act, slope=0.05, xp=np)
        _assert_close(forward(z, b, act, slope=0.05, xp=hostxp), ref_a, dtype)

        zk, out = z.copy(), np.empty_like(z)
        assert forward(zk, b, act, slope=0.05, xp=hostxp, out=out, keep_z=True) is out
        _assert_close(out, ref_a, dtype)
        _assert_close(zk, z + b, dtype)

        s = ref_a if act in ("sigmoid", "tanh") else z + b
        ref_dz = kernels.reference("activation_backward")(da, s, act, slope=0.05, xp=np)
        _assert_close(backward(da, s, act, slope=0.05, xp=hostxp), ref_dz, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_host_fused_binary_cross_entropy(hostxp: Any, dtype: str) -> None:
    bce = _host_fused("binary_cross_entropy", hostxp)
    rng = _rng(7)
    for n in ODD_SIZES:
        for shape in ((n,), (n, 1)):
            z = (rng.standard_normal(shape) * 30).astype(dtype)  # large |z|: the stable forms
            y = rng.integers(0, 2, size=shape).astype(dtype)
            loss, dz = bce(z, y, xp=hostxp)
            ref_loss, ref_dz = kernels.reference("binary_cross_entropy")(z, y, xp=np)
            assert loss.shape == () and np.isfinite(loss)
            np.testing.assert_allclose(loss, ref_loss, rtol=1e-5 if dtype == "float32" else 1e-12)
            _assert_close(dz, ref_dz, dtype)


OPTIMIZER_CASES = [
    ("sgd_update", {"lr": 0.1}),
    ("sgd_update", {"lr": 0.1, "weight_decay": 0.01}),
    ("sgd_update", {"lr": 0.1, "momentum": 0.9}),
    ("sgd_update", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("adam_update", {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
    ("adam_update", {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1}),
    (
        "adam_update",
        {
            "lr": 0.01,
            "beta1": 0.9,
            "beta2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.1,
            "decoupled": True,
        },
    ),
]


def _optimizer_state(name: str, kwargs: dict[str, Any], p: np.ndarray) -> list[Any]:
    if name == "adam_update":
        return [np.zeros_like(p), np.zeros_like(p)]
    return [np.zeros_like(p) if kwargs.get("momentum") else None]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "kwargs"), OPTIMIZER_CASES)
def test_host_fused_optimizer_updates(
    hostxp: Any, name: str, kwargs: dict[str, Any], dtype: str
) -> None:
    fused = _host_fused(name, hostxp)
    rng = _rng(8)
    for n in ODD_SIZES:
        p_ref = rng.standard_normal(n).astype(dtype)
        p_fused = p_ref.copy()
        state_ref = _optimizer_state(name, kwargs, p_ref)
        state_fused = [None if s is None else s.copy() for s in state_ref]
        for step in range(1, 4):
            g = rng.standard_normal(n).astype(dtype)
            extra = {"step": step} if name == "adam_update" else {}
            kernels.reference(name)(p_ref, g, *state_ref, **kwargs, **extra, xp=np)
            fused(p_fused, g, *state_fused, **kwargs, **extra, xp=hostxp)
        _assert_close(p_fused, p_ref, dtype)
        for got, want in zip(state_fused, state_ref, strict=True):
            if want is not None:
                _assert_close(got, want, dtype)


# ==========================================================================================
# Softmax cross-entropy RawKernel: launch configuration (the kernel itself needs a GPU)
# ==========================================================================================


@pytest.mark.parametrize(("c", "threads"), [(1, 32), (10, 32), (33, 64), (200, 224), (5000, 256)])
def test_softmax_block_size_is_whole_warps_capped(c: int, threads: int) -> None:
    assert block_size(c) == threads
    assert block_size(c) % 32 == 0 and block_size(c) <= MAX_THREADS


# ==========================================================================================
# The CUDA sources ship with the package (compiled with NVRTC and run under the CUDA shim in
# tests/test_cuda_on_cpu_*.py)
# ==========================================================================================


def test_the_package_ships_its_cuda_sources() -> None:
    assert "softmax_xent.cu" in cuda_source.cu_files()
    assert "gpunn_softmax_xent_float32" in cuda_source.read_cu("softmax_xent.cu")


# ==========================================================================================
# scripts/gpu_check.py
# ==========================================================================================


def _load_gpu_check() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_a_gpu_exits_with_a_clear_line(tmp_path: Path) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    env.pop("GPUNN_BACKEND", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("gpu_check: no usable GPU:"), done.stderr
    assert list(tmp_path.iterdir()) == []  # no report for a check that did not run


def test_gpu_check_report_name_and_summary(tmp_path: Path) -> None:
    gpu_check = _load_gpu_check()
    name = gpu_check.report_name("NVIDIA H100 80GB HBM3", "2025-01-31")
    assert name == "gpu_check_NVIDIA-H100-80GB-HBM3_2025-01-31.json"
    records = tmp_path / "tests.jsonl"
    rows = [
        {"nodeid": "a", "when": "call", "outcome": "passed", "properties": {"parity:x": 1e-7}},
        {
            "nodeid": "b",
            "when": "call",
            "outcome": "failed",
            "message": "boom",
            "properties": {"parity:x": 3e-6, "parity:y": 2.0},
        },
        {"nodeid": "c", "when": "setup", "outcome": "skipped", "message": "no GPU"},
    ]
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = gpu_check.summarize_tests(records)
    assert summary["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert summary["worst_parity"] == {"x": 3e-6, "y": 2.0}
    assert [c["nodeid"] for c in summary["failures"]] == ["b"]


def test_gpu_check_mlp_step_runs_on_numpy() -> None:
    """The step whose launches the GPU check counts is a plain composition that runs anywhere."""
    gpu_check = _load_gpu_check()
    state = gpu_check.make_mlp_state(np, batch=32, width=16, classes=5, seed=0)
    first = float(gpu_check.mlp_step(state, kernels.reference, np))
    for _ in range(20):
        last = float(gpu_check.mlp_step(state, kernels.reference, np))
    assert last < first
