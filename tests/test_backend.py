"""Tests for gpunn.backend: choosing NumPy or CuPy, the fallback warning, errors and the probe.

No GPU is needed: stand-in ``cupy`` modules placed in ``sys.modules`` play "not installed",
"installed but no usable device" and "a working GPU". The real CuPy installed here (if any) is
probed too, and a subprocess proves that ``import gpunn`` never imports CuPy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
import warnings

import numpy as np
import pytest

import gpunn
from gpunn import backend as backend_module

GPU_NAME = "NVIDIA H100 80GB HBM3"
GPU_NAME_BYTES = GPU_NAME.encode()  # what getDeviceProperties returns
DRIVER_ERROR = (
    "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"
)


@pytest.fixture(autouse=True)
def _fresh_probe(monkeypatch):
    """Each test probes from scratch, without GPUNN_BACKEND, and leaves no fake result behind."""
    monkeypatch.delenv("GPUNN_BACKEND", raising=False)
    backend_module._clear_probe_cache()
    yield
    backend_module._clear_probe_cache()


class CUDARuntimeError(RuntimeError):
    """Stands in for cupy_backends.cuda.api.runtime.CUDARuntimeError."""


class FakeCuda:
    """The parts of ``cupy.cuda`` the probe and a Backend use, with call counters."""

    def __init__(self, count, count_error, name, device_error):
        self.calls = {"getDeviceCount": 0, "synchronize": [], "enter": []}
        fake = self

        class runtime:  # mirrors cupy.cuda.runtime
            @staticmethod
            def getDeviceCount():  # CuPy's spelling
                fake.calls["getDeviceCount"] += 1
                if count_error is not None:
                    raise count_error
                return count

            @staticmethod
            def getDeviceProperties(device):  # CuPy's spelling
                return {"name": name, "totalGlobalMem": 80 << 30}

        class Device:
            def __init__(self, device=0):
                if device_error is not None:
                    raise device_error
                self.id = device

            def __enter__(self):
                fake.calls["enter"].append(self.id)
                return self

            def __exit__(self, *exc):
                return False

            def synchronize(self):
                fake.calls["synchronize"].append(self.id)

        self.runtime = runtime
        self.Device = Device


def fake_cupy(
    *,
    count=1,
    count_error=None,
    alloc_error=None,
    device_error=None,
    wrong_result=False,
    name=GPU_NAME_BYTES,
):
    """A module object that looks enough like ``cupy`` for the probe (numbers come from NumPy)."""
    mod = types.ModuleType("cupy")
    mod.cuda = FakeCuda(count, count_error, name, device_error)
    mod.float32 = np.float32

    def arange(n, dtype=None):
        if alloc_error is not None:
            raise alloc_error
        a = np.arange(n, dtype=dtype)
        return a + 1 if wrong_result else a

    mod.arange = arange
    mod.asarray = lambda a, dtype=None: np.asarray(a, dtype=dtype)
    return mod


def fallback_warnings(record):
    return [w for w in record if "NumPy (CPU) backend" in str(w.message)]


# ------------------------------------------------------------------------------------------
# NumPy backend
# ------------------------------------------------------------------------------------------


def test_numpy_backend_attributes_and_operations():
    b = gpunn.get_backend("numpy")
    assert b.name == "numpy" and b.device is None and b.xp is np
    assert b.spec == "numpy" and not b.is_gpu
    assert repr(b) == "Backend('numpy')"
    a = b.asarray([[1, 2], [3, 4]], dtype="float32")
    assert type(a) is np.ndarray and a.dtype == np.float32 and a.shape == (2, 2)
    assert b.asarray([1.5]).dtype == np.float64
    host = b.to_numpy(a)
    assert type(host) is np.ndarray
    np.testing.assert_array_equal(host, [[1, 2], [3, 4]])
    assert b.synchronize() is None


def test_numpy_backend_is_cached_and_specs_are_normalised():
    b = gpunn.get_backend("numpy")
    assert gpunn.get_backend("numpy") is b
    assert gpunn.get_backend(" NumPy ") is b
    assert gpunn.get_backend(b) is b
    assert b == gpunn.Backend("numpy", None, np) and hash(b) == hash("numpy")


def test_tf32_has_no_effect_on_numpy():
    assert gpunn.get_backend("numpy", tf32=True).tf32 is False


def test_tf32_names_gpunn_uses_exist_in_the_installed_cupy():
    """gpunn switches TF32 with CuPy's per-process compute type (importable without a GPU); the
    cuBLAS math-mode constant it used before, CUBLAS_TF32_TENSOR_OP_MATH, is in no CuPy."""
    cupy = pytest.importorskip("cupy", reason="needs the cupy package (a GPU is not needed)")
    api = backend_module._compute_type_api(cupy)
    assert api is not None, f"CuPy {cupy.__version__} has no compute-type switch"
    linalg = cupy._core._routines_linalg
    assert api.set is linalg.set_compute_type and api.get is linalg.get_compute_type
    assert (api.tf32, api.default) == (linalg.COMPUTE_TYPE_TF32, linalg.COMPUTE_TYPE_DEFAULT)
    assert api.tf32 != api.default


@pytest.mark.parametrize("spec", ["cupy", "auto"])
def test_tf32_without_cupys_switch_raises_a_clear_error(monkeypatch, spec):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())  # a stand-in without cupy._core
    with pytest.raises(backend_module.TF32UnsupportedError, match="TF32 needs CuPy >= 13"):
        gpunn.get_backend(spec, tf32=True)
    b = gpunn.get_backend(spec)
    assert b.is_gpu and b.tf32 is False  # without tf32= nothing is switched


def test_to_numpy_copies_device_arrays_through_get():
    class DeviceArray:
        def get(self):
            return np.array([1.0, 2.0])

    b = gpunn.get_backend("numpy")
    np.testing.assert_array_equal(b.to_numpy(DeviceArray()), [1.0, 2.0])
    np.testing.assert_array_equal(b.asarray(DeviceArray(), dtype="float32"), [1.0, 2.0])


# ------------------------------------------------------------------------------------------
# Unusable CuPy: auto falls back (one warning), explicit cupy raises
# ------------------------------------------------------------------------------------------


UNUSABLE = {
    "not-installed": (None, "not installed"),
    "driver-error": (fake_cupy(count_error=CUDARuntimeError(DRIVER_ERROR)), DRIVER_ERROR),
    "zero-devices": (fake_cupy(count=0), "0 devices"),
    "allocation-fails": (
        fake_cupy(alloc_error=CUDARuntimeError("cudaErrorMemoryAllocation: out of memory")),
        "cudaErrorMemoryAllocation: out of memory",
    ),
    "device-fails": (
        fake_cupy(device_error=CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device")),
        "cudaErrorNoDevice",
    ),
    "odd-exception": (fake_cupy(count_error=ZeroDivisionError("weird driver")), "weird driver"),
    "wrong-result": (fake_cupy(wrong_result=True), "wrong result"),
}


@pytest.fixture(params=sorted(UNUSABLE))
def unusable_cupy(request, monkeypatch):
    """(module in sys.modules['cupy'] or None, text the reason must contain)."""
    module, text = UNUSABLE[request.param]
    if module is not None:  # fresh counters for every test
        module.cuda.calls = {"getDeviceCount": 0, "synchronize": [], "enter": []}
    monkeypatch.setitem(sys.modules, "cupy", module)
    return module, text


def test_auto_falls_back_to_numpy_with_one_warning_naming_the_reason(unusable_cupy):
    _, text = unusable_cupy
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = gpunn.get_backend("auto")
        second = gpunn.get_backend("auto")
        third = gpunn.get_backend()  # None -> GPUNN_BACKEND unset -> "auto"
    assert first is second is third is gpunn.get_backend("numpy")
    found = fallback_warnings(record)
    assert len(found) == 1, [str(w.message) for w in record]
    assert found[0].category is RuntimeWarning
    assert text in str(found[0].message)


@pytest.mark.parametrize("spec", ["cupy", "cupy:0", "cupy:3", "CuPy:1"])
def test_explicit_cupy_raises_with_the_reason_and_never_falls_back(unusable_cupy, spec):
    _, text = unusable_cupy
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(gpunn.BackendUnavailableError) as info:
            gpunn.get_backend(spec)
    assert isinstance(info.value, RuntimeError)
    assert spec in str(info.value)
    if spec in ("cupy", "cupy:0"):
        assert text in str(info.value)
    assert not fallback_warnings(record)


def test_available_backends_reports_cupy_unusable_with_reason(unusable_cupy):
    _, text = unusable_cupy
    statuses = gpunn.available_backends()
    assert statuses[0] == gpunn.BackendStatus("numpy", True, "", "CPU")
    assert [s.name for s in statuses] == ["numpy", "cupy"]
    assert statuses[1].usable is False and text in statuses[1].reason


def test_probe_is_cached_and_runs_once(monkeypatch):
    module = fake_cupy(count_error=CUDARuntimeError(DRIVER_ERROR))
    monkeypatch.setitem(sys.modules, "cupy", module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            gpunn.get_backend("auto")
        with pytest.raises(gpunn.BackendUnavailableError):
            gpunn.get_backend("cupy")
        gpunn.available_backends()
    assert module.cuda.calls["getDeviceCount"] == 1


def test_numpy_never_probes_cupy(monkeypatch):
    module = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", module)
    b = gpunn.get_backend("numpy")
    model = gpunn.Sequential([gpunn.Dense(2, 3), gpunn.ReLU()], backend="numpy")
    model.forward(np.ones((1, 2)))
    assert b.name == "numpy" and model.backend is b
    assert module.cuda.calls["getDeviceCount"] == 0
    assert backend_module._probe_cupy.cache_info().currsize == 0


def test_import_failure_of_any_kind_is_caught(monkeypatch):
    def broken_import():
        raise OSError("libcudart.so.13: cannot open shared object file")

    monkeypatch.setattr(backend_module, "_import_cupy", broken_import)
    with pytest.warns(RuntimeWarning, match="libcudart"):
        assert gpunn.get_backend("auto").name == "numpy"
    with pytest.raises(gpunn.BackendUnavailableError, match="libcudart"):
        gpunn.get_backend("cupy")


# ------------------------------------------------------------------------------------------
# Usable (stand-in) CuPy
# ------------------------------------------------------------------------------------------


def test_auto_picks_a_usable_cupy_without_warning(monkeypatch):
    module = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", module)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        b = gpunn.get_backend("auto")
        assert gpunn.get_backend() is b
    assert not record
    assert b.name == "cupy" and b.device == 0 and b.xp is module and b.is_gpu
    assert b.spec == "cupy:0" and b.gpu_name == GPU_NAME
    assert repr(b) == f"Backend('cupy:0', {GPU_NAME})"
    assert gpunn.get_backend("cupy") is b and gpunn.get_backend("cupy:0") is b
    assert b != gpunn.get_backend("numpy")


def test_usable_cupy_backend_moves_arrays_on_its_device(monkeypatch):
    module = fake_cupy(count=2, name="Tesla T4")  # a str name works as well as bytes
    monkeypatch.setitem(sys.modules, "cupy", module)
    b = gpunn.get_backend("cupy:1")
    assert repr(b) == "Backend('cupy:1', Tesla T4)" and b.device == 1
    module.cuda.calls["enter"].clear()
    a = b.asarray([1, 2, 3], dtype="float32")
    assert a.dtype == np.float32 and module.cuda.calls["enter"] == [1]
    b.synchronize()
    assert module.cuda.calls["synchronize"][-1] == 1


def test_device_number_out_of_range_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count=1))
    with pytest.raises(gpunn.BackendUnavailableError, match="no CUDA device 3"):
        gpunn.get_backend("cupy:3")
    assert gpunn.get_backend("cupy:0").device == 0


@pytest.mark.parametrize("count", [1, 2])
def test_device_number_equal_to_the_count_is_out_of_range(monkeypatch, count):
    """Devices are numbered 0..count-1: "cupy:<count>" names no device."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count=count))
    with pytest.raises(
        gpunn.BackendUnavailableError,
        match=rf"no CUDA device {count} \(this machine has {count}: 0\.\.{count - 1}\)",
    ):
        gpunn.get_backend(f"cupy:{count}")
    assert gpunn.get_backend(f"cupy:{count - 1}").device == count - 1


