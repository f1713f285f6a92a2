"""A stand-in for the ``cupy`` module that enforces CuPy's device rules on the CPU, and counts.

gpunn's GPU path cannot run without a GPU, but most of what goes wrong on one is not numerics:
an array made on the wrong GPU, a kernel launched while another GPU is current, a value read
back to the host in the middle of an epoch. This module is a *device-rule emulation*: a module
named ``cupy`` whose arrays are NumPy arrays that remember their device, with the rules of CuPy
14 that bite enforced and counted, so the real training loop can run on ``"cupy:1"`` in CI:

* Every array lives on the device that was current when it was made (each creation function and
  each operation's result; views stay with their base), as in CuPy; nothing else moves it.
* An operation given an array of another device (a ufunc, a function, a method that computes,
  indexing that gathers, an assignment, a kernel launch) is a *cross-device operation*. CuPy
  raises ``ValueError`` unless peer access between the two GPUs can be enabled; so does the
  emulation, unless made with ``peer_access=True``, in which case it goes on. Counted either way.
* A NumPy array given to a device operation raises ``TypeError``, as in CuPy; counted.
* Every host read of device data is counted: ``float()``, ``int()``, ``bool()``, ``.item()``,
  ``.tolist()``, ``.get()``, ``cupy.asnumpy``, ``repr``/``str``/``format``. On a GPU each one
  waits for the device. ``numpy.asarray(device_array)`` (``__array__``) raises ``TypeError``, as
  CuPy does, and is counted as a refused read.
* Uploads (host data to a device), copies between devices, explicit synchronisations and
  allocations per device are counted too; ``Emulation.log`` says where each notable event
  happened (the first frame outside this file).
* ``cuda.Device(n)`` (a context manager with a per-thread stack, ``.use()``,
  ``.synchronize()``), ``cuda.runtime`` (``getDevice``, ``setDevice``, ``getDeviceCount``,
  ``memGetInfo``, ``getDeviceProperties``...), ``cuda.get_current_stream()``,
  ``get_default_memory_pool()`` (its calls are recorded with the device that was current),
  ``random.default_rng`` (a generator belongs to the device it was made on), and CuPy's
  process-wide compute type of matrix products (``_core._routines_linalg``: ``CUPY_TF32`` read
  once, at the first read of the float32 entry; TF32 refused below compute capability 8.0).
* Kernels: ``ElementwiseKernel``, ``RawModule``/``RawKernel`` check the devices of their
  arguments, record the launch, then raise :class:`EmulatedKernelError`: no CUDA code runs here,
  so gpunn's self-check of a fused kernel fails and the reference is used (with its warning), or
  ``GPUNN_FUSED=0`` uses the references from the start. The CUDA code itself is checked by
  compiling it and by running it under a host shim, elsewhere in the tests.
* Optional ``nccl=True``: ``cupy.cuda.nccl`` whose communicator checks that it is used on the
  device it was made on and is given buffers of that device; a sum over ``ndev`` identical
  ranks multiplies the buffer by ``ndev``.
* Optional ``ftz=True``: float32 subnormals read as zero at the inputs and results of
  arithmetic (ufuncs and reductions), as CuPy's kernels compile with ``-ftz=true``; copies,
  indexing and ``where`` move values unchanged. An approximation of the GPU's flush-to-zero,
  good enough to check that a test's expectation allows for it.

What it does not model: asynchrony (everything is done when the call returns), streams other
than one per device, memory limits (``memGetInfo`` reports a fixed size), the GPU's rounding and
math library, cuBLAS/cuRAND/NVRTC. Nothing it reports is a GPU result.

Use::

    with fake_cupy.installed(devices=2) as cp:      # sys.modules["cupy"] is the emulation
        model = gpunn.Sequential([...], backend="cupy:1")
        model.fit(X, y, ...)
        assert cp.emulation.counts["cross_device"] == 0
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy
from numpy.lib.mixins import NDArrayOperatorsMixin

__all__ = [
    "EmulatedKernelError",
    "Emulation",
    "flush_subnormals",
    "installed",
    "make_module",
    "ndarray",
]

_THIS_FILE = __file__
_NUMPY_DIR = os.path.dirname(numpy.__file__)

#: kinds of counted events (``Emulation.counts`` keys)
EVENTS = (
    "cross_device",  # an operation given an array of another device
    "host_array",  # a NumPy array given to a device operation (refused)
    "host_read",  # device data read on the host (each one a synchronisation on a GPU)
    "refused_read",  # __array__: implicit conversion to NumPy (refused)
    "upload",  # host data copied to a device
    "cross_device_copy",  # an explicit copy from one device to another
    "sync",  # Device.synchronize / Stream.synchronize
    "kernel_launch",  # an ElementwiseKernel / RawKernel call (then refused: no CUDA runs here)
    "get_function",  # RawModule.get_function
)

#: ndarray methods that return a view (no launch: the result stays on the array's device)
_VIEW_METHODS = frozenset(
    {"reshape", "ravel", "view", "transpose", "squeeze", "swapaxes", "diagonal", "flatten_view"}
)
#: ndarray methods that launch a kernel on the current device
_COMPUTE_METHODS = frozenset(
    {
        "sum",
        "prod",
        "max",
        "min",
        "argmax",
        "argmin",
        "mean",
        "var",
        "std",
        "any",
        "all",
        "cumsum",
        "clip",
        "round",
        "nonzero",
        "dot",
        "conj",
        "repeat",
        "take",
        "sort",
        "argsort",
        "flatten",
        "fill",
    }
)
#: NumPy functions that return a view of their first argument
_VIEW_FUNCTIONS = frozenset(
    {
        numpy.reshape,
        numpy.ravel,
        numpy.transpose,
        numpy.squeeze,
        numpy.expand_dims,
        numpy.broadcast_to,
        numpy.swapaxes,
        numpy.moveaxis,
    }
)
#: NumPy functions that only read the shape and dtype of their array argument
_LIKE_FUNCTIONS = frozenset({numpy.zeros_like, numpy.ones_like, numpy.empty_like, numpy.full_like})
#: NumPy functions that answer about arrays without making any (results pass through)
_PLAIN_FUNCTIONS = frozenset(
    {numpy.shape, numpy.ndim, numpy.size, numpy.result_type, numpy.may_share_memory}
)
#: ufuncs that compute (FTZ applies); the rest (copies, sign bit, ...) move values unchanged
_NON_ARITHMETIC_UFUNCS = frozenset({numpy.positive, numpy.copysign, numpy.signbit})

# CuPy's compute types of matrix products (cupy._core._routines_linalg)
COMPUTE_TYPE_TBD, COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_PEDANTIC = 0, 1, 2
COMPUTE_TYPE_FP16, COMPUTE_TYPE_FP32, COMPUTE_TYPE_FP64 = 3, 4, 5
COMPUTE_TYPE_BF16, COMPUTE_TYPE_TF32 = 6, 7


class EmulatedKernelError(NotImplementedError):
    """A CUDA kernel was launched under the emulation, which runs no CUDA code."""


class CUDARuntimeError(RuntimeError):
    """Stands in for ``cupy_backends.cuda.api.runtime.CUDARuntimeError``."""


class Emulation:
    """The state behind one emulated ``cupy`` module: devices, counters and the event log."""

    def __init__(
        self,
        devices: int = 2,
        *,
        peer_access: bool = False,
        ftz: bool = False,
        compute_capability: int = 90,
        memory: int = 16 << 30,
    ) -> None:
        if devices < 1:
            raise ValueError("the emulation needs at least one device")
        self.devices = devices
        self.peer_access = peer_access
        self.ftz = ftz
        self.compute_capability = compute_capability
        self.memory = memory
        self.counts: collections.Counter[str] = collections.Counter()
        self.allocations: collections.Counter[int] = collections.Counter()  # device -> arrays
        self.log: list[str] = []  # "<event>: <what> at <file>:<line>" for every counted event
        self.pool_calls: list[tuple[str, int]] = []  # (memory-pool method, current device)
        self.compute_type_calls: list[tuple[int, int]] = []  # (compute type, current device)
        self.kernel_calls: list[tuple[str, int]] = []  # (kernel name, current device)
        self._compute_types = [COMPUTE_TYPE_TBD] * 4  # bfloat16, float16, float32, float64
        self._local = threading.local()
        self._pointers: dict[int, tuple[int, numpy.ndarray]] = {}  # pointer -> (device, data)

    # --- the current device (per thread, device 0 until changed) ------------------------
    @property
    def current(self) -> int:
        return getattr(self._local, "device", 0)

    def set_current(self, device: int) -> None:
        if not 0 <= int(device) < self.devices:
            raise CUDARuntimeError(
                f"cudaErrorInvalidDevice: invalid device ordinal {device} "
                f"(the emulation has {self.devices} devices)"
            )
        self._local.device = int(device)

    def _stack(self) -> list[int]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    # --- counting -----------------------------------------------------------------------
    def record(self, event: str, what: str) -> None:
        """Count ``event`` and log where it happened (the first caller outside this file)."""
        self.counts[event] += 1
        self.log.append(f"{event}: {what} at {_caller()}")

    def events(self, event: str) -> list[str]:
        """The log lines of one kind of event."""
        return [line for line in self.log if line.startswith(event + ":")]

    def reset_counts(self) -> None:
        """Forget every count and log line (not the arrays, devices or settings)."""
        self.counts.clear()
        self.allocations.clear()
        self.log.clear()
        self.pool_calls.clear()
        self.compute_type_calls.clear()
        self.kernel_calls.clear()

    # --- rules ----------------------------------------------------------------------------
    def check(self, a: ndarray, operation: str) -> None:
        """An operation on the current device reads or writes ``a``: same device, or it is a
        cross-device operation (raised without peer access, as CuPy does)."""
        if a._device == self.current:
            return
        self.record(
            "cross_device",
            f"{operation} on an array of cupy:{a._device} while cupy:{self.current} is current",
        )
        if not self.peer_access:
            raise ValueError(
                f"{operation}: the array is on device {a._device} but device {self.current} is "
                "current, and peer access between them is unavailable (emulated CuPy rule)"
            )

    def refuse_host_array(self, operation: str) -> None:
        self.record("host_array", f"a NumPy array given to {operation}")
        raise TypeError(
            f"{operation}: unsupported type numpy.ndarray; move host data to the device with "
            "cupy.asarray first (emulated CuPy rule)"
        )

    def wrap(self, data: Any) -> ndarray:
        """A new array on the current device holding ``data`` (an allocation)."""
        data = numpy.asarray(data)
        self.allocations[self.current] += 1
        return ndarray(data, self.current, self)

    def flush(self, data: Any) -> Any:
        """``data`` with float32 subnormals as zero when FTZ is emulated (else unchanged)."""
        if not self.ftz:
            return data
        return flush_subnormals(data)

    def pointer(self, a: ndarray) -> int:
        """A device pointer for ``a`` (its host address), remembered with a's device and data."""
        ptr = int(a._data.__array_interface__["data"][0])
        self._pointers[ptr] = (a._device, a._data)
        return ptr

    def pointer_device(self, ptr: int) -> int | None:
        """The device of a pointer handed out by ``a.data.ptr`` (None for an unknown one)."""
        found = self._pointers.get(int(ptr))
        return None if found is None else found[0]

    def pointer_data(self, ptr: int) -> numpy.ndarray | None:
        found = self._pointers.get(int(ptr))
        return None if found is None else found[1]

    # --- the compute type of matrix products ----------------------------------------------
    def set_compute_type(self, dtype: Any, compute_type: int) -> None:
        self.compute_type_calls.append((int(compute_type), self.current))
        index = _compute_type_index(dtype)
        if compute_type in (COMPUTE_TYPE_BF16, COMPUTE_TYPE_TF32):
            if self.compute_capability < 80:  # read from the *current* device, as CuPy does
                warnings.warn(
                    "COMPUTE_TYPE_BF16 and COMPUTE_TYPE_TF32 need compute capability 8.0 or "
                    "newer; COMPUTE_TYPE_DEFAULT is used instead (emulated CuPy behaviour)",
                    stacklevel=2,
                )
                compute_type = COMPUTE_TYPE_DEFAULT
        elif compute_type not in range(COMPUTE_TYPE_TBD, COMPUTE_TYPE_FP64 + 1):
            raise ValueError(f"Unknown compute type: {compute_type}")
        self._compute_types[index] = compute_type

    def get_compute_type(self, dtype: Any) -> int:
        index = _compute_type_index(dtype)
        if self._compute_types[index] == COMPUTE_TYPE_TBD:  # the first read fixes it
            compute_type = COMPUTE_TYPE_DEFAULT
            if index == 2 and int(os.environ.get("CUPY_TF32", "0") or 0) > 0:
                compute_type = COMPUTE_TYPE_TF32
            self.set_compute_type(dtype, compute_type)
        return self._compute_types[index]


