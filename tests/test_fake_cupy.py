"""Tests for gpunn.testing.fake_cupy: the emulation enforces and counts CuPy's device rules.

Each rule the training tests rely on is shown to bite here: an emulation that let a wrong device
or a host read through would make the zero counts of tests/test_device_rules.py meaningless.
The rules follow CuPy 14's source (``_kernel.pyx``'s peer-access check, ``core.pyx``'s
``__array__``, ``copy`` and ``_array_from_cupy_ndarray``, ``device.pyx``'s per-thread device
stack, ``_routines_linalg.pyx``'s compute types).
"""

from __future__ import annotations

import sys
import threading
import warnings

import numpy as np
import pytest

import gpunn
from gpunn import backend as backend_module
from gpunn.testing import fake_cupy

pytestmark = pytest.mark.cuda_on_cpu


@pytest.fixture
def cp():
    """A fresh two-device emulation as ``cupy`` (no peer access: cross-device raises)."""
    with fake_cupy.installed(devices=2) as module:
        yield module


def test_arrays_live_on_the_device_current_when_they_were_made(cp) -> None:
    emu = cp.emulation
    a = cp.zeros(3)
    with cp.cuda.Device(1):
        b = cp.arange(4)
        c = cp.asarray(np.ones(2))
        with cp.cuda.Device(0):  # nested: the stack restores device 1 afterwards
            d = cp.ones(2)
        e = b * 2
        assert emu.current == 1
    assert emu.current == 0
    assert [x.device.id for x in (a, b, c, d, e)] == [0, 1, 1, 0, 1]
    cp.cuda.Device(1).use()  # use() switches for good
    assert cp.empty(1).device.id == 1 and cp.cuda.runtime.getDevice() == 1


def test_the_current_device_is_per_thread(cp) -> None:
    seen = []
    with cp.cuda.Device(1):
        worker = threading.Thread(target=lambda: seen.append(cp.cuda.runtime.getDevice()))
        worker.start()
        worker.join()
    assert seen == [0]


def test_an_operation_on_another_devices_array_raises_and_is_counted(cp) -> None:
    with cp.cuda.Device(1):
        a = cp.ones(3)
    for operation in (
        lambda: a + 1,
        lambda: cp.exp(a),
        lambda: a.sum(),
        lambda: cp.take(a, cp.asarray([0])),
        lambda: a[cp.asarray([0, 1])],
        lambda: cp.zeros(6).__setitem__(slice(None, None, 2), a),  # a strided copy: a kernel
    ):
        with pytest.raises(ValueError, match="device 1 but device 0 is current"):
            operation()
    assert cp.emulation.counts["cross_device"] == 6
    assert all("cupy:1 while cupy:0" in line for line in cp.emulation.events("cross_device"))
    target = cp.zeros(3)
    target[...] = a  # same layout: CuPy copies the bytes between the GPUs (no kernel)
    assert cp.emulation.counts["cross_device_copy"] == 1 and target.get().tolist() == [1, 1, 1]


def test_with_peer_access_cross_device_operations_go_on_but_are_counted() -> None:
    with fake_cupy.installed(devices=2, peer_access=True) as cp:
        with cp.cuda.Device(1):
            a = cp.ones(3)
        b = a + 1  # computed on device 0, the current one
        assert b.device.id == 0 and cp.emulation.counts["cross_device"] == 1
        assert "test_fake_cupy.py" in cp.emulation.events("cross_device")[0]  # where it happened


def test_views_stay_with_their_memory_without_a_check(cp) -> None:
    with cp.cuda.Device(1):
        a = cp.arange(12.0).reshape(3, 4)
    views = [a[1], a[:, 2], a.T, a.reshape(-1), a.ravel(), a[0, 1], cp.reshape(a, (4, 3))]
    assert all(v.device.id == 1 for v in views)
    assert cp.emulation.counts["cross_device"] == 0
    assert views[5].shape == ()  # a full integer index gives a 0-d array, as in CuPy


def test_host_reads_are_counted_and_implicit_conversion_is_refused(cp) -> None:
    a = cp.arange(3.0)
    s = a.sum()
    float(s), int(s), bool(s), s.item(), a.tolist(), a.get(), cp.asnumpy(a), repr(a), f"{s:.1f}"
    assert cp.emulation.counts["host_read"] == 9
    host = np.empty(3)
    assert a.get(out=host) is host and cp.emulation.counts["host_read"] == 10
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    assert cp.emulation.counts["refused_read"] == 1


def test_numpy_arrays_are_refused_by_device_operations(cp) -> None:
    a = cp.ones(3)
    for operation in (
        lambda: a + np.ones(3),
        lambda: cp.exp(np.ones(3)),
        lambda: a.fill(np.ones(1)),
    ):
        with pytest.raises(TypeError, match="numpy.ndarray"):
            operation()
    with pytest.raises(TypeError, match="numpy.ndarray"):
        a[...] = np.ones(3)  # CuPy refuses assignment from host arrays too
    assert cp.emulation.counts["host_array"] == 4


def test_asarray_uploads_host_data_and_copies_another_devices_array(cp) -> None:
    emu = cp.emulation
    a = cp.asarray(np.arange(3))
    assert emu.counts["upload"] == 1 and cp.asarray(a) is a  # same device, same dtype: no copy
    with cp.cuda.Device(1):
        b = cp.asarray(a)  # CuPy copies an array of another device to the current one
        like = cp.zeros_like(a)  # only a's shape and dtype are read: no check
    assert b.device.id == 1 and like.device.id == 1
    assert emu.counts["cross_device_copy"] == 1 and emu.counts["cross_device"] == 0
    np.testing.assert_array_equal(b.get(), [0, 1, 2])


