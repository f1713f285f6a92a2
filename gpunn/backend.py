"""The one module that chooses the array library: NumPy on the CPU or CuPy on an NVIDIA GPU.

Everything else in gpunn receives ``xp`` (the array module) from a :class:`Backend` and never
imports ``numpy`` or ``cupy`` itself, so the forward pass, the losses and backpropagation are
written once and run unchanged on both.

Rules (see the README):

* ``"numpy"`` always works.
* ``"cupy"`` / ``"cupy:N"`` needs CuPy *and* a usable CUDA device N; if it cannot be honoured it
  raises :class:`BackendUnavailableError` with the reason. It never falls back silently.
* ``"auto"`` takes CuPy when it is usable, else NumPy with one warning per process naming why.
* ``spec=None`` reads the ``GPUNN_BACKEND`` environment variable, else ``"auto"``.

``import gpunn`` never touches CUDA: the probe runs lazily, once per device, catches every
exception and is cached.

A ``"cupy:N"`` backend owns device N: CuPy allocates every array, and launches every kernel, on
the *current* device, so everything gpunn does for a backend runs inside
:meth:`Backend.activate` (``with backend.activate(): ...``), which makes device N current for the
block and puts the previous device back after it (a shared no-op context on NumPy).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import sys
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy

__all__ = [
    "Backend",
    "BackendStatus",
    "BackendUnavailableError",
    "TF32UnsupportedError",
    "available_backends",
    "device_of",
    "get_backend",
    "host_rng",
    "namespace",
]

log = logging.getLogger("gpunn")

ENV_VAR = "GPUNN_BACKEND"
VALID_SPECS = '"auto", "numpy", "cupy" or "cupy:N" (N a CUDA device number, e.g. "cupy:0")'


class BackendUnavailableError(RuntimeError):
    """The backend that was asked for explicitly cannot be used here (the message says why)."""


class TF32UnsupportedError(RuntimeError):
    """TF32 was asked for, but this CuPy has no per-process switch for it (the message says why)."""


#: the context of a backend or array without a device (NumPy): entering it does nothing, and one
#: instance serves every caller (``nullcontext`` is reentrant)
_NO_DEVICE: AbstractContextManager[Any] = contextlib.nullcontext()


@dataclass(frozen=True)
class BackendStatus:
    """Whether one backend can be used on this machine, and if not, why."""

    name: str
    usable: bool
    reason: str  # "" when usable
    detail: str = ""  # e.g. the GPU's name


# --------------------------------------------------------------------------------------------
# Probing CuPy (lazy, cached, never raises)
# --------------------------------------------------------------------------------------------


def _import_cupy() -> Any:
    """Import CuPy through importlib so a test can replace it in ``sys.modules``."""
    return importlib.import_module("cupy")


@functools.cache
def _probe_cupy(device: int) -> tuple[bool, str, str]:
    """Return ``(usable, reason, gpu_name)`` for CuPy on ``device``; catches every exception.

    The probe does what training will do first: import, count devices, allocate on the device
    and run a kernel. A driver that is too old, or a machine with no GPU, fails at one of these
    steps (often only at the first allocation), and that error text becomes the reason.
    """
    try:
        cupy = _import_cupy()
    except ImportError as exc:
        return False, f"CuPy is not installed ({exc})", ""
    except Exception as exc:  # a broken install can raise anything at import
        return False, f"CuPy failed to import: {type(exc).__name__}: {exc}", ""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"no usable CUDA device ({type(exc).__name__}: {exc})", ""
    if count == 0:
        return False, "no CUDA device (the CUDA runtime reports 0 devices)", ""
    if not 0 <= device < count:
        return False, f"no CUDA device {device} (this machine has {count}: 0..{count - 1})", ""
    try:
        with cupy.cuda.Device(device):
            x = cupy.arange(4, dtype=cupy.float32)
            total = float((x * 2).sum())  # allocation + elementwise kernel + reduction
            cupy.cuda.Device(device).synchronize()
            name = _gpu_name(cupy, device)
    except Exception as exc:
        return False, f"CUDA device {device} is not usable ({type(exc).__name__}: {exc})", ""
    if total != 12.0:
        return False, f"CUDA device {device} computed a wrong result in the probe", ""
    return True, "", name


def _gpu_name(cupy: Any, device: int) -> str:
    props = cupy.cuda.runtime.getDeviceProperties(device)
    name = props.get("name", b"CUDA device")
    return name.decode() if isinstance(name, bytes) else str(name)


def _clear_probe_cache() -> None:
    """Forget probe results and the fallback warning (for tests that fake CuPy)."""
    _probe_cupy.cache_clear()
    _warned_fallback.clear()
    _BACKENDS.clear()


# --------------------------------------------------------------------------------------------
# Backend
# --------------------------------------------------------------------------------------------


class Backend:
    """An array library bound to one device: ``xp`` plus the few operations that cross devices.

    Use :func:`get_backend` to make one; backends are cached, so ``get_backend("numpy")`` is
    always the same object.
    """

    def __init__(self, name: str, device: int | None, xp: Any, gpu_name: str = "") -> None:
        self.name = name  # "numpy" or "cupy"
        self.device = device  # CUDA device number, None on NumPy
        self.xp = xp  # the array module: numpy or cupy
        self.gpu_name = gpu_name
        self._device_context: Any = None  # xp.cuda.Device(device), made at the first activate()

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. ``"numpy"`` or ``"cupy:0"``."""
        return self.name if self.device is None else f"{self.name}:{self.device}"

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def activate(self) -> AbstractContextManager[Any]:
        """A context that makes this backend's device current: ``with backend.activate(): ...``.

        CuPy allocates arrays and launches kernels on the current device (thread-local, device 0
        unless changed); nothing else moves them. Every allocation and launch gpunn makes for a
        ``cupy:N`` backend happens inside this context, which restores the previous device on
        exit and may be nested. On NumPy it is a shared no-op context (no per-call cost).
        """
        if self.device is None:
            return _NO_DEVICE
        if self._device_context is None:  # CuPy's Device keeps its stack per thread: reusable
            self._device_context = self.xp.cuda.Device(self.device)
        return self._device_context

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Move ``a`` (NumPy array, CuPy array, list or scalar) onto this backend."""
        if self.device is None:
            if hasattr(a, "get") and not isinstance(a, numpy.ndarray):
                a = a.get()  # a CuPy array coming back to the host
            return numpy.asarray(a, dtype=dtype)
        with self.activate():  # an array of another GPU is copied here (CuPy's asarray does)
            return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a: Any) -> numpy.ndarray:
        """Copy ``a`` to a host NumPy array (a no-op for NumPy arrays). Synchronises a GPU."""
        if isinstance(a, numpy.ndarray):
            return a
        if hasattr(a, "get"):
            return a.get()
        return numpy.asarray(a)

    def synchronize(self) -> None:
        """Wait until all queued work on the device is done (a no-op on NumPy)."""
        if self.device is not None:
            self.activate().synchronize()

    def host_rng(self, seed: int | None) -> numpy.random.Generator:
        """A host NumPy generator: random numbers are drawn here, then moved to the device."""
        return host_rng(seed)

    def host_arange(self, n: int) -> numpy.ndarray:
        """Indices 0..n-1 on the host (batch orders are made on the host)."""
        return numpy.arange(n)

    def free_memory(self) -> int | None:
        """Bytes free on the device (driver's free memory plus the pool's cached blocks);
        None on NumPy, whose arrays already live in host memory."""
        if self.device is None:
            return None
        with self.activate():  # memGetInfo and the pool both answer for the current device
            free, _total = self.xp.cuda.runtime.memGetInfo()
            return int(free) + int(self.xp.get_default_memory_pool().free_bytes())

    def free_memory_pool(self) -> None:
        """Give CuPy's cached device memory back to the driver (after an out-of-memory error)."""
        if self.device is not None:
            with self.activate():  # the pool frees the blocks of the current device only
                self.xp.get_default_memory_pool().free_all_blocks()

    @property
    def tf32(self) -> bool:
        """Whether float32 matrix products use TF32 tensor cores (CuPy's process-wide setting;
        always False on NumPy)."""
        if self.device is None:
            return False
        api = _compute_type_api(self.xp)
        if api is None:
            return False
        with self.activate():
            return bool(api.get(self.xp.float32) == api.tf32)

    def __repr__(self) -> str:
        if self.device is None:
            return f"Backend('{self.spec}')"
        return f"Backend('{self.spec}', {self.gpu_name})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backend) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)