def flush_subnormals(data: Any) -> Any:
    """float32 ``data`` as a CuPy kernel sees and writes it: subnormals (0 < |x| < 2**-126)
    become zero of the same sign, as CuPy compiles every kernel with ``-ftz=true``. Other
    dtypes, and float32 data without subnormals, come back unchanged (the same object)."""
    if getattr(data, "dtype", None) != numpy.float32:
        return data
    array = numpy.asarray(data)
    magnitude = array.view(numpy.uint32) & numpy.uint32(0x7FFFFFFF)  # the bits of |x|
    sub = (magnitude != 0) & (magnitude < numpy.uint32(0x800000))  # exponent bits all 0
    if not sub.any():
        return data
    return numpy.where(sub, numpy.copysign(numpy.float32(0), array), array)


def _compute_type_index(dtype: Any) -> int:
    char = numpy.dtype(dtype).char
    if char == "e":
        return 1
    if char in "fF":
        return 2
    if char in "dD":
        return 3
    raise TypeError(f"dtype is not supported: {dtype}")


def _caller() -> str:
    """``file:line`` of the innermost frame outside this file and NumPy (where gpunn called)."""
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename == _THIS_FILE or frame.f_code.co_filename.startswith(_NUMPY_DIR)
    ):
        frame = frame.f_back
    if frame is None:
        return "?"
    name = frame.f_code.co_filename
    marker = os.sep + "gpunn" + os.sep
    if marker in name:
        name = "gpunn" + os.sep + name.rsplit(marker, 1)[1]
    return f"{name}:{frame.f_lineno}"