def test_random_generators_belong_to_the_device_they_were_made_on(cp) -> None:
    with cp.cuda.Device(1):
        rng = cp.random.default_rng(0)
        assert rng.random((2, 2), dtype=np.float32).device.id == 1
    with pytest.raises(ValueError, match="generator"):
        rng.random((2, 2))
    assert cp.emulation.counts["cross_device"] == 1


def test_kernels_check_their_arguments_then_refuse_to_run(cp) -> None:
    kernel = cp.ElementwiseKernel("T x", "T y", "y = x", "copy_kernel")
    with cp.cuda.Device(1):
        x = cp.ones(3)
        with pytest.raises(fake_cupy.EmulatedKernelError, match="runs no CUDA code"):
            kernel(x)
    with pytest.raises(ValueError, match="device 1 but device 0"):
        kernel(x)
    module = cp.RawModule(code="", options=("--std=c++17",))
    with pytest.raises(fake_cupy.EmulatedKernelError):
        module.get_function("f")((1,), (32,), (cp.zeros(1),))
    assert cp.emulation.kernel_calls == [("copy_kernel", 1), ("f", 0)]
    assert cp.emulation.counts["get_function"] == 1


def test_memory_pool_calls_are_recorded_with_the_current_device(cp) -> None:
    with cp.cuda.Device(1):
        cp.get_default_memory_pool().free_all_blocks()
    cp.get_default_memory_pool().free_bytes()
    assert cp.emulation.pool_calls == [("free_all_blocks", 1), ("free_bytes", 0)]


def test_the_compute_type_is_read_from_cupy_tf32_once_then_fixed(
    cp, monkeypatch: pytest.MonkeyPatch
) -> None:
    linalg = cp._core._routines_linalg
    monkeypatch.delenv("CUPY_TF32", raising=False)
    assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT  # the first read
    monkeypatch.setenv("CUPY_TF32", "1")
    assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT  # too late
    with cp.cuda.Device(1):
        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32)  # the switch that works
    assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32
    assert cp.emulation.compute_type_calls[-1] == (linalg.COMPUTE_TYPE_TF32, 1)


def test_tf32_needs_compute_capability_8() -> None:
    with fake_cupy.installed(compute_capability=75) as cp:
        linalg = cp._core._routines_linalg
        with pytest.warns(UserWarning, match="compute capability 8.0"):
            linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32)
        assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT


def test_ftz_flushes_float32_subnormals_in_arithmetic_only() -> None:
    sub = np.float32(1e-45)
    with fake_cupy.installed(ftz=True) as cp:
        z = cp.asarray(np.array([sub, -sub, 1.0], dtype=np.float32))
        assert (z * 1).get().tolist() == [0.0, 0.0, 1.0]
        assert (z > 0).get().tolist() == [False, False, True]  # comparisons see zero too
        assert z.copy().get()[0] == sub and z[0:1].get()[0] == sub  # copies move bits as they are
        d = cp.asarray(np.array([1e-310], dtype=np.float64))
        assert (d * 1).get()[0] == 1e-310  # float64 keeps its subnormals


def test_gpunn_sees_the_emulation_as_cupy(cp) -> None:
    assert sys.modules["cupy"] is cp
    b = gpunn.get_backend("cupy:1")
    assert b.is_gpu and b.xp is cp and b.gpu_name == "Emulated GPU 1"
    with b.activate():
        a = cp.zeros(2)
    assert backend_module.namespace(a) is cp and a.device.id == 1
    with backend_module.device_of(a):
        assert cp.cuda.runtime.getDevice() == 1
    statuses = gpunn.available_backends()
    assert [s.name for s in statuses] == ["numpy", "cupy:0", "cupy:1"]


def test_installed_puts_everything_back() -> None:
    before = sys.modules.get("cupy")
    with fake_cupy.installed() as cp:
        assert sys.modules["cupy"] is cp
        gpunn.get_backend("cupy:0")
    assert sys.modules.get("cupy") is before
    assert "cupy:0" not in backend_module._BACKENDS


def test_training_on_the_emulation_computes_what_numpy_computes(
    cp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulation changes where arrays live, not the numbers: the run equals the NumPy run."""
    monkeypatch.setenv("GPUNN_FUSED", "0")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)), rng.integers(0, 3, 40)

    def run(backend: str) -> tuple[list[float], np.ndarray]:
        layers = [gpunn.Dense(4, 8), gpunn.ReLU(), gpunn.Dropout(0.2), gpunn.Dense(8, 3)]
        model = gpunn.Sequential(layers, backend=backend, seed=3)
        history = model.fit(
            X,
            y,
            loss=gpunn.SoftmaxCrossEntropy(),
            optimizer=gpunn.Adam(1e-2),
            epochs=2,
            batch_size=16,
            verbose=0,
        )
        return history["loss"], model.backend.to_numpy(model.flat_params)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emulated, plain = run("cupy:1"), run("numpy")
    assert emulated[0] == plain[0]
    np.testing.assert_array_equal(emulated[1], plain[1])
