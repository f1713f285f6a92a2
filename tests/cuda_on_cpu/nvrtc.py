"""Compile GPU kernels exactly as CuPy would, with the real NVRTC, on a machine without a GPU.

Compiled, not run: a kernel that compiles here may still compute the wrong thing (the CUDA shim
checks that) or fail at load or launch time on a GPU (nothing here can check that).

CuPy generates and compiles a kernel's CUDA source on its first launch. Without a GPU that never
happens, so a kernel that NVRTC rejects (a typo, a missing overload, an option NVRTC does not
know) would only show on the first GPU run. This module drives CuPy's *own* code generator and
compiler pipeline up to the NVRTC call and stops right after it, before ``cuModuleLoadData``:

* ``ElementwiseKernel``: the argument descriptors CuPy derives from the arrays at launch
  (``cupy._core._kernel._ArgInfo``: dtype, ndim after dimension reduction, C-contiguity,
  32/64-bit indexing) are built from a :class:`Layout` instead of real arrays; then the kernel's
  own ``ElementwiseKernel._get_elementwise_kernel(dev_id, arginfos, type_map)`` runs, i.e. the
  very method ``__call__`` uses: source generation, ``compile_with_cache``, CuPy's options.
* ``RawModule``: ``RawModule.compile()`` runs as is.

Only the steps that need a device are replaced, for the duration of :func:`cupy_compiler`:

=============================================  ===============================================
replaced (``cupy.cuda.compiler`` unless noted)  why, and with what
=============================================  ===============================================
``_get_arch``                                    reads the device's compute capability: returns
                                                 the requested arch instead
``_get_arch_for_options_for_nvrtc``,             per-device memoization calls
``_get_max_compute_capability``,                 ``cudaGetDevice``: the undecorated functions
``cupy._core._kernel._get_elementwise_kernel``,  (``__wrapped__``, set by ``functools.wraps`` in
``cupy._core.raw._get_raw_module``               ``cupy._util.memoize``) run instead
``_NVRTCProgram``                                a subclass whose ``compile`` runs CuPy's own and
                                                 then raises :class:`_Compiled` with the result,
                                                 so nothing is loaded onto a (missing) device
``nvrtc``, ``_nvrtc_version``                    only for another NVRTC than CuPy's: a ctypes
                                                 binding (:class:`CtypesNvrtc`) of the same API
``_use_ptx``                                     only with ``ptx=True``: what CuPy's variable
                                                 ``CUPY_COMPILE_WITH_PTX=1`` sets at import
``CUPY_CACHE_IN_MEMORY=1`` (environment)         no kernel-cache reads or writes on disk
=============================================  ===============================================

Everything else (the generated source, ``-ftz=true``, ``--std=c++17``, the include paths,
``-arch=sm_XX`` vs ``compute_XX``, ``--device-as-default-execution-space``) is CuPy's code
deciding, so the result follows the installed CuPy. Tested with CuPy 14.2 (cupy-cuda13x) and
13.6 (cupy-cuda12x); the private names used exist in CuPy 13.0 through 14.2 with the same
signatures (``_ArgInfo``, ``_ArgKind``, ``ElementwiseKernel._decide_params_type`` and
``_get_elementwise_kernel``, ``_get_elementwise_kernel_code``, ``raw._get_raw_module``,
``compiler._get_arch``/``_NVRTCProgram``/``nvrtc``/``_nvrtc_version``/``_use_ptx``). If a
future CuPy renames one, the failure is loud (``AttributeError``, or "returned without
compiling"), never a silent pass.

Version differences handled: CuPy 13 records a dtype's scalar type in ``_ArgInfo`` where 14
records the dtype (:func:`_type_key`); CuPy 13 ``dlopen``s ``libnvrtc.so.12`` by name, which
finds a pip wheel's copy only once it is loaded (:func:`cupy_nvrtc`).

Environment: ``GPUNN_NVRTC12`` / ``GPUNN_NVRTC13``: the path of a ``libnvrtc.so.12`` / ``.13``
to use instead of the ``nvidia-cuda-nvrtc-cu12`` / ``nvidia-cuda-nvrtc`` wheels.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cupy
import numpy
from cupy._core import _carray, _kernel, _scalar
from cupy._core import raw as _raw
from cupy.cuda import compiler as _compiler

CUPY_MAJOR = int(cupy.__version__.split(".")[0])

#: CuPy's ``_ArgKind`` enum (``cupy/_core/_kernel.pxd``; same values in 13.x and 14.x)
ARG_KIND_NDARRAY, ARG_KIND_INDEXER, ARG_KIND_SCALAR = 1, 2, 3

#: architectures checked by default: A100 (sm_80) and H100/H200 (sm_90)
DEFAULT_ARCHS = ("80", "90")

#: the NVRTC binding CuPy imported (``cupy_backends.cuda.libs.nvrtc``), before any patching
_CUPY_BINDING = _compiler.nvrtc


# ------------------------------------------------------------------------------------------
# NVRTC libraries
# ------------------------------------------------------------------------------------------


class NVRTCError(RuntimeError):
    """An NVRTC call failed (the ctypes binding's counterpart of CuPy's ``nvrtc.NVRTCError``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} ({status})")
        self.status = status