# ==========================================================================================
# Arrays
# ==========================================================================================


class _MemoryPointer:
    """``a.data``: the pointer and the device of an array's memory."""

    def __init__(self, ptr: int, device_id: int) -> None:
        self.ptr, self.device_id = ptr, device_id


class ndarray(NDArrayOperatorsMixin):  # CuPy's class name: namespace() keys on "cupy"
    """A device array of the emulation: NumPy data plus the device it lives on.

    Arithmetic operators, NumPy ufuncs and NumPy functions all come through
    ``__array_ufunc__`` / ``__array_function__``, where the device rules are applied.
    """

    __array_priority__ = 1000

    def __init__(self, data: numpy.ndarray, device: int, emulation: Emulation) -> None:
        self._data = data
        self._device = device
        self._emu = emulation

    # --- attributes without a launch ------------------------------------------------------
    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    nbytes = property(lambda self: self._data.nbytes)
    itemsize = property(lambda self: self._data.itemsize)
    strides = property(lambda self: self._data.strides)
    flags = property(lambda self: self._data.flags)

    @property
    def T(self) -> ndarray:
        return self._view(self._data.T)

    @property
    def device(self) -> _Device:
        return _Device(self._emu, self._device)

    @property
    def data(self) -> _MemoryPointer:
        return _MemoryPointer(self._emu.pointer(self), self._device)

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self._emu.pointer(self), False),
            "version": 3,
        }

    def __len__(self) -> int:
        if self._data.ndim == 0:
            raise TypeError("len() of unsized object")
        return self._data.shape[0]

    def __iter__(self) -> Iterator[ndarray]:
        if self._data.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._data.shape[0]))

    def _view(self, data: numpy.ndarray) -> ndarray:
        return ndarray(data, self._device, self._emu)

    def __getattr__(self, name: str) -> Any:
        if name in _VIEW_METHODS:
            method = getattr(self._data, name)
            return lambda *args, **kwargs: self._view(method(*args, **kwargs))
        if name in _COMPUTE_METHODS:
            return lambda *args, **kwargs: self._compute(name, args, kwargs)
        raise AttributeError(f"the emulated cupy.ndarray does not model {name!r}")

    # --- host reads -------------------------------------------------------------------------
    def _read(self, how: str) -> numpy.ndarray:
        self._emu.record("host_read", f"{how} of {self.dtype}{self.shape} on cupy:{self._device}")
        return self._data

    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True):
        """Copy to the host (a host read): a new NumPy array, or into ``out``."""
        data = self._read(".get()")
        if out is not None:
            if not isinstance(out, numpy.ndarray) or out.shape != data.shape:
                raise ValueError("get(out=...) needs a NumPy array of the same shape")
            out[...] = data
            return out
        return numpy.array(data, order=order)

    def item(self) -> Any:
        return self._read(".item()").item()

    def tolist(self) -> Any:
        return self._read(".tolist()").tolist()

    def __float__(self) -> float:
        return float(self._read("float()"))

    def __int__(self) -> int:
        return int(self._read("int()"))

    def __complex__(self) -> complex:
        return complex(self._read("complex()"))

    def __bool__(self) -> bool:
        return bool(self._read("bool()"))

    def __repr__(self) -> str:
        return repr(self._read("repr()"))

    def __str__(self) -> str:
        return str(self._read("str()"))

    def __format__(self, spec: str) -> str:
        return format(self._read("format()"), spec)

    def __array__(self, dtype: Any = None, copy: Any = None) -> numpy.ndarray:
        self._emu.record("refused_read", f"numpy conversion of {self.dtype}{self.shape}")
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed; use .get() (emulated CuPy rule)"
        )

    def set(self, arr: Any, stream: Any = None) -> None:
        """Copy host array ``arr`` (same shape and dtype) into this array (an upload)."""
        if not isinstance(arr, numpy.ndarray):
            raise TypeError(f"set() needs a NumPy array, got {type(arr).__name__}")
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError(
                f"set(): {arr.dtype}{arr.shape} into {self.dtype}{self.shape}: shape and dtype "
                "must match"
            )
        self._emu.record("upload", f".set() of {arr.dtype}{arr.shape} to cupy:{self._device}")
        self._data[...] = arr

    # --- computing --------------------------------------------------------------------------
    def _compute(self, name: str, args: tuple, kwargs: dict) -> Any:
        """A method that launches a kernel on the current device (``sum``, ``argmax``...)."""
        emu = self._emu
        emu.check(self, f"ndarray.{name}")
        if name == "fill":
            value = args[0] if args else kwargs["value"]
            if isinstance(value, numpy.ndarray):
                emu.refuse_host_array("ndarray.fill")
            self._data.fill(_unwrap(value, emu, "ndarray.fill"))
            return None
        args = tuple(_unwrap(a, emu, f"ndarray.{name}") for a in args)
        out = kwargs.get("out")
        kwargs = {k: _unwrap(v, emu, f"ndarray.{name}") for k, v in kwargs.items()}
        data = self._data
        if emu.ftz and name in ("sum", "prod", "max", "min", "mean", "var", "std", "cumsum"):
            data = emu.flush(data)
        result = getattr(data, name)(*args, **kwargs)
        if out is not None:
            out._data[...] = emu.flush(out._data)
            return out
        if name == "nonzero":
            return tuple(emu.wrap(r) for r in result)
        return emu.wrap(emu.flush(result) if name != "argmax" else result)

    def astype(self, dtype: Any, order: str = "K", casting: Any = None, copy: bool = True):
        if not copy and numpy.dtype(dtype) == self.dtype:
            return self  # no copy, no launch
        self._emu.check(self, "ndarray.astype")
        return self._emu.wrap(self._data.astype(dtype, order=order))

    def copy(self, order: str = "C") -> ndarray:
        """A copy on the current device; from another device it is a device-to-device copy."""
        emu = self._emu
        if self._device != emu.current:
            emu.record("cross_device_copy", f"copy from cupy:{self._device} to cupy:{emu.current}")
        return emu.wrap(numpy.array(self._data, order=order))

    def __getitem__(self, key: Any) -> ndarray:
        emu = self._emu
        if _is_basic_index(key):  # a view: no launch, the memory stays where it is
            data = self._data[key]
            if not isinstance(data, numpy.ndarray):  # a full integer index: a 0-d view
                data = self._data[(key if isinstance(key, tuple) else (key,)) + (Ellipsis,)]
            return self._view(data)
        emu.check(self, "advanced indexing")
        return emu.wrap(self._data[_unwrap_index(key, emu)])

    def __setitem__(self, key: Any, value: Any) -> None:
        emu = self._emu
        if isinstance(value, numpy.ndarray):
            emu.refuse_host_array("ndarray.__setitem__")
        target = self[key] if _is_basic_index(key) else None
        if isinstance(value, ndarray) and value._device != emu.current:
            same_layout = (
                target is not None
                and target.shape == value.shape
                and target.strides == value.strides
                and target.dtype == value.dtype
                and target.flags.c_contiguous
            )
            if same_layout and target._device == emu.current:  # a plain memcpy between GPUs
                emu.record("cross_device_copy", f"assignment from cupy:{value._device}")
                target._data[...] = value._data
                return
            emu.check(value, "assignment")
        emu.check(self, "assignment")
        source = value._data if isinstance(value, ndarray) else value
        if _is_basic_index(key):
            self._data[key] = source
        else:
            self._data[_unwrap_index(key, emu)] = source

    # --- the NumPy protocols: every ufunc and function on device arrays ------------------
    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        emu = self._emu
        name = f"{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
        arithmetic = ufunc not in _NON_ARITHMETIC_UFUNCS
        args = []
        for x in inputs:
            if isinstance(x, ndarray):
                emu.check(x, name)
                args.append(emu.flush(x._data) if arithmetic else x._data)
            elif isinstance(x, numpy.ndarray):
                emu.refuse_host_array(name)
            else:
                args.append(x)
        outs = kwargs.get("out")
        if outs is not None:
            for o in outs:
                if not isinstance(o, ndarray):
                    emu.refuse_host_array(f"{name}(out=...)")
                emu.check(o, f"{name}(out=...)")
            kwargs["out"] = tuple(o._data for o in outs)
        result = getattr(ufunc, method)(*args, **kwargs)
        if outs is not None:
            if arithmetic:
                for o in outs:
                    o._data[...] = emu.flush(o._data)
            return outs[0] if len(outs) == 1 else outs
        if result is None:  # ufunc.at
            return None
        if isinstance(result, tuple):
            return tuple(emu.wrap(emu.flush(r) if arithmetic else r) for r in result)
        return emu.wrap(emu.flush(result) if arithmetic else result)

    def __array_function__(self, func: Any, types: Any, args: tuple, kwargs: dict) -> Any:
        emu = self._emu
        name = getattr(func, "__name__", str(func))
        if func in _PLAIN_FUNCTIONS:
            return func(*_strip(args), **_strip(kwargs))
        if func in _VIEW_FUNCTIONS and isinstance(args[0], ndarray):
            return args[0]._view(func(args[0]._data, *args[1:], **kwargs))
        if func in _LIKE_FUNCTIONS:  # only the shape and dtype are read: no device check
            return emu.wrap(func(*_strip(args), **_strip(kwargs)))
        fakes: list[ndarray] = []
        args = _unwrap_tree(args, emu, name, fakes)
        kwargs = _unwrap_tree(kwargs, emu, name, fakes)
        result = func(*args, **kwargs)
        return _wrap_result(result, fakes, emu)