def test_available_backends_lists_every_usable_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count=2))
    statuses = gpunn.available_backends()
    assert [(s.name, s.usable, s.reason) for s in statuses] == [
        ("numpy", True, ""),
        ("cupy:0", True, ""),
        ("cupy:1", True, ""),
    ]
    assert statuses[1].detail == GPU_NAME


# ------------------------------------------------------------------------------------------
# GPUNN_BACKEND and bad specs
# ------------------------------------------------------------------------------------------


def test_env_var_numpy_is_honoured_without_probing(monkeypatch):
    module = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", module)
    monkeypatch.setenv("GPUNN_BACKEND", "numpy")
    assert gpunn.get_backend().name == "numpy"
    assert gpunn.get_backend(None).name == "numpy"
    assert module.cuda.calls["getDeviceCount"] == 0


def test_env_var_cupy_raises_when_unusable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count=0))
    monkeypatch.setenv("GPUNN_BACKEND", "cupy")
    with pytest.raises(gpunn.BackendUnavailableError, match="0 devices"):
        gpunn.get_backend()
    with pytest.raises(gpunn.BackendUnavailableError):
        gpunn.Sequential([gpunn.Dense(2, 2)])


def test_env_var_cupy_picks_a_usable_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    monkeypatch.setenv("GPUNN_BACKEND", "cupy:0")
    assert gpunn.get_backend().spec == "cupy:0"