class CtypesNvrtc:
    """A ctypes binding of one ``libnvrtc.so`` with the Python API of CuPy's binding.

    ``cupy.cuda.compiler`` calls NVRTC only through the module object it imported as ``nvrtc``
    (``cupy_backends.cuda.libs.nvrtc``), using the functions below. An instance of this class
    stands in for that module, so CuPy's compiler drives a *different* NVRTC (e.g. CUDA 12's
    from cupy-cuda13x) with the same source and options. Thin wrappers of the C API only.
    """

    NVRTCError = NVRTCError

    def __init__(self, path: str) -> None:
        self.path = path
        # NVRTC dlopens libnvrtc-builtins.so.<major.minor> by name; some wheels' libnvrtc has
        # no RPATH (13.0), so load the one beside it first: dlopen then finds it by soname
        for builtins in glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so.*")):
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
        self._lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        lib = self._lib
        p, sz, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
        signatures: dict[str, list[Any]] = {
            "nvrtcVersion": [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)],
            "nvrtcCreateProgram": [
                ctypes.POINTER(p),
                cp,
                cp,
                ctypes.c_int,
                ctypes.POINTER(cp),
                ctypes.POINTER(cp),
            ],
            "nvrtcDestroyProgram": [ctypes.POINTER(p)],
            "nvrtcCompileProgram": [p, ctypes.c_int, ctypes.POINTER(cp)],
            "nvrtcGetPTXSize": [p, ctypes.POINTER(sz)],
            "nvrtcGetPTX": [p, ctypes.c_char_p],
            "nvrtcGetCUBINSize": [p, ctypes.POINTER(sz)],
            "nvrtcGetCUBIN": [p, ctypes.c_char_p],
            "nvrtcGetLTOIRSize": [p, ctypes.POINTER(sz)],
            "nvrtcGetLTOIR": [p, ctypes.c_char_p],
            "nvrtcGetProgramLogSize": [p, ctypes.POINTER(sz)],
            "nvrtcGetProgramLog": [p, ctypes.c_char_p],
            "nvrtcAddNameExpression": [p, cp],
            "nvrtcGetLoweredName": [p, cp, ctypes.POINTER(cp)],
        }
        for name, argtypes in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        lib.nvrtcGetErrorString.argtypes, lib.nvrtcGetErrorString.restype = [ctypes.c_int], cp

    def _check(self, status: int) -> None:
        if status != 0:
            raise NVRTCError(status, self._lib.nvrtcGetErrorString(status).decode())

    def getVersion(self) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self._lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)))
        return major.value, minor.value

    def createProgram(
        self, src: str, name: str, headers: Sequence[bytes], include_names: Sequence[bytes]
    ) -> int:
        prog = ctypes.c_void_p()
        n = len(headers)
        hdrs = (ctypes.c_char_p * n)(*headers) if n else None
        names = (ctypes.c_char_p * n)(*include_names) if n else None
        self._check(
            self._lib.nvrtcCreateProgram(
                ctypes.byref(prog), src.encode(), name.encode() or None, n, hdrs, names
            )
        )
        return prog.value or 0

    def destroyProgram(self, prog: int) -> None:
        self._check(self._lib.nvrtcDestroyProgram(ctypes.byref(ctypes.c_void_p(prog))))

    def compileProgram(self, prog: int, options: Sequence[str]) -> None:
        opts = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        self._check(self._lib.nvrtcCompileProgram(prog, len(options), opts))

    def _get(self, what: str, prog: int) -> bytes:
        size = ctypes.c_size_t()
        self._check(getattr(self._lib, f"nvrtcGet{what}Size")(prog, ctypes.byref(size)))
        buf = ctypes.create_string_buffer(size.value)
        self._check(getattr(self._lib, f"nvrtcGet{what}")(prog, buf))
        return buf.raw

    def getPTX(self, prog: int) -> bytes:
        return self._get("PTX", prog).rstrip(b"\0")

    def getCUBIN(self, prog: int) -> bytes:
        return self._get("CUBIN", prog)

    def getLTOIR(self, prog: int) -> bytes:
        return self._get("LTOIR", prog)

    getNVVM = getLTOIR  # CuPy 13's name for it

    def getProgramLog(self, prog: int) -> str:
        return self._get("ProgramLog", prog).rstrip(b"\0").decode("utf-8", "replace")

    def addNameExpression(self, prog: int, name: str) -> None:
        self._check(self._lib.nvrtcAddNameExpression(prog, name.encode()))

    def getLoweredName(self, prog: int, name: str) -> str:
        lowered = ctypes.c_char_p()
        self._check(self._lib.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(lowered)))
        return (lowered.value or b"").decode()