ndarray.__module__ = "cupy"  # gpunn.backend.namespace() maps "cupy" arrays to sys.modules["cupy"]


def _strip(tree: Any) -> Any:
    """The same structure with every emulated array replaced by its data (no checks)."""
    if isinstance(tree, ndarray):
        return tree._data
    if isinstance(tree, (list, tuple)):
        return type(tree)(_strip(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _strip(v) for k, v in tree.items()}
    return tree


def _unwrap(x: Any, emu: Emulation, operation: str) -> Any:
    if isinstance(x, ndarray):
        emu.check(x, operation)
        return x._data
    if isinstance(x, numpy.ndarray):
        emu.refuse_host_array(operation)
    return x


def _unwrap_tree(tree: Any, emu: Emulation, operation: str, fakes: list[ndarray]) -> Any:
    """Checked data for every emulated array in args/kwargs (lists and tuples included)."""
    if isinstance(tree, ndarray):
        emu.check(tree, operation)
        fakes.append(tree)
        return emu.flush(tree._data)
    if isinstance(tree, numpy.ndarray):
        emu.refuse_host_array(operation)
    if isinstance(tree, (list, tuple)):
        return type(tree)(_unwrap_tree(t, emu, operation, fakes) for t in tree)
    if isinstance(tree, dict):
        return {k: _unwrap_tree(v, emu, operation, fakes) for k, v in tree.items()}
    return tree


def _wrap_result(result: Any, fakes: list[ndarray], emu: Emulation) -> Any:
    """Results of a function on device arrays: ``out=`` arrays are returned as given, new arrays
    and scalars (CuPy returns 0-d arrays) land on the current device."""
    for f in fakes:
        if result is f._data:
            return f
    if isinstance(result, (numpy.ndarray, numpy.generic)):
        return emu.wrap(emu.flush(result))
    if isinstance(result, tuple):
        return tuple(_wrap_result(r, fakes, emu) for r in result)
    if isinstance(result, list):
        return [_wrap_result(r, fakes, emu) for r in result]
    return result


def _is_basic_index(key: Any) -> bool:
    """Integers, slices, None and Ellipsis only: NumPy (and CuPy) give a view."""
    parts = key if isinstance(key, tuple) else (key,)
    return all(
        p is None
        or p is Ellipsis
        or isinstance(p, (slice, int, numpy.integer))
        and not isinstance(p, bool)
        for p in parts
    )


def _unwrap_index(key: Any, emu: Emulation) -> Any:
    """An advanced index's arrays: device arrays are checked, host index arrays uploaded."""
    parts = key if isinstance(key, tuple) else (key,)
    out = []
    for p in parts:
        if isinstance(p, ndarray):
            emu.check(p, "advanced indexing")
            out.append(p._data)
        elif isinstance(p, (numpy.ndarray, list)):
            emu.record("upload", "a host index array")
            out.append(numpy.asarray(p))
        else:
            out.append(p)
    return tuple(out) if isinstance(key, tuple) else out[0]


# ==========================================================================================
# cupy.cuda
# ==========================================================================================


class _Device:
    """``cupy.cuda.Device``: a context manager (per-thread stack), ``use``, ``synchronize``."""

    def __init__(self, emulation: Emulation, device: int | None = None) -> None:
        self._emu = emulation
        self.id = emulation.current if device is None else int(device)
        if not 0 <= self.id < emulation.devices:
            raise CUDARuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id}")

    def __enter__(self) -> _Device:
        self._emu._stack().append(self._emu.current)
        self._emu.set_current(self.id)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._emu.set_current(self._emu._stack().pop())

    def use(self) -> _Device:
        self._emu.set_current(self.id)
        return self

    def synchronize(self) -> None:
        self._emu.record("sync", f"Device({self.id}).synchronize()")

    @property
    def compute_capability(self) -> str:
        return str(self._emu.compute_capability)

    @property
    def pci_bus_id(self) -> str:
        return f"0000:{self.id + 1:02x}:00.0"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id} (emulated)>"