def namespace(a: Any) -> Any:
    """The array module (numpy or cupy) that owns array ``a``; plain Python data counts as NumPy."""
    if type(a).__module__.split(".")[0] == "cupy":
        return _import_cupy()
    return numpy


def device_of(a: Any) -> AbstractContextManager[Any]:
    """A context that makes the device holding array ``a`` current (``a.device`` of a CuPy
    array); the shared no-op context for host data. For code that gets arrays, not a backend
    (losses, communicators): their temporaries and launches then land beside ``a``."""
    if type(a).__module__.split(".")[0] == "cupy":
        device = getattr(a, "device", None)
        if hasattr(device, "__enter__"):  # CuPy's Device; a stand-in array may have none
            return device
    return _NO_DEVICE


def host_rng(seed: int | None) -> numpy.random.Generator:
    """``numpy.random.default_rng(seed)``: the one source of randomness, on the host."""
    return numpy.random.default_rng(seed)


_BACKENDS: dict[str, Backend] = {}
_warned_fallback: set[str] = set()


def _parse_spec(spec: str) -> tuple[str, int | None]:
    """``"cupy:1"`` -> ``("cupy", 1)``; raises ValueError listing the valid forms."""
    if not isinstance(spec, str):
        raise ValueError(f"backend spec must be a string: {VALID_SPECS}; got {spec!r}")
    text = spec.strip().lower()
    if text in ("auto", "numpy"):
        return text, None
    if text == "cupy":
        return "cupy", 0
    name, sep, dev = text.partition(":")
    if name == "cupy" and sep and dev.isdigit():
        return "cupy", int(dev)
    raise ValueError(f"unknown backend {spec!r}; valid forms are {VALID_SPECS}")