@dataclass(frozen=True)
class Nvrtc:
    """One NVRTC library to compile with.

    ``path=None`` is the NVRTC CuPy itself loaded (``cupy_backends.cuda.libs.nvrtc``; for
    cupy-cuda13x a CUDA 13 one, found by ``cuda.pathfinder``). A path is loaded with ctypes.
    """

    label: str
    path: str | None = None

    @property
    def binding(self) -> Any:
        """The object ``cupy.cuda.compiler`` will call as ``nvrtc``."""
        return _CUPY_BINDING if self.path is None else _ctypes_binding(self.path)

    @property
    def version(self) -> tuple[int, int]:
        return tuple(self.binding.getVersion())  # type: ignore[return-value]

    def __str__(self) -> str:
        major, minor = self.version
        return f"{self.label} (NVRTC {major}.{minor})"


_BINDINGS: dict[str, CtypesNvrtc] = {}


def _ctypes_binding(path: str) -> CtypesNvrtc:
    if path not in _BINDINGS:
        _BINDINGS[path] = CtypesNvrtc(path)
    return _BINDINGS[path]


def cupy_nvrtc() -> Nvrtc:
    """The NVRTC CuPy uses (the one a GPU run of this CuPy would compile with).

    CuPy 14 finds it with ``cuda.pathfinder`` (pip wheels included); CuPy 13 dlopens
    ``libnvrtc.so.<major>`` by name, which fails when it is only in a pip wheel: then the
    wheel's library (:func:`find_nvrtc`) is loaded first, so that CuPy's dlopen finds it.
    """
    try:
        major, _ = _CUPY_BINDING.getVersion()
    except RuntimeError:
        cuda_major = cupy.cuda.runtime.runtimeGetVersion() // 1000  # no device needed
        path = find_nvrtc(cuda_major)
        if path is None:
            raise
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        major, _ = _CUPY_BINDING.getVersion()
    return Nvrtc(f"cuda{major}")


def find_nvrtc(major: int) -> str | None:
    """Path of ``libnvrtc.so.<major>``, or None.

    Looked for, in order: ``$GPUNN_NVRTC<major>`` (a file path); the pip wheels on ``sys.path``
    (``nvidia-cuda-nvrtc-cu12``: ``nvidia/cuda_nvrtc/lib``; ``nvidia-cuda-nvrtc`` 13.x:
    ``nvidia/cu13/lib``); ``$CUDA_PATH/lib64`` (a CUDA toolkit of that major version).
    """
    env = os.environ.get(f"GPUNN_NVRTC{major}")
    if env:
        return env if os.path.isfile(env) else None
    name = f"libnvrtc.so.{major}"
    roots = [os.path.join(p, "nvidia", "*", "lib") for p in sys.path if p]
    if os.environ.get("CUDA_PATH"):
        roots.append(os.path.join(os.environ["CUDA_PATH"], "lib64"))
    for root in roots:
        hits = sorted(glob.glob(os.path.join(root, name)))
        if hits:
            return hits[-1]
    return None


def nvrtc_for(major: int) -> Nvrtc | None:
    """An :class:`Nvrtc` of the given CUDA major version: CuPy's own if it matches, else ctypes
    on :func:`find_nvrtc`'s library; None when there is none."""
    if cupy_nvrtc().version[0] == major:
        return cupy_nvrtc()
    path = find_nvrtc(major)
    return Nvrtc(f"cuda{major}", path) if path else None


@dataclass(frozen=True)
class Target:
    """A GPU architecture and the NVRTC to compile for it with."""

    arch: str  # "90" for sm_90
    nvrtc: Nvrtc

    def __str__(self) -> str:
        return f"sm_{self.arch}-{self.nvrtc.label}"


#: the CUDA majors the wheels of each CuPy major are built for (cupy-cudaXXx), newest first:
#: a CUDA 12 check under cupy-cuda13x stands for cupy-cuda12x of the same CuPy version
CUDA_MAJORS = {14: (13, 12), 13: (12,)}


def find_targets(
    archs: Iterable[str] = DEFAULT_ARCHS, majors: Iterable[int] | None = None
) -> tuple[list[Target], list[str]]:
    """The targets whose NVRTC is installed, and one line per CUDA major that is missing.

    ``majors`` defaults to the CUDA majors this CuPy version supports (:data:`CUDA_MAJORS`).
    """
    targets, missing = [], []
    archs = list(archs)
    if majors is None:
        majors = CUDA_MAJORS.get(CUPY_MAJOR, (cupy_nvrtc().version[0],))
    for major in majors:
        nvrtc = nvrtc_for(major)
        if nvrtc is None:
            wheel = "nvidia-cuda-nvrtc" + ("-cu12" if major == 12 else "")  # 13.x: no suffix
            missing.append(f"no libnvrtc.so.{major}: install {wheel} or set GPUNN_NVRTC{major}")
            continue
        targets += [Target(arch, nvrtc) for arch in archs]
    return targets, missing


# ------------------------------------------------------------------------------------------
# Running CuPy's compiler without a device
# ------------------------------------------------------------------------------------------


class _Compiled(Exception):
    """Raised by :class:`_StopAfterNvrtc` once NVRTC succeeded, before CuPy loads the module."""

    def __init__(
        self, source: str, options: tuple[str, ...], binary: bytes, log: str, seconds: float
    ) -> None:
        super().__init__("compiled")
        self.source, self.options, self.binary, self.log = source, options, binary, log
        self.seconds = seconds  # in nvrtcCompileProgram and the result getters