class _Stream:
    """The current stream of a device (one per device: the null stream)."""

    ptr = 0

    def __init__(self, emulation: Emulation) -> None:
        self._emu, self.device_id = emulation, emulation.current

    def synchronize(self) -> None:
        self._emu.record("sync", f"stream synchronize on cupy:{self.device_id}")


class _MemoryPool:
    """``cupy.get_default_memory_pool()``: each call acts on the current device's pool."""

    def __init__(self, emulation: Emulation) -> None:
        self._emu = emulation

    def _call(self, name: str) -> None:
        self._emu.pool_calls.append((name, self._emu.current))

    def free_bytes(self) -> int:
        self._call("free_bytes")
        return 0

    def used_bytes(self) -> int:
        self._call("used_bytes")
        return 0

    def total_bytes(self) -> int:
        self._call("total_bytes")
        return 0

    def free_all_blocks(self, stream: Any = None) -> None:
        self._call("free_all_blocks")


def _runtime(emu: Emulation) -> types.SimpleNamespace:
    def device_properties(device: int) -> dict[str, Any]:
        if not 0 <= device < emu.devices:
            raise CUDARuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {device}")
        return {
            "name": f"Emulated GPU {device}".encode(),
            "totalGlobalMem": emu.memory,
            "major": emu.compute_capability // 10,
            "minor": emu.compute_capability % 10,
            "pciBusID": device + 1,
        }

    return types.SimpleNamespace(
        getDevice=lambda: emu.current,
        setDevice=emu.set_current,
        getDeviceCount=lambda: emu.devices,
        memGetInfo=lambda: (emu.memory, emu.memory),
        getDeviceProperties=device_properties,
        runtimeGetVersion=lambda: 13000,
        driverGetVersion=lambda: 13000,
        deviceCanAccessPeer=lambda device, peer: int(emu.peer_access),
        is_hip=False,
        CUDARuntimeError=CUDARuntimeError,
    )