def get_backend(spec: str | Backend | None = None, *, tf32: bool | None = None) -> Backend:
    """Return the backend for ``spec`` (see the module docstring for the rules).

    ``tf32=True`` lets cuBLAS use TF32 tensor cores for float32 matrix products on CuPy
    (faster, about 1e-3 relative error), ``tf32=False`` turns them off, None leaves the setting
    as it is; it has no effect on NumPy. The setting is CuPy's and holds for the whole process:
    every CuPy backend (every GPU) and every CuPy product, not only this backend's. Raises
    :class:`TF32UnsupportedError` when this CuPy has no TF32 switch.
    """
    if isinstance(spec, Backend):
        if tf32 is not None and spec.is_gpu:
            _set_tf32(spec, tf32)
        return spec
    from_env = spec is None
    if spec is None:
        spec = os.environ.get(ENV_VAR, "").strip() or "auto"
    try:
        name, device = _parse_spec(spec)
    except ValueError as exc:
        if from_env:  # say where the bad value came from
            raise ValueError(f"environment variable {ENV_VAR}: {exc}") from None
        raise
    if name == "auto":
        usable, reason, _ = _probe_cupy(0)
        if usable:
            return _make_cupy(0, tf32)
        if reason not in _warned_fallback:
            _warned_fallback.add(reason)
            msg = f"gpunn: using the NumPy (CPU) backend because {reason}"
            warnings.warn(msg, RuntimeWarning, stacklevel=_user_stacklevel())
            log.info(msg)
        return _numpy_backend()
    if name == "numpy":
        return _numpy_backend()
    usable, reason, _ = _probe_cupy(device)
    if not usable:
        raise BackendUnavailableError(f"backend {spec!r} is not available: {reason}")
    return _make_cupy(device, tf32)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by this function's caller point at the
    first line outside gpunn (the user's code that asked for the backend, however deep inside
    gpunn the request was made)."""
    level, frame = 2, sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        level, frame = level + 1, frame.f_back
    return level


def _numpy_backend() -> Backend:
    if "numpy" not in _BACKENDS:
        _BACKENDS["numpy"] = Backend("numpy", None, numpy)
    return _BACKENDS["numpy"]


def _make_cupy(device: int, tf32: bool | None) -> Backend:
    key = f"cupy:{device}"
    if key not in _BACKENDS:
        cupy = _import_cupy()
        _BACKENDS[key] = Backend("cupy", device, cupy, _probe_cupy(device)[2])
    backend = _BACKENDS[key]
    if tf32 is not None:
        _set_tf32(backend, tf32)
    return backend


@dataclass(frozen=True)
class _ComputeTypeAPI:
    """CuPy's switch for the compute type of its matrix products (``cupy._core``, CuPy >= 13)."""

    set: Any  # set_compute_type(dtype, compute_type)
    get: Any  # get_compute_type(dtype)
    tf32: int  # COMPUTE_TYPE_TF32
    default: int  # COMPUTE_TYPE_DEFAULT