class _StopAfterNvrtc(_compiler._NVRTCProgram):  # type: ignore[misc,name-defined]
    """CuPy's NVRTC program, whose ``compile`` hands the result out instead of returning it.

    ``_compile_with_cache_cuda`` first compiles an *empty* program to read the compiler's
    version into its cache key (``_preprocess('', ...)``): that one is let through.
    """

    def compile(self, options: tuple[str, ...] = (), log_stream: Any = None) -> Any:
        if not self.src:
            return super().compile(options, log_stream)
        log = io.StringIO()
        start = time.perf_counter()
        binary, _ = super().compile(options, log)  # CompileException on failure: propagates
        seconds = time.perf_counter() - start
        raise _Compiled(self.src, tuple(options), binary, log.getvalue(), seconds)


#: memoized with ``cupy._util.memoize(for_each_device=True)``, whose cache key calls
#: cudaGetDevice (or, for the NVRTC limit, memoized once per process although the NVRTC may
#: change here): replaced by the functions they wrap while compiling
_UNMEMOIZE = (
    (_compiler, "_get_arch_for_options_for_nvrtc"),
    (_compiler, "_get_max_compute_capability"),
    (_kernel, "_get_elementwise_kernel"),
    (_raw, "_get_raw_module"),
)

_PATCH_LOCK = threading.RLock()


@contextlib.contextmanager
def cupy_compiler(arch: str, nvrtc: Nvrtc | None = None, ptx: bool = False) -> Iterator[None]:
    """Within this block CuPy compiles for ``arch`` (e.g. "90") with ``nvrtc``, and raises
    :class:`_Compiled` instead of loading the result (see the module docstring).

    ``ptx=True`` has CuPy compile to PTX (``-arch=compute_XX``) as with its environment
    variable ``CUPY_COMPILE_WITH_PTX=1``, which it reads once, at import, into ``_use_ptx``.

    The patches are process-wide: other threads must not use CuPy meanwhile (a lock keeps
    two blocks from overlapping; threads started inside the block may compile).
    """
    nvrtc = nvrtc or cupy_nvrtc()
    with _PATCH_LOCK:
        saved_env = os.environ.get("CUPY_CACHE_IN_MEMORY")
        patches: list[tuple[Any, str, Any]] = [
            (module, name, _unmemoized(module, name)) for module, name in _UNMEMOIZE
        ]
        patches += [
            (_compiler, "_get_arch", lambda: arch),  # normally the device's compute capability
            (_compiler, "_NVRTCProgram", _StopAfterNvrtc),
            (_compiler, "nvrtc", nvrtc.binding),
            (_compiler, "_nvrtc_version", None),  # re-read from the NVRTC in use
            (_compiler, "_use_ptx", ptx),
        ]
        originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
        try:
            os.environ["CUPY_CACHE_IN_MEMORY"] = "1"
            for obj, name, value in patches:
                setattr(obj, name, value)
            yield
        finally:
            for obj, name, value in originals:
                setattr(obj, name, value)
            if saved_env is None:
                os.environ.pop("CUPY_CACHE_IN_MEMORY", None)
            else:
                os.environ["CUPY_CACHE_IN_MEMORY"] = saved_env


def _unmemoized(module: Any, name: str) -> Any:
    """The function under ``cupy._util.memoize`` (``functools.wraps`` sets ``__wrapped__``)."""
    fn = getattr(module, name)
    return getattr(fn, "__wrapped__", fn)


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompileResult:
    """The outcome of one compilation."""

    kernel: str  # the kernel (ElementwiseKernel name, or RawModule label)
    variant: str  # "float32/contiguous" for elementwise kernels, "" for modules
    arch: str
    nvrtc: str  # e.g. "cuda13 (NVRTC 13.5)"
    ok: bool
    log: str  # NVRTC's log: the errors on failure, warnings (often empty) on success
    options: tuple[str, ...]  # exactly what CuPy passed to nvrtcCompileProgram
    source: str  # exactly what CuPy passed to nvrtcCreateProgram
    binary: bytes = field(repr=False, default=b"")  # cubin (sm_XX) or PTX (compute_XX)
    seconds: float = 0.0  # wall time of the whole CuPy pipeline for this kernel
    nvrtc_seconds: float = 0.0  # of which in NVRTC (0 on failure)

    @property
    def target(self) -> str:
        return f"sm_{self.arch} {self.nvrtc}"

    def has_symbol(self, name: str) -> bool:
        """Whether the cubin/PTX defines ``name`` (what ``Module.get_function(name)`` looks up)."""
        return (b"\0" + name.encode() + b"\0") in self.binary or (
            f".entry {name}(".encode() in self.binary
        )

    def summary(self) -> str:
        status = "ok" if self.ok else "FAILED"
        what = f"{self.kernel}[{self.variant}]" if self.variant else self.kernel
        text = f"{status:6} {what:60} sm_{self.arch} {self.nvrtc:22} {self.seconds * 1e3:7.0f} ms"
        if not self.ok:
            text += "\n" + "\n".join("    " + line for line in self.log.strip().splitlines())
        return text