def _nccl(emu: Emulation) -> types.ModuleType:
    """``cupy.cuda.nccl``: a communicator tied to the device current when it was made."""
    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.available = True
    nccl.NCCL_INT32, nccl.NCCL_INT64, nccl.NCCL_FLOAT32, nccl.NCCL_FLOAT64 = 2, 4, 7, 8
    nccl.NCCL_SUM, nccl.NCCL_MAX = 0, 2
    nccl.calls = []  # (call, device current, device of the buffer)

    class NcclCommunicator:
        def __init__(self, ndev: int, uid: Any, rank: int) -> None:
            self.ndev, self.rank, self.device = ndev, rank, emu.current

        def _use(self, call: str, ptr: int) -> numpy.ndarray | None:
            where = emu.pointer_device(ptr)
            nccl.calls.append((call, emu.current, where))
            for what, device in (("the current device", emu.current), ("the buffer", where)):
                if device != self.device:
                    emu.record(
                        "cross_device",
                        f"NCCL {call} of a communicator of cupy:{self.device} with {what} on "
                        f"cupy:{device}",
                    )
            return emu.pointer_data(ptr)

        def allReduce(self, send: int, recv: int, count: int, dtype: int, op: int, stream: int):
            data = self._use("allReduce", recv)
            if data is not None and op == nccl.NCCL_SUM:
                data.reshape(-1)[:count] *= self.ndev  # ndev identical ranks

        def bcast(self, buf: int, count: int, dtype: int, root: int, stream: int) -> None:
            self._use("bcast", buf)

    nccl.NcclCommunicator = NcclCommunicator
    nccl.get_unique_id = lambda: (0,) * 128
    return nccl


# ==========================================================================================
# Kernels: arguments checked, launch recorded, then refused
# ==========================================================================================