def _compute_type_api(xp: Any) -> _ComputeTypeAPI | None:
    """The compute-type switch of CuPy module ``xp``, or None when this CuPy has none."""
    linalg = getattr(getattr(xp, "_core", None), "_routines_linalg", None)
    names = ("set_compute_type", "get_compute_type", "COMPUTE_TYPE_TF32", "COMPUTE_TYPE_DEFAULT")
    if linalg is None or not all(hasattr(linalg, n) for n in names):
        return None
    return _ComputeTypeAPI(*(getattr(linalg, n) for n in names))


def _set_tf32(backend: Backend, on: bool) -> None:
    """Let float32 matrix products use TF32 tensor cores, or not, in this whole process.

    CuPy chooses the cuBLAS compute type of a float32 product from a per-process table; it fills
    the table from ``CUPY_TF32`` once, at the first float32 product, so the variable cannot switch
    TF32 later (and once on it stays on). ``set_compute_type`` sets the table directly, in either
    direction, at any time; it reads the *current* device's compute capability (TF32 needs 8.0 or
    newer; CuPy warns and keeps the default below that), hence the device context.
    """
    api = _compute_type_api(backend.xp)
    if api is None:
        version = getattr(backend.xp, "__version__", "unknown")
        raise TF32UnsupportedError(
            f"TF32 needs CuPy >= 13 (cupy._core._routines_linalg.set_compute_type and "
            f"COMPUTE_TYPE_TF32); this CuPy ({version}) has no per-process TF32 switch. "
            "Upgrade CuPy, or run without TF32"
        )
    with backend.activate():
        api.set(backend.xp.float32, api.tf32 if on else api.default)


def available_backends() -> list[BackendStatus]:
    """Every backend gpunn knows, with whether it is usable here and why not."""
    statuses = [BackendStatus("numpy", True, "", "CPU")]
    usable, reason, gpu = _probe_cupy(0)
    if not usable:
        return statuses + [BackendStatus("cupy", False, reason)]
    count = _import_cupy().cuda.runtime.getDeviceCount()
    for device in range(count):
        usable, reason, gpu = _probe_cupy(device)
        statuses.append(BackendStatus(f"cupy:{device}", usable, reason, gpu))
    return statuses