def _run(
    kernel: str, variant: str, arch: str, nvrtc: Nvrtc, compile_fn: Callable[[], object]
) -> CompileResult:
    """Run ``compile_fn`` (inside a :func:`cupy_compiler` block) and record what happened."""
    start = time.perf_counter()
    try:
        compile_fn()
    except _Compiled as done:
        return CompileResult(
            kernel, variant, arch, str(nvrtc), True, done.log, done.options, done.source,
            done.binary, time.perf_counter() - start, done.seconds,
        )  # fmt: skip
    except _compiler.CompileException as exc:
        return CompileResult(
            kernel, variant, arch, str(nvrtc), False, str(exc), tuple(exc.options), exc.source,
            b"", time.perf_counter() - start,
        )  # fmt: skip
    raise RuntimeError(f"{kernel}: CuPy returned without compiling (a cached module?)")


# ------------------------------------------------------------------------------------------
# ElementwiseKernel
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How the array arguments of one ElementwiseKernel launch look *to CuPy's code generator*.

    At launch CuPy broadcasts the arrays, merges dimensions that are contiguous in every
    array (``_reduce_dims``), and records per array ``(dtype, ndim, c_contiguous,
    index_32_bits)`` plus ``(ndim, index_32_bits)`` of the loop indexer (``_ArgInfo``). These
    are template arguments (``CArray<T, ndim, c_contiguous, use_32bit>``,
    ``CIndexer<ndim, use_32bit>``) and the kernel cache key: every distinct combination is a
    separate compilation. A Layout names one combination.
    """

    name: str
    ndim: int  # of every array and of the indexer, after CuPy's dimension reduction
    contiguous_inputs: bool  # C-contiguity of the input arrays ...
    contiguous_outputs: bool  # ... and of the output arrays
    index_32_bits: bool  # ndarray._index_32_bits of every array
    indexer_32_bits: bool  # Indexer._index_32_bits (loop size <= 2**31)
    broadcast_last_input: bool = False  # the last array input is a broadcast (strided) view
    description: str = ""


#: the layouts checked for every kernel. When CuPy 14.2 produces each (its ``_reduced_view_core``,
#: ``ndarray._index_32_bits`` = max(extent, size * itemsize) <= 2**31, ``Indexer._index_32_bits``
#: = size <= 2**31): contiguous, when every array is C-contiguous and of one shape (merged to
#: 1-D); broadcast, a bias row over (N, C) (stride 0: not contiguous, ndim stays 2); strided,
#: views such as ``x[:, ::2]`` or ``x.T``; large, arrays over 2 GiB with < 2**31 elements; huge,
#: more than 2**31 elements; huge_strided, views of those. A view keeps its base's 64-bit
#: indexing, so every per-layer view of a flat parameter buffer over 2 GiB uses large.
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "contiguous", 1, True, True, True, True,
            description="same-shape C-contiguous arrays: CuPy merges them into 1-D",
        ),
        Layout(
            "broadcast", 2, True, True, True, True, broadcast_last_input=True,
            description="z (N, C) with a bias row b (C,): b is a stride-0 view, ndim stays 2",
        ),
        Layout(
            "strided", 2, False, False, True, True,
            description="non-contiguous views (x[:, ::2], x.T): ndim 2, no C-contiguity",
        ),
        Layout(
            "large", 1, True, True, False, True,
            description="arrays over 2 GiB (ndarray._index_32_bits false), < 2**31 elements",
        ),
        Layout(
            "huge", 1, True, True, False, False,
            description="over 2**31 elements: 64-bit array and loop indices",
        ),
        Layout(
            "huge_strided", 2, False, False, False, False,
            description="non-contiguous views of arrays over 2**31 elements",
        ),
    )
}  # fmt: skip


def as_kernel(src: Any) -> Any:
    """A ``cupy.ElementwiseKernel`` for ``src``: the kernel itself, or one built from an object
    with ``name``, ``in_params``, ``out_params``, ``operation`` (gpunn's ``Elementwise``) the
    way gpunn builds it: ``ElementwiseKernel(in_params, out_params, operation, name)``."""
    if isinstance(src, cupy.ElementwiseKernel):
        return src
    return cupy.ElementwiseKernel(src.in_params, src.out_params, src.operation, src.name)


def _type_key(dtype: numpy.dtype) -> Any:
    """How CuPy records a dtype in ``_ArgInfo``/``_decide_params_type``: the dtype (14.x) or
    its scalar type (13.x: ``arr.dtype.type``, ``CScalar.get_numpy_type()``)."""
    return dtype if CUPY_MAJOR >= 14 else dtype.type


def elementwise_arginfos(
    src: Any, dtype: str, layout: Layout | str, scalars: Iterable[str] = ()
) -> tuple[Any, tuple[Any, ...], Any]:
    """``(kernel, arginfos, type_map)`` as ``ElementwiseKernel.__call__`` would compute them.

    ``dtype`` is the dtype of every ``T`` array; parameters named in ``scalars`` are passed
    Python/NumPy scalars (``in_params`` only), every other parameter an array. The type map
    comes from the kernel's own ``_decide_params_type`` (CuPy's type resolution, which also
    raises CuPy's "Type is mismatched" errors).
    """
    kernel = as_kernel(src)
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    scalar_names = set(scalars)
    unknown = scalar_names - {p.name for p in kernel.in_params}
    if unknown:
        raise ValueError(f"{kernel.name}: no input parameter(s) {sorted(unknown)}")
    t = numpy.dtype(dtype)

    def array_dtype(p: Any) -> numpy.dtype:
        return t if p.dtype is None else numpy.dtype(p.dtype)

    in_dtypes = tuple(
        None if p.name in scalar_names else _type_key(array_dtype(p)) for p in kernel.in_params
    )
    out_dtypes = tuple(_type_key(array_dtype(p)) for p in kernel.out_params)
    in_types, _, type_map = kernel._decide_params_type(in_dtypes, out_dtypes)

    array_inputs = [p.name for p in kernel.in_params if p.name not in scalar_names]
    last_input = array_inputs[-1] if array_inputs else None
    infos = []
    for p, in_type in zip(kernel.in_params, in_types, strict=True):
        if p.name in scalar_names:  # CScalar after apply_dtype(in_types[i])
            infos.append(
                _kernel._ArgInfo(
                    ARG_KIND_SCALAR, _scalar.CScalar, _type_key(numpy.dtype(in_type)), 0, True, True
                )
            )
            continue
        contiguous = layout.contiguous_inputs
        if layout.broadcast_last_input and p.name == last_input:
            contiguous = False
        infos.append(_array_info(array_dtype(p), layout, contiguous))
    for p in kernel.out_params:
        infos.append(_array_info(array_dtype(p), layout, layout.contiguous_outputs))
    infos.append(
        _kernel._ArgInfo(
            ARG_KIND_INDEXER, _carray.Indexer, None, layout.ndim, True, layout.indexer_32_bits
        )
    )
    return kernel, tuple(infos), type_map


def _array_info(dtype: numpy.dtype, layout: Layout, contiguous: bool) -> Any:
    return _kernel._ArgInfo(
        ARG_KIND_NDARRAY, cupy.ndarray, _type_key(dtype), layout.ndim, contiguous,
        layout.index_32_bits,
    )  # fmt: skip


def elementwise_source(
    src: Any, dtype: str, layout: Layout | str = "contiguous", scalars: Iterable[str] = ()
) -> str:
    """The CUDA source CuPy generates for ``src`` (before it prepends its ``#include`` lines).

    Uses ``cupy._core._kernel._get_elementwise_kernel_code``, the generator
    ``ElementwiseKernel`` itself calls; the source NVRTC actually receives (with the includes)
    is :attr:`CompileResult.source` of :func:`compile_elementwise`.
    """
    kernel, arginfos, type_map = elementwise_arginfos(src, dtype, layout, scalars)
    return _kernel._get_elementwise_kernel_code(
        arginfos, type_map, kernel.params, kernel.operation, kernel.name, kernel.preamble,
        **kernel.kwargs,
    )  # fmt: skip


def compile_elementwise(
    src: Any,
    dtype: str,
    layout: Layout | str = "contiguous",
    arch: str = "90",
    nvrtc: Nvrtc | None = None,
    scalars: Iterable[str] = (),
    ptx: bool = False,
) -> CompileResult:
    """Compile ``src`` as its first launch with ``dtype`` arrays in ``layout`` would.

    Calls ``kernel._get_elementwise_kernel(0, arginfos, type_map)``, the method
    ``ElementwiseKernel.__call__`` uses, inside :func:`cupy_compiler`.
    """
    nvrtc = nvrtc or cupy_nvrtc()
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    kernel, arginfos, type_map = elementwise_arginfos(src, dtype, layout, scalars)
    with cupy_compiler(arch, nvrtc, ptx):
        return _compile_elementwise_in_block(kernel, arginfos, type_map, dtype, layout, arch, nvrtc)


def _compile_elementwise_in_block(
    kernel: Any, arginfos: Any, type_map: Any, dtype: str, layout: Layout, arch: str, nvrtc: Nvrtc
) -> CompileResult:
    return _run(
        kernel.name,
        f"{dtype}/{layout.name}",
        arch,
        nvrtc,
        lambda: kernel._get_elementwise_kernel(0, arginfos, type_map),
    )


# ------------------------------------------------------------------------------------------
# RawModule
# ------------------------------------------------------------------------------------------


def compile_raw_module(
    code: str,
    options: tuple[str, ...] = (),
    arch: str = "90",
    nvrtc: Nvrtc | None = None,
    name: str = "RawModule",
    ptx: bool = False,
    **raw_module_kwargs: Any,
) -> CompileResult:
    """Compile ``cupy.RawModule(code=code, options=options, **raw_module_kwargs)`` with
    ``RawModule.compile()``, exactly as its first ``get_function`` would."""
    nvrtc = nvrtc or cupy_nvrtc()
    module = cupy.RawModule(code=code, options=tuple(options), **raw_module_kwargs)
    with cupy_compiler(arch, nvrtc, ptx):
        return _run(name, "", arch, nvrtc, module.compile)


# ------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElementwiseJob:
    """One ElementwiseKernel source with the names of its scalar parameters."""

    src: Any  # gpunn Elementwise or cupy.ElementwiseKernel
    scalars: tuple[str, ...] = ()


#: one compilation of a batch: (job, dtype, layout name)
BatchItem = tuple[ElementwiseJob, str, str]


def matrix(
    jobs: Iterable[ElementwiseJob], dtypes: Iterable[str], layouts: Iterable[str]
) -> list[BatchItem]:
    """Every job x dtype x layout."""
    dtypes, layouts = list(dtypes), list(layouts)
    return [(job, d, lay) for job in jobs for d in dtypes for lay in layouts]


def compile_elementwise_batch(
    items: Sequence[BatchItem], arch: str, nvrtc: Nvrtc | None = None, workers: int = 2
) -> list[CompileResult]:
    """Compile every item for one (arch, NVRTC), ``workers`` compilations at a time.

    NVRTC runs without the GIL (CuPy's binding and ctypes both release it) and is thread-safe
    for distinct programs, so threads use several cores. Results come in input order.
    """
    nvrtc = nvrtc or cupy_nvrtc()
    prepared = []
    for job, dtype, name in items:
        kernel, arginfos, type_map = elementwise_arginfos(job.src, dtype, name, job.scalars)
        prepared.append((kernel, arginfos, type_map, dtype, LAYOUTS[name]))

    def one(p: tuple[Any, Any, Any, str, Layout]) -> CompileResult:
        return _compile_elementwise_in_block(*p, arch, nvrtc)

    with cupy_compiler(arch, nvrtc):
        if workers <= 1:
            return [one(p) for p in prepared]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, prepared))


def format_results(results: Sequence[CompileResult]) -> str:
    """One line per compilation (failures with their NVRTC log) and a timing summary."""
    lines = [r.summary() for r in results]
    failed = sum(not r.ok for r in results)
    total = sum(r.seconds for r in results)
    lines.append(
        f"{len(results)} compilations, {failed} failed; per compilation (wall, CuPy + NVRTC) "
        f"{total / max(len(results), 1) * 1e3:.0f} ms on average, {total:.1f} s in all"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# How code calls its kernels: a recording array module
# ------------------------------------------------------------------------------------------


@dataclass
class KernelCall:
    """One call of an ElementwiseKernel made through :class:`RecordingXp`."""

    kernel: Any  # the cupy.ElementwiseKernel (constructed, never launched)
    args: tuple[Any, ...]  # NumPy arrays and scalars, as passed

    @property
    def scalar_params(self) -> tuple[str, ...]:
        """Names of the input parameters that were given a scalar, not an array."""
        return tuple(
            p.name
            for p, a in zip(self.kernel.in_params, self.args, strict=False)
            if not isinstance(a, numpy.ndarray)
        )


@dataclass
class RawModuleUse:
    """One ``xp.RawModule(...)`` construction and the functions taken from it."""

    kwargs: dict[str, Any]
    functions: list[str] = field(default_factory=list)


class RecordingXp:
    """A stand-in for the ``cupy`` module that runs on NumPy and records kernel use.

    ``ElementwiseKernel`` returns a real ``cupy.ElementwiseKernel`` wrapped so that a call
    records its arguments, checks them with CuPy's own ``_decide_params_type`` (argument count
    and dtypes, as a launch would) and returns zero-filled NumPy outputs. ``RawModule`` records
    its arguments and the names passed to ``get_function``. Every other attribute is NumPy's.
    Use it to learn which parameters code passes scalars to, and what a RawModule is built
    with, by running that code (e.g. a self-check probe) on the CPU.
    """

    _count = 0

    def __init__(self) -> None:
        # a distinct name per instance, for code that caches kernels per ``xp.__name__``
        RecordingXp._count += 1
        self.__name__ = f"recording_xp_{RecordingXp._count}"
        self.calls: list[KernelCall] = []
        self.raw_modules: list[RawModuleUse] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(numpy, name)

    def ElementwiseKernel(self, *args: Any, **kwargs: Any) -> Any:
        kernel = cupy.ElementwiseKernel(*args, **kwargs)

        def call(*call_args: Any) -> Any:
            return self._call(kernel, call_args)

        return call

    def _call(self, kernel: Any, args: tuple[Any, ...]) -> Any:
        if len(args) not in (kernel.nin, kernel.nargs):
            raise TypeError(
                f"{kernel.name}: {len(args)} arguments, not {kernel.nin} or {kernel.nargs}"
            )
        self.calls.append(KernelCall(kernel, args))
        ins, outs = args[: kernel.nin], args[kernel.nin :]

        def key(a: Any) -> Any:
            return _type_key(a.dtype) if isinstance(a, numpy.ndarray) else None

        _, out_types, _ = kernel._decide_params_type(
            tuple(key(a) for a in ins), tuple(key(a) for a in outs)
        )
        if outs:
            return outs[0] if kernel.nout == 1 else tuple(outs)
        shape = numpy.broadcast_shapes(*(a.shape for a in ins if isinstance(a, numpy.ndarray)))
        new = tuple(numpy.zeros(shape, dtype=t) for t in out_types)
        return new[0] if kernel.nout == 1 else new

    def RawModule(self, **kwargs: Any) -> Any:
        use = RawModuleUse(kwargs)
        self.raw_modules.append(use)
        return _RecordingRawModule(use)


class _RecordingRawModule:
    def __init__(self, use: RawModuleUse) -> None:
        self._use = use

    def get_function(self, name: str) -> Callable[..., None]:
        self._use.functions.append(name)
        return lambda grid, block, args, **kwargs: None


def fake_array(shape: tuple[int, ...], dtype: str, strides: tuple[int, ...] | None = None) -> Any:
    """A ``cupy.ndarray`` over no memory (a made-up device pointer), for reading the flags
    CuPy computes for an array (``_c_contiguous``, ``_index_32_bits``, views, broadcasting)
    without a GPU. Never pass it to a kernel or read its data."""
    dt = numpy.dtype(dtype)
    nbytes = int(numpy.prod(shape, dtype=numpy.int64)) * dt.itemsize
    memory = cupy.cuda.memory.UnownedMemory(0x10000000, nbytes, None, device_id=0)
    return cupy.ndarray(shape, dt, memptr=cupy.cuda.MemoryPointer(memory, 0), strides=strides)


# ------------------------------------------------------------------------------------------
# gpunn's kernels
# ------------------------------------------------------------------------------------------


def gpunn_usage() -> RecordingXp:
    """Every kernel use made by gpunn's fused-kernel wrappers while they run their self-check
    probes, on NumPy (:class:`RecordingXp`): what a GPU's first launches would compile."""
    import gpunn.kernels as gk

    xp = RecordingXp()
    for name in gk.NAMES:
        spec = gk.spec(name)
        spec.probe(spec.build_fused(xp), xp)
    return xp


def gpunn_jobs(usage: RecordingXp) -> list[ElementwiseJob]:
    """Each ``gpunn.kernels.ELEMENTWISE_SOURCES`` entry, once per distinct set of parameters its
    wrapper passes scalars to (CuPy generates different code for a scalar and for an array).

    Raises ValueError for a registered kernel that no probe calls (its self-check would not
    cover it either) and for a kernel called that is not registered.
    """
    import gpunn.kernels as gk

    registered = {src.name for src in gk.ELEMENTWISE_SOURCES}
    strays = sorted({c.kernel.name for c in usage.calls} - registered)
    if strays:
        raise ValueError(f"ElementwiseKernels not in gpunn.kernels.ELEMENTWISE_SOURCES: {strays}")
    jobs = []
    for src in gk.ELEMENTWISE_SOURCES:
        seen = sorted({c.scalar_params for c in usage.calls if c.kernel.name == src.name})
        if not seen:
            raise ValueError(
                f"{src.name} is never called by the self-check probes: give its KernelSpec a "
                "probe that runs it (the self-check on a GPU needs one too)"
            )
        jobs += [ElementwiseJob(src, scalars) for scalars in seen]
    return jobs


@dataclass(frozen=True)
class RawModuleJob:
    """One RawModule as gpunn builds it, with the functions gpunn takes from it."""

    name: str  # the .cu file the code is, or "RawModule"
    code: str
    options: tuple[str, ...]
    kwargs: tuple[tuple[str, Any], ...]  # any other RawModule arguments
    functions: tuple[str, ...]


def gpunn_raw_modules(usage: RecordingXp) -> list[RawModuleJob]:
    """Each distinct RawModule the probes built (code, options, other arguments), with the
    names passed to ``get_function``, named after the package's .cu file it reads."""
    from gpunn.kernels.cuda_source import cu_files, read_cu

    files = {read_cu(f): f for f in cu_files()}
    jobs: dict[tuple[Any, ...], RawModuleJob] = {}
    for use in usage.raw_modules:
        kwargs = dict(use.kwargs)
        code, options = kwargs.pop("code"), tuple(kwargs.pop("options", ()))
        key = (code, options, tuple(sorted(kwargs.items())))
        old = jobs.get(key)
        functions = tuple(sorted({*(old.functions if old else ()), *use.functions}))
        jobs[key] = RawModuleJob(files.get(code, "RawModule"), code, options, key[2], functions)
    return list(jobs.values())


def main(argv: Sequence[str] | None = None) -> int:
    """Compile gpunn's kernels for every target found and print one line per compilation."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--layouts", default="contiguous", help="comma-separated, or 'all'")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    args = parser.parse_args(argv)
    layouts = list(LAYOUTS) if args.layouts == "all" else args.layouts.split(",")
    usage = gpunn_usage()
    items = matrix(gpunn_jobs(usage), args.dtypes.split(","), layouts)
    targets, missing = find_targets()
    print(f"CuPy {cupy.__version__}; " + "; ".join(missing or ["all NVRTCs found"]))
    results = []
    for target in targets:
        results += compile_elementwise_batch(items, target.arch, target.nvrtc, args.workers)
        for job in gpunn_raw_modules(usage):
            results.append(
                compile_raw_module(
                    job.code, job.options, target.arch, target.nvrtc, job.name, **dict(job.kwargs)
                )
            )
    print(format_results(results))
    return 1 if any(not r.ok for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