def _launch(emu: Emulation, kind: str, name: str, args: tuple) -> None:
    for a in args:
        if isinstance(a, ndarray):
            emu.check(a, f"{kind} {name}")
        elif isinstance(a, numpy.ndarray):
            emu.refuse_host_array(f"{kind} {name}")
    emu.kernel_calls.append((name, emu.current))
    emu.record("kernel_launch", f"{kind} {name} on cupy:{emu.current}")
    raise EmulatedKernelError(
        f"{kind} {name!r}: the device-rule emulation runs no CUDA code (its arguments' devices "
        "were checked)"
    )


def _kernels(emu: Emulation) -> dict[str, Any]:
    class ElementwiseKernel:
        def __init__(
            self,
            in_params: str,
            out_params: str,
            operation: str,
            name: str = "kernel",
            **kwargs: Any,
        ) -> None:
            self.in_params, self.out_params = in_params, out_params
            self.operation, self.name = operation, name

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            _launch(emu, "ElementwiseKernel", self.name, args)

    class RawKernel:
        def __init__(self, code: str, name: str, options: tuple = (), **kwargs: Any) -> None:
            self.code, self.name, self.options = code, name, options

        def __call__(self, grid: tuple, block: tuple, args: tuple, **kwargs: Any) -> None:
            _launch(emu, "RawKernel", self.name, tuple(args))

    class RawModule:
        def __init__(
            self,
            code: str | None = None,
            *,
            path: str | None = None,
            options: tuple = (),
            **kwargs: Any,
        ) -> None:
            self.code, self.options = code, options

        def get_function(self, name: str) -> RawKernel:
            emu.record("get_function", f"RawModule.get_function({name!r})")
            return RawKernel(self.code or "", name, self.options)

    return {"ElementwiseKernel": ElementwiseKernel, "RawKernel": RawKernel, "RawModule": RawModule}


# ==========================================================================================
# Random numbers: a generator belongs to the device it was made on
# ==========================================================================================


class _Generator:
    def __init__(self, emulation: Emulation, seed: Any) -> None:
        self._emu, self._device = emulation, emulation.current
        self._rng = numpy.random.default_rng(seed)  # NumPy's stream, not CuPy's XORWOW

    def _draw(self, name: str, *args: Any, **kwargs: Any) -> ndarray:
        emu = self._emu
        if self._device != emu.current:
            emu.record(
                "cross_device",
                f"Generator.{name} of a generator of cupy:{self._device} on cupy:{emu.current}",
            )
            if not emu.peer_access:
                raise ValueError(
                    f"the generator's state is on device {self._device}, device {emu.current} is "
                    "current (emulated CuPy rule)"
                )
        return emu.wrap(getattr(self._rng, name)(*args, **kwargs))

    def random(self, size: Any = None, dtype: Any = numpy.float64, out: Any = None) -> ndarray:
        return self._draw("random", size, dtype=dtype)

    def standard_normal(self, size: Any = None, dtype: Any = numpy.float64) -> ndarray:
        return self._draw("standard_normal", size, dtype=dtype)

    def uniform(self, low: float = 0.0, high: float = 1.0, size: Any = None) -> ndarray:
        return self._draw("uniform", low, high, size)

    def integers(self, low: int, high: Any = None, size: Any = None, dtype: Any = numpy.int64):
        return self._draw("integers", low, high, size, dtype=dtype)


# ==========================================================================================
# The module
# ==========================================================================================


class _FakeCupyModule(types.ModuleType):
    """The module object: explicit functions, plus every other NumPy name, wrapped."""

    emulation: Emulation

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            value = getattr(numpy, name)
        except AttributeError:
            raise AttributeError(f"the emulated cupy module does not model {name!r}") from None
        if isinstance(value, (type, types.ModuleType)) or not callable(value):
            return value  # dtypes, classes and constants are NumPy's, as in CuPy
        wrapped = _device_function(self.emulation, name, value)
        setattr(self, name, wrapped)  # once per name
        return wrapped