def test_env_var_empty_means_auto(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setenv("GPUNN_BACKEND", "  ")
    with pytest.warns(RuntimeWarning, match="not installed"):
        assert gpunn.get_backend().name == "numpy"


def test_env_var_garbage_raises_value_error(monkeypatch):
    monkeypatch.setenv("GPUNN_BACKEND", "tpu")
    with pytest.raises(ValueError, match="tpu") as info:
        gpunn.get_backend()
    for form in ('"auto"', '"numpy"', '"cupy"', '"cupy:N"'):
        assert form in str(info.value)
    assert gpunn.get_backend("numpy").name == "numpy"  # an explicit spec wins over the variable


def test_env_var_garbage_names_the_variable(monkeypatch):
    monkeypatch.setenv("GPUNN_BACKEND", "bogus")
    with pytest.raises(ValueError, match=r"^environment variable GPUNN_BACKEND: .*'bogus'"):
        gpunn.get_backend()
    with pytest.raises(ValueError) as info:
        gpunn.get_backend("bogus")  # an explicit spec is not the variable's fault
    assert "GPUNN_BACKEND" not in str(info.value)


def test_the_fallback_warning_points_at_the_callers_line(monkeypatch):
    """The warning is raised deep inside gpunn (Sequential -> get_backend) but must show the
    user's own line, the one that asked for a model."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.delenv("GPUNN_BACKEND", raising=False)
    backend_module._clear_probe_cache()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        gpunn.Sequential([gpunn.Dense(2, 2)])
    found = fallback_warnings(record)
    assert len(found) == 1
    assert (found[0].filename, found[0].lineno) == (__file__, line)


@pytest.mark.parametrize("spec", ["gpu", "cuda", "cupy:", "cupy:x", "cupy:-1", "numpy:0", "", 3])
def test_unknown_spec_raises_value_error_listing_valid_forms(spec):
    with pytest.raises(ValueError) as info:
        gpunn.get_backend(spec)
    assert not isinstance(info.value, gpunn.BackendUnavailableError)
    for form in ('"auto"', '"numpy"', '"cupy"', '"cupy:N"'):
        assert form in str(info.value)


# ------------------------------------------------------------------------------------------
# The real CuPy installed on this machine (if any)
# ------------------------------------------------------------------------------------------


def _real_cupy_failure() -> str | None:
    """What goes wrong when the real CuPy is used here (None when a GPU works)."""
    try:
        import cupy
    except ImportError:
        return "not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return "0 devices"
        float((cupy.arange(4, dtype=cupy.float32) * 2).sum())
    except Exception as exc:
        return str(exc)
    return None


def test_real_cupy_auto_and_explicit():
    failure = _real_cupy_failure()
    backend_module._clear_probe_cache()
    if failure is None:  # a machine with a working GPU
        b = gpunn.get_backend("auto")
        assert b.name == "cupy" and b.gpu_name and b.gpu_name in repr(b)
        assert gpunn.get_backend("cupy") is b
        return
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert gpunn.get_backend("auto").name == "numpy"
        gpunn.get_backend("auto")
    found = fallback_warnings(record)
    assert len(found) == 1 and failure in str(found[0].message)
    with pytest.raises(gpunn.BackendUnavailableError) as info:
        gpunn.get_backend("cupy")
    assert failure in str(info.value)


def test_import_gpunn_does_not_import_cupy():
    code = textwrap.dedent(
        """
        import sys
        import gpunn
        assert "cupy" not in sys.modules, "import gpunn imported cupy"
        assert gpunn.backend._probe_cupy.cache_info().currsize == 0, "probe ran at import"
        model = gpunn.Sequential([gpunn.Dense(3, 4), gpunn.Tanh(), gpunn.Dense(4, 2)],
                                 backend="numpy")
        loss = gpunn.SoftmaxCrossEntropy()
        loss.forward(model.forward([[1.0, 2.0, 3.0]]), [1])
        model.backward(loss.backward())
        gpunn.SGD(0.1).step(model)
        assert "cupy" not in sys.modules, "training on numpy imported cupy"
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "GPUNN_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