def _device_function(emu: Emulation, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A NumPy function as CuPy has it: device arrays in (through the NumPy protocols), host
    arrays refused, any new array on the current device."""

    def call(*args: Any, **kwargs: Any) -> Any:
        for x in (*args, *kwargs.values()):
            if isinstance(x, numpy.ndarray):
                emu.refuse_host_array(f"cupy.{name}")
        result = func(*args, **kwargs)
        if isinstance(result, ndarray) or result is None:
            return result
        if isinstance(result, (numpy.ndarray, numpy.generic)):
            return emu.wrap(result)
        if isinstance(result, tuple):
            return tuple(emu.wrap(r) if isinstance(r, numpy.ndarray) else r for r in result)
        return result

    call.__name__ = name
    return call


def make_module(
    devices: int = 2,
    *,
    peer_access: bool = False,
    ftz: bool = False,
    nccl: bool = False,
    compute_capability: int = 90,
) -> _FakeCupyModule:
    """A fresh emulated ``cupy`` module (not installed anywhere; see :func:`installed`)."""
    emu = Emulation(
        devices, peer_access=peer_access, ftz=ftz, compute_capability=compute_capability
    )
    cp = _FakeCupyModule("cupy", "CuPy's device rules, emulated on NumPy (gpunn.testing)")
    cp.emulation = emu
    cp.__version__ = "14.2.0+emulated"
    cp.ndarray = ndarray
    cp.float32, cp.float64 = numpy.float32, numpy.float64
    cp.int32, cp.int64, cp.bool_ = numpy.int32, numpy.int64, numpy.bool_

    def asarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: bool = False):
        """Host data is uploaded; a device array stays (same dtype) or is converted on the
        current device; an array of another device is copied here first (as CuPy does)."""
        if isinstance(a, ndarray):
            if a._device != emu.current:
                a = a.copy()
            return a.astype(dtype, copy=False) if dtype is not None else a
        data = numpy.asarray(a, dtype=dtype)
        emu.record("upload", f"asarray of host {data.dtype}{data.shape} to cupy:{emu.current}")
        return emu.wrap(data.copy())

    def array(a: Any, dtype: Any = None, copy: bool = True, **kwargs: Any) -> ndarray:
        if isinstance(a, ndarray) and copy:
            return a.copy().astype(dtype or a.dtype, copy=False)
        return asarray(a, dtype=dtype)

    def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
        a = asarray(a, dtype=dtype)
        if a._data.flags.c_contiguous:
            return a
        emu.check(a, "ascontiguousarray")
        return emu.wrap(numpy.ascontiguousarray(a._data))

    def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None) -> numpy.ndarray:
        if isinstance(a, ndarray):
            return a.get(out=out)
        return numpy.asarray(a)

    def get_array_module(*args: Any) -> Any:
        return cp if any(isinstance(a, ndarray) for a in args) else numpy

    cp.asarray, cp.array, cp.ascontiguousarray = asarray, array, ascontiguousarray
    cp.asnumpy, cp.get_array_module = asnumpy, get_array_module
    pool, pinned_pool = _MemoryPool(emu), _MemoryPool(emu)
    cp.get_default_memory_pool = lambda: pool
    cp.get_default_pinned_memory_pool = lambda: pinned_pool
    cp.is_available = lambda: True
    for name, kernel in _kernels(emu).items():
        setattr(cp, name, kernel)

    # cupy.lib.stride_tricks.as_strided: a view of the same memory, on the array's device
    lib = types.ModuleType("cupy.lib")
    lib.stride_tricks = types.SimpleNamespace(
        as_strided=lambda x, shape=None, strides=None: x._view(
            numpy.lib.stride_tricks.as_strided(x._data, shape, strides)
        )
    )
    cp.lib = lib

    random = types.ModuleType("cupy.random")
    random.default_rng = lambda seed=None: _Generator(emu, seed)
    random.Generator = _Generator
    cp.random = random

    cuda = types.ModuleType("cupy.cuda")
    cuda.Device = lambda device=None: _Device(emu, device)
    cuda.runtime = _runtime(emu)
    cuda.get_current_stream = lambda: _Stream(emu)
    cuda.alloc_pinned_memory = lambda size: bytearray(size)
    cuda.is_available = lambda: True
    cuda.device = types.SimpleNamespace(
        get_device_id=lambda: emu.current, get_cublas_handle=lambda: 1000 + emu.current
    )
    # cupy.cuda.cublas (cupy_backends.cuda.libs.cublas): its math-mode enum has only these two
    # names in CuPy 13 and 14; TF32 is chosen through the compute type instead (cupy._core)
    cuda.cublas = types.SimpleNamespace(
        CUBLAS_DEFAULT_MATH=0,
        CUBLAS_TENSOR_OP_MATH=1,
        setMathMode=lambda handle, mode: None,
        getMathMode=lambda handle: 0,
    )
    if nccl:
        cuda.nccl = _nccl(emu)
    cp.cuda = cuda

    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.set_compute_type, linalg.get_compute_type = emu.set_compute_type, emu.get_compute_type
    for constant in (
        "COMPUTE_TYPE_TBD",
        "COMPUTE_TYPE_DEFAULT",
        "COMPUTE_TYPE_PEDANTIC",
        "COMPUTE_TYPE_FP16",
        "COMPUTE_TYPE_FP32",
        "COMPUTE_TYPE_FP64",
        "COMPUTE_TYPE_BF16",
        "COMPUTE_TYPE_TF32",
    ):
        setattr(linalg, constant, globals()[constant])
    core = types.ModuleType("cupy._core")
    core._routines_linalg = linalg
    core.set_compute_type, core.get_compute_type = emu.set_compute_type, emu.get_compute_type
    cp._core = core
    return cp


@contextlib.contextmanager
def installed(
    devices: int = 2,
    *,
    peer_access: bool = False,
    ftz: bool = False,
    nccl: bool = False,
    compute_capability: int = 90,
) -> Iterator[_FakeCupyModule]:
    """Make a fresh emulation *the* ``cupy`` module for the block (``sys.modules``), with
    gpunn's backend probe and kernel decisions forgotten before and after."""
    from gpunn import backend, kernels

    cp = make_module(
        devices, peer_access=peer_access, ftz=ftz, nccl=nccl, compute_capability=compute_capability
    )
    names = ["cupy", "cupy.cuda", "cupy.random", "cupy._core", "cupy._core._routines_linalg"]
    modules = {
        "cupy": cp,
        "cupy.cuda": cp.cuda,
        "cupy.random": cp.random,
        "cupy._core": cp._core,
        "cupy._core._routines_linalg": cp._core._routines_linalg,
    }
    if nccl:
        names.append("cupy.cuda.nccl")
        modules["cupy.cuda.nccl"] = cp.cuda.nccl
    saved = {name: sys.modules.get(name) for name in names}
    backend._clear_probe_cache()
    kernels.reset()
    try:
        sys.modules.update(modules)
        yield cp
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        backend._clear_probe_cache()
        kernels.reset()
