"""Run CUDA C on the CPU for tests: RawModule/RawKernel sources unchanged, ElementwiseKernels
through their per-element operation.

The ``.cu`` text is compiled unchanged with ``g++`` against ``cuda_shim.h`` (one host thread per
CUDA thread, a real barrier for ``__syncthreads``, the PTX rules of warp shuffles, float32
flush-to-zero) into a shared library, cached by content hash, and launched through ``ctypes``
with the call convention of CuPy::

    module = EmulatedModule(code=read_cu("softmax_xent.cu"), options=("--std=c++17",))
    kernel = module.get_function("gpunn_softmax_xent_float32")
    kernel((n_blocks,), (256,), (z, y, dz, row_loss, np.int64(n), np.int32(c), np.float32(n)))

NumPy arrays stand in for CuPy arrays (their data is copied next to guard pages and back).
Arguments are converted as CuPy converts them (a Python int becomes an int64, a float a float64)
and then checked against the kernel's real parameter types, which the shim knows: a mismatch
that CuPy would pass silently (and the GPU would misread) raises ``TypeError`` here.

:class:`EmulatedElementwiseKernel` stands in for ``cupy.ElementwiseKernel``: its operation text
is wrapped in a one-thread-per-element kernel (``gpunn.kernels.cuda_source.render_cuda``) and
run under the same shim, after CuPy's argument handling (arity, one dtype for ``T``, scalars,
broadcasting, output arrays updated in place). The surrounding code CuPy generates (indexers,
strides) is not run here; it is compiled by the NVRTC check.
:func:`emulated_array_module` is NumPy with all three replaced: code written against CuPy's
namespace (gpunn's fused-kernel wrappers) then runs its CUDA on the CPU.

What is modelled and what is not is written at the top of ``cuda_shim.h``. Nothing this module
produces is a GPU result.

Environment: ``GPUNN_CUDA_SHIM_CACHE`` (where compiled modules are kept; default a per-user
folder in the temporary directory), ``GPUNN_CUDA_SHIM_TIMEOUT`` (seconds without progress before
a launch fails as hung; default 10).
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import types
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gpunn.kernels.cuda_source import kernel_symbol, parse_params, render_cuda
from gpunn.kernels.spec import Elementwise

SHIM_HEADER = Path(__file__).resolve().with_name("cuda_shim.h")

#: how the modelled math functions err (see cuda_shim::math::Model)
MathModel = Literal["libm", "high", "low", "mixed"]
_MATH_MODELS: dict[str, int] = {"libm": 0, "high": 1, "low": 2, "mixed": 3}

#: seconds without progress (no barrier, warp operation or thread exit completes) before a launch
#: fails as hung; ``GPUNN_CUDA_SHIM_TIMEOUT`` overrides it
DEFAULT_TIMEOUT = float(os.environ.get("GPUNN_CUDA_SHIM_TIMEOUT", "10"))

#: g++ flags: C++20 (std::atomic_ref, std::bit_cast, std::source_location); -O0 because an
#: emulated kernel spends its time in synchronisation, not arithmetic (-O1 compiles 1.4 s slower
#: and runs no faster); no FMA contraction and no fast-math, so every float operation rounds as
#: written (the GPU's -fmad=true contraction is not modelled); -fno-strict-aliasing because CUDA
#: code type-puns through pointers freely
CXX_FLAGS = (
    "-std=c++20",
    "-O0",
    "-g0",
    "-fPIC",
    "-shared",
    "-pthread",
    "-fno-fast-math",
    "-ffp-contract=off",
    "-fno-strict-aliasing",
    "-fvisibility=hidden",
)

_COMPILE_TIMEOUT = 300.0


class EmulationError(RuntimeError):
    """A kernel failed under emulation (the base of the errors below)."""


class EmulationCompileError(EmulationError):
    """g++ could not compile the CUDA source with the shim."""


class KernelDeadlockError(EmulationError):
    """Every thread that has not exited waits, and none of the waits can complete."""


class WarpSyncError(EmulationError):
    """A warp operation broke CUDA's rules: mask, divergent calls, width or offset."""


class BarrierError(EmulationError):
    """``__syncthreads()`` that some threads of the block exit without reaching."""


class KernelTimeoutError(EmulationError):
    """No thread made progress for the timeout (a thread in an endless loop)."""


class KernelTrapError(EmulationError):
    """A device-side ``assert()`` failed or the kernel called ``__trap()``."""


class KernelArgumentError(EmulationError):
    """The shim refused the arguments (count)."""


class KernelFaultError(EmulationError):
    """Kernel code faulted: memory past an array argument's end, a null pointer, integer / 0."""


_STATUS_ERRORS: dict[int, type[EmulationError]] = {
    1: EmulationError,
    2: KernelDeadlockError,
    3: WarpSyncError,
    4: BarrierError,
    5: KernelTimeoutError,
    6: KernelTrapError,
    9: KernelArgumentError,
    10: KernelFaultError,
}
_STATUS_BAD_LAUNCH = 7
_STATUS_UNKNOWN_KERNEL = 8
_STATUS_FAULT = 10


class _LaunchConfig(ctypes.Structure):
    """Mirror of ``CudaShimLaunchConfig`` in cuda_shim.h."""

    _fields_ = [
        ("grid", ctypes.c_uint32 * 3),
        ("block", ctypes.c_uint32 * 3),
        ("timeout_s", ctypes.c_double),
        ("ftz_arith", ctypes.c_int32),
        ("ftz_math", ctypes.c_int32),
        ("math_model", ctypes.c_int32),
        ("reverse_blocks", ctypes.c_int32),
    ]


# ------------------------------------------------------------------------------------------
# Compiling
# ------------------------------------------------------------------------------------------

_COMMENT_RE = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_GLOBAL_RE = re.compile(
    r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\("
)
_DECL_START_RE = re.compile(r"[;{}]|^\s*#[^\n]*$", re.MULTILINE)


def kernel_names(code: str) -> list[str]:
    """Names of the non-template ``__global__`` functions defined in ``code``, in order.

    Found by a regular expression over the source without comments; a template kernel (whose
    declaration starts with ``template``) needs ``name_expressions``, as in CuPy.
    """
    text = _COMMENT_RE.sub(" ", code)
    names: list[str] = []
    for match in _GLOBAL_RE.finditer(text):
        starts = [m.end() for m in _DECL_START_RE.finditer(text, 0, match.start())]
        declaration = text[(starts[-1] if starts else 0) : match.start()]
        if re.search(r"\btemplate\b", declaration) is None and match.group(1) not in names:
            names.append(match.group(1))
    return names


def _check_supported(code: str) -> None:
    """Reject constructs the shim does not model, with a message better than g++'s."""
    text = _COMMENT_RE.sub(" ", code)
    if re.search(r"\bextern\s+__shared__", text):
        raise NotImplementedError(
            "dynamic shared memory (extern __shared__) is not modelled by the CUDA shim"
        )
    if re.search(r"\bstatic\s+__shared__", text):
        raise NotImplementedError(
            "'static __shared__' is not supported by the CUDA shim (write '__shared__'; the "
            "shim turns it into a function-local static itself)"
        )


def _cache_dir() -> Path:
    root = os.environ.get("GPUNN_CUDA_SHIM_CACHE")
    path = Path(root) if root else Path(tempfile.gettempdir()) / f"gpunn-cuda-shim-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


_COMPILER_IDS: dict[str, str] = {}


def _compiler_id(compiler: str) -> str:
    """First line of ``compiler --version`` (part of the cache key), cached per process."""
    if compiler not in _COMPILER_IDS:
        exe = shutil.which(compiler)
        if exe is None:
            raise EmulationCompileError(f"C++ compiler {compiler!r} not found")
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
        _COMPILER_IDS[compiler] = f"{exe}: {out.stdout.splitlines()[0] if out.stdout else '?'}"
    return _COMPILER_IDS[compiler]


def compile_module(
    code: str,
    *,
    exports: Sequence[str],
    source_name: str = "kernel.cu",
    extra_flags: Sequence[str] = (),
    compiler: str = "g++",
) -> Path:
    """Compile ``code`` with the shim into a shared library and return its path.

    The library is cached under ``GPUNN_CUDA_SHIM_CACHE`` (default: a per-user directory in the
    temp dir), keyed by the SHA-256 of the shim header, the source, the exports, the flags and
    the compiler's version, so an unchanged kernel is compiled once per machine.
    """
    _check_supported(code)
    header = SHIM_HEADER.read_text(encoding="utf-8")
    unit = "".join(
        [
            f'#include "{SHIM_HEADER}"\n',
            f'#line 1 "{source_name}"\n',
            code,
            '\n#line 1 "<cuda_shim exports>"\n',
            *(f"CUDA_SHIM_EXPORT({name})\n" for name in exports),
        ]
    )
    flags = [*CXX_FLAGS, *extra_flags]
    key_text = "\0".join([header, unit, *flags, _compiler_id(compiler)])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:32]
    cache = _cache_dir()
    lib = cache / f"cuda-shim-{key}.so"
    if lib.exists():
        return lib
    src = cache / f"cuda-shim-{key}.cpp"
    src.write_text(unit, encoding="utf-8")
    tmp = cache / f".cuda-shim-{key}.{os.getpid()}.{threading.get_ident()}.so"
    cmd = [compiler, *flags, str(src), "-o", str(tmp)]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=_COMPILE_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        raise EmulationCompileError(f"g++ took more than {_COMPILE_TIMEOUT:g} s") from exc
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise EmulationCompileError(
            f"compiling {source_name} with the CUDA shim failed:\n{' '.join(cmd)}\n"
            f"{done.stderr[-8000:]}"
        )
    os.replace(tmp, lib)  # atomic: concurrent test workers never load a half-written file
    return lib


# ------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------

_C_NAMES = {
    "b1": "bool",
    "i1": "signed char",
    "u1": "unsigned char",
    "i2": "short",
    "u2": "unsigned short",
    "i4": "int",
    "u4": "unsigned int",
    "i8": "long long",
    "u8": "unsigned long long",
    "f4": "float",
    "f8": "double",
    "v": "void",
}
_CTYPES: dict[str, Any] = {
    "b1": ctypes.c_bool,
    "i1": ctypes.c_int8,
    "u1": ctypes.c_uint8,
    "i2": ctypes.c_int16,
    "u2": ctypes.c_uint16,
    "i4": ctypes.c_int32,
    "u4": ctypes.c_uint32,
    "i8": ctypes.c_int64,
    "u8": ctypes.c_uint64,
    "f4": ctypes.c_float,
    "f8": ctypes.c_double,
}


def c_type_name(code: str) -> str:
    """``"*cf4"`` -> ``"const float*"``: the C spelling of a shim type code, for messages."""
    if code.startswith("*"):
        rest = code[1:]
        const = rest.startswith("c")
        inner = c_type_name(rest[1:] if const else rest)
        return f"{'const ' if const else ''}{inner}*"
    if code.startswith("V"):
        return f"<{code[1:]}-byte type>"
    return _C_NAMES.get(code, code)


def _dtype_code(dtype: np.dtype[Any]) -> str:
    return f"{dtype.kind}{dtype.itemsize}"


def _cupy_scalar_dtype(value: Any) -> np.dtype[Any]:
    """The dtype CuPy passes a scalar kernel argument as (cupy/_core/_scalar.pyx)."""
    if isinstance(value, np.generic):
        return value.dtype
    if type(value) is bool:
        return np.dtype(np.bool_)
    if type(value) is float:
        return np.dtype(np.float64)
    if type(value) is complex:
        return np.dtype(np.complex128)
    if type(value) is int:
        return np.dtype(np.uint64 if value >= 1 << 63 else np.int64)
    raise TypeError(f"Unsupported type {type(value)}")


def _pointee_accepts(pointee: str, dtype: np.dtype[Any]) -> bool:
    """Whether an array of ``dtype`` may be passed to a pointer to ``pointee``.

    void and char pointers take anything; otherwise kind and size must match, except that
    signed and unsigned integers of one size are interchangeable (bit reinterpretation).
    """
    code = _dtype_code(dtype)
    if pointee in ("v", "i1", "u1") or pointee == code:
        return True
    if pointee[0] in "iu" and code[0] in "iu" and pointee[1:] == code[1:]:
        return True
    return pointee.startswith("V") and int(pointee[1:]) == dtype.itemsize


def _pack(
    arg: Any, code: str, index: int, kernel: str, guards: _Guards | None
) -> ctypes._SimpleCData | ctypes.Array[Any]:
    """The ctypes object holding argument ``index`` as the kernel's parameter type ``code``."""
    where = f"argument {index} of kernel '{kernel}' ({c_type_name(code)})"
    if code.startswith("*"):
        pointee = code[2:] if code.startswith("*c") else code[1:]
        if arg is None:
            return ctypes.c_void_p(0)
        if isinstance(arg, np.ndarray):
            if not _pointee_accepts(pointee, arg.dtype):
                raise TypeError(f"{where}: got an array of {arg.dtype}")
            return ctypes.c_void_p(guards.pointer(arg) if guards else arg.ctypes.data)
        raise TypeError(f"{where}: expected an array (the device pointer), got {type(arg)}")
    if isinstance(arg, np.ndarray):  # CuPy passes a size-1 NumPy array by value
        if arg.size != 1:
            raise TypeError(f"{where}: an array of shape {arg.shape} cannot be passed by value")
        arg = arg.reshape(())[()]
    dtype = _cupy_scalar_dtype(arg)
    if code.startswith("V"):
        if dtype.itemsize != int(code[1:]):
            raise TypeError(f"{where}: got {dtype} ({dtype.itemsize} bytes)")
        return (ctypes.c_char * dtype.itemsize).from_buffer_copy(np.asarray(arg, dtype).tobytes())
    if _dtype_code(dtype) != code:
        raise TypeError(
            f"{where}: CuPy would pass {type(arg).__name__} as {dtype} ({dtype.itemsize} bytes), "
            f"which the GPU would misread; pass numpy.{np.dtype(code).name}(...)"
        )
    return _CTYPES[code](np.asarray(arg, dtype).item())


def _byte_range(arr: np.ndarray) -> tuple[int, int]:
    """[low, high) addresses of the bytes a (possibly strided) array spans."""
    low = high = arr.ctypes.data
    if arr.size == 0:
        return low, high
    for extent, stride in zip(arr.shape, arr.strides, strict=True):
        reach = (extent - 1) * stride
        low, high = (low + reach, high) if reach < 0 else (low, high + reach)
    return low, high + arr.itemsize


class _Guards:
    """The array arguments copied into guarded memory for one launch.

    Arrays whose byte ranges overlap (dz passed as z, two views of one buffer) share one copy,
    so aliasing behaves as on the device. Each copy ends right before an inaccessible page: the
    first access past the end faults and the launch fails with KernelFaultError instead of
    reading or overwriting the Python heap. Results are copied back after the launch.
    """

    def __init__(self, lib: _Library, arrays: Sequence[tuple[int, np.ndarray]]) -> None:
        self._lib = lib
        spans = sorted((*_byte_range(a), i, a) for i, a in arrays)
        #: [low, high, guarded copy, argument indices, writeable]
        self.groups: list[list[Any]] = []
        for low, high, i, arr in spans:
            if self.groups and low < self.groups[-1][1]:  # overlaps the previous group
                group = self.groups[-1]
                group[1] = max(group[1], high)
                group[3].append(i)
                group[4] = group[4] or arr.flags.writeable
            else:
                self.groups.append([low, high, 0, [i], arr.flags.writeable])
        for group in self.groups:
            size = group[1] - group[0]
            copy = lib.dll.cuda_shim_guarded_alloc(size)
            if not copy:
                self.free()
                raise MemoryError(f"cannot map {size} bytes of guarded memory")
            group[2] = copy
            ctypes.memmove(copy, group[0], size)

    def pointer(self, arr: np.ndarray) -> int:
        """Where the kernel sees ``arr``."""
        ptr = arr.ctypes.data
        for low, high, copy, _, _ in self.groups:
            if low <= ptr <= high:
                return int(copy + (ptr - low))
        raise KeyError("array not guarded")

    def copy_back(self) -> None:
        for low, high, copy, _, writeable in self.groups:
            if writeable and copy:
                ctypes.memmove(low, copy, high - low)

    def free(self) -> None:
        for group in self.groups:
            if group[2]:
                self._lib.dll.cuda_shim_guarded_free(group[2], group[1] - group[0])
                group[2] = 0

    def describe(self, address: int, signature: Sequence[str]) -> str:
        """Which argument's guard page ``address`` falls on, in words."""
        page = 1 << 16  # at least the guard page, whatever the system's page size
        if address < page:
            return "a null (or nearly null) pointer"
        for low, high, copy, indices, _ in self.groups:
            names = " / ".join(f"argument {i} ({c_type_name(signature[i])})" for i in indices)
            end = copy + (high - low)
            if end <= address < end + page:
                return f"{address - end} bytes past the end of {names}, {high - low} bytes long"
            if copy - page <= address < copy:
                return f"{copy - address} bytes before the start of {names}"
        return "no array argument nearby"


def _dims(value: Any, what: str) -> tuple[int, int, int]:
    """CuPy's handling of grid/block: a tuple, padded with 1s, each entry at least 1."""
    if not isinstance(value, tuple):
        raise TypeError(f"{what} must be a tuple (as in CuPy), not {type(value).__name__}")
    padded = (*value, 1, 1)[:3]  # CuPy: (grid + (1, 1))[:3]
    return (max(1, int(padded[0])), max(1, int(padded[1])), max(1, int(padded[2])))


# ------------------------------------------------------------------------------------------
# Modules and kernels
# ------------------------------------------------------------------------------------------


class _Library:
    """One loaded shared library and its C entry points."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dll = ctypes.CDLL(str(path))
        self.dll.cuda_shim_kernel_names.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        self.dll.cuda_shim_kernel_names.restype = ctypes.c_int
        self.dll.cuda_shim_signature.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
        self.dll.cuda_shim_signature.restype = ctypes.c_int
        self.dll.cuda_shim_launch.argtypes = [
            ctypes.c_char_p,
            ctypes.POINTER(_LaunchConfig),
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        self.dll.cuda_shim_launch.restype = ctypes.c_int
        self.dll.cuda_shim_guarded_alloc.argtypes = [ctypes.c_size_t]
        self.dll.cuda_shim_guarded_alloc.restype = ctypes.c_void_p
        self.dll.cuda_shim_guarded_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.dll.cuda_shim_guarded_free.restype = None
        self.lock = threading.Lock()  # the shim runs one launch per library image at a time

    def kernel_names(self) -> list[str]:
        buf = ctypes.create_string_buffer(1 << 16)
        self.dll.cuda_shim_kernel_names(buf, len(buf))
        return [n for n in buf.value.decode().split(",") if n]

    def signature(self, name: str) -> tuple[str, ...] | None:
        buf = ctypes.create_string_buffer(4096)
        if self.dll.cuda_shim_signature(name.encode(), buf, len(buf)) != 0:
            return None
        text = buf.value.decode()
        return tuple(text.split(",")) if text else ()


_LIBRARIES: dict[Path, _Library] = {}
_LIBRARIES_LOCK = threading.Lock()


def _load(path: Path) -> _Library:
    with _LIBRARIES_LOCK:
        lib = _LIBRARIES.get(path)
        if lib is None:
            lib = _LIBRARIES[path] = _Library(path)
        return lib


def _parse_options(options: Sequence[str]) -> tuple[list[str], bool]:
    """NVRTC options -> (g++ flags, ftz). Unknown options raise, so nothing passes unnoticed."""
    flags: list[str] = []
    ftz = True  # CuPy always compiles with -ftz=true
    for opt in options:
        if opt in ("-ftz=true", "--ftz=true"):
            ftz = True
        elif opt in ("-ftz=false", "--ftz=false"):
            ftz = False
        elif opt.startswith(("-D", "--define-macro=")):
            flags.append("-D" + opt.split("=", 1)[1] if opt.startswith("--") else opt)
        elif opt.startswith(("-I", "--include-path=")):
            flags.append("-I" + opt.split("=", 1)[1] if opt.startswith("--") else opt)
        elif re.fullmatch(r"--?std=c\+\+\d\d", opt):
            pass  # the shim needs C++20; kernels written for C++17 compile unchanged
        elif opt in ("-lineinfo", "--generate-line-info") or re.match(
            r"--?(arch|gpu-architecture)=", opt
        ):
            pass  # code generation for the GPU only
        elif opt in ("--use_fast_math", "-use_fast_math"):
            raise NotImplementedError(
                "--use_fast_math is not modelled (approximate intrinsics, flushed divisions)"
            )
        else:
            raise ValueError(f"NVRTC option {opt!r} is not understood by the CUDA shim")
    return flags, ftz


class EmulatedModule:
    """Stand-in for ``cupy.RawModule(code=..., options=...)`` that runs kernels on the CPU.

    Compiles on construction (cached). Keyword-only settings beyond CuPy's: ``timeout`` (seconds
    without progress before a launch fails as hung), ``math`` (how expf/logf/exp/log err:
    ``"libm"``, or ``"high"``/``"low"``/``"mixed"`` for the edge of CUDA's documented error bound),
    ``reverse_blocks`` (run the grid's blocks last to first), ``guard_memory`` (copy array
    arguments next to inaccessible pages, so an access past an array's end fails the launch;
    on by default), ``source_name`` (for messages).
    """

    def __init__(
        self,
        code: str,
        options: Sequence[str] = (),
        *,
        name_expressions: Sequence[str] = (),
        source_name: str = "kernel.cu",
        timeout: float = DEFAULT_TIMEOUT,
        math: MathModel = "libm",
        reverse_blocks: bool = False,
        guard_memory: bool = True,
        compiler: str = "g++",
    ) -> None:
        if math not in _MATH_MODELS:
            raise ValueError(f"math must be one of {sorted(_MATH_MODELS)}, not {math!r}")
        flags, self.ftz = _parse_options(options)
        self.code = code
        self.options = tuple(options)
        self.timeout = timeout
        self.math: MathModel = math
        self.reverse_blocks = reverse_blocks
        self.guard_memory = guard_memory
        exports = [*kernel_names(code), *name_expressions]
        self.path = compile_module(
            code, exports=exports, source_name=source_name, extra_flags=flags, compiler=compiler
        )
        self._lib = _load(self.path)
        #: (kernel, grid, block) of recent launches, after CuPy's padding: lets a test check the
        #: configuration that code under test chose
        self.launches: deque[tuple[str, tuple[int, int, int], tuple[int, int, int]]] = deque(
            maxlen=256
        )

    def get_function(self, name: str) -> EmulatedFunction:
        """The kernel ``name`` (an ``extern "C"`` name or one of ``name_expressions``)."""
        signature = self._lib.signature(name)
        if signature is None:
            known = ", ".join(self._lib.kernel_names()) or "none"
            raise ValueError(f"no kernel named {name!r} in this module (kernels: {known})")
        return EmulatedFunction(self, name, signature)


class EmulatedFunction:
    """One kernel of an :class:`EmulatedModule`; call it as a CuPy ``Function``."""

    def __init__(self, module: EmulatedModule, name: str, signature: tuple[str, ...]) -> None:
        self.module = module
        self.name = name
        #: the parameter types as shim type codes ("*cf4" = const float*, "i8" = long long, ...)
        self.signature = signature

    @property
    def c_signature(self) -> str:
        return f"{self.name}({', '.join(c_type_name(c) for c in self.signature)})"

    def __call__(
        self,
        grid: tuple[int, ...],
        block: tuple[int, ...],
        args: Sequence[Any],
        *,
        shared_mem: int = 0,
        stream: Any = None,
    ) -> None:
        """Launch on the CPU and return when the kernel has finished (it is synchronous)."""
        del stream  # one synchronous "stream"
        if shared_mem:
            raise NotImplementedError("dynamic shared memory is not modelled by the CUDA shim")
        grid3, block3 = _dims(grid, "grid"), _dims(block, "block")
        args = tuple(args)
        if len(args) != len(self.signature):
            raise TypeError(
                f"{self.c_signature} takes {len(self.signature)} arguments, got {len(args)}"
            )
        module = self.module
        lib = module._lib
        arrays = [
            (i, a)
            for i, (a, c) in enumerate(zip(args, self.signature, strict=True))
            if isinstance(a, np.ndarray) and c.startswith("*")
        ]
        guards = _Guards(lib, arrays) if module.guard_memory else None
        try:
            packed = [
                _pack(a, c, i, self.name, guards)
                for i, (a, c) in enumerate(zip(args, self.signature, strict=True))
            ]
            argv = (ctypes.c_void_p * max(1, len(packed)))(*[ctypes.addressof(p) for p in packed])
            has_f32 = any(code.endswith("f4") for code in self.signature)
            config = _LaunchConfig(
                grid=(ctypes.c_uint32 * 3)(*grid3),
                block=(ctypes.c_uint32 * 3)(*block3),
                timeout_s=module.timeout,
                # x86 has one flush switch for float32 and float64, CUDA's -ftz only affects
                # float32: turn it on for kernels that take float32 data (a kernel taking
                # float32 data and computing in double gets its doubles flushed too)
                ftz_arith=int(module.ftz and has_f32),
                ftz_math=int(module.ftz),
                math_model=_MATH_MODELS[module.math],
                reverse_blocks=int(module.reverse_blocks),
            )
            message = ctypes.create_string_buffer(1 << 15)
            module.launches.append((self.name, grid3, block3))
            with lib.lock:
                status = lib.dll.cuda_shim_launch(
                    self.name.encode(),
                    ctypes.byref(config),
                    argv,
                    len(packed),
                    message,
                    len(message),
                )
            text = message.value.decode(errors="replace")
            if status == _STATUS_FAULT and guards:
                found = re.search(r"address (0x[0-9a-f]+|\(nil\))", text)
                address = int(found.group(1), 16) if found and found.group(1) != "(nil)" else 0
                text += ": " + guards.describe(address, self.signature)
            if guards:
                guards.copy_back()  # also after a failure: the GPU keeps partial results too
        finally:
            if guards:
                guards.free()
        if status == _STATUS_BAD_LAUNCH:
            raise ValueError(f"{self.name}: {text} (CUDA would fail the launch)")
        if status == _STATUS_UNKNOWN_KERNEL:
            raise ValueError(text)
        if status != 0:
            raise _STATUS_ERRORS.get(status, EmulationError)(text)
        del args  # the arrays had to stay alive until here


class EmulatedRawKernel:
    """Stand-in for ``cupy.RawKernel(code, name, options)``: compiles on first use."""

    def __init__(self, code: str, name: str, options: Sequence[str] = (), **settings: Any) -> None:
        self.code = code
        self.name = name
        self.options = tuple(options)
        self._settings = settings
        self._function: EmulatedFunction | None = None

    def __call__(
        self, grid: tuple[int, ...], block: tuple[int, ...], args: Sequence[Any], **kw: Any
    ) -> None:
        if self._function is None:
            module = EmulatedModule(self.code, self.options, **self._settings)
            self._function = module.get_function(self.name)
        self._function(grid, block, args, **kw)


# ------------------------------------------------------------------------------------------
# ElementwiseKernel
# ------------------------------------------------------------------------------------------

#: threads per block of an emulated elementwise launch (one CUDA thread per element)
ELEMENTWISE_BLOCK = 128

_NP_TYPES = {name: np.dtype(name) for name in ("float32", "float64", "int32", "int64", "bool")}


def elementwise_code(sources: Sequence[Elementwise], dtypes: Sequence[str]) -> str:
    """One CUDA source holding every ``sources`` x ``dtypes`` as a one-thread-per-element kernel
    named ``<name>_<dtype>`` (``gpunn.kernels.cuda_source.render_cuda``)."""
    return "\n".join(render_cuda(src, dtype) for src in sources for dtype in dtypes)


class EmulatedElementwiseKernel:
    """Stand-in for ``cupy.ElementwiseKernel(in_params, out_params, operation, name)``.

    A call follows CuPy's rules: ``nin`` arguments (outputs allocated) or ``nin + nout`` (the
    given outputs are read and written in place); every array bound to a ``T`` parameter has one
    dtype, which is ``T``; other arguments are Python or NumPy scalars, converted to their
    parameter's type; arrays broadcast against each other. The operation then runs once per
    element under the CUDA shim (``module``: an :class:`EmulatedModule` holding
    :func:`elementwise_code` of this kernel). ``launches`` counts the launches per
    ``(name, dtype)``; kernels may share one counter.
    """

    def __init__(
        self,
        source: Elementwise,
        module: EmulatedModule,
        launches: collections.Counter[tuple[str, str]] | None = None,
    ) -> None:
        self.source = source
        self.name = source.name
        self.module = module
        self.ins = parse_params(source.in_params)
        self.outs = parse_params(source.out_params)
        self.nin, self.nout = len(self.ins), len(self.outs)
        self.launches = collections.Counter() if launches is None else launches

    def _dtype(self, args: Sequence[Any]) -> np.dtype[Any]:
        """``T``: the dtype shared by every array bound to a ``T`` parameter."""
        found = {
            a.dtype
            for (kind, _), a in zip((*self.ins, *self.outs), args, strict=False)
            if kind == "T" and isinstance(a, np.ndarray)
        }
        if len(found) != 1:
            raise TypeError(f"{self.name}: Type is mismatched (T given {sorted(map(str, found))})")
        dtype = found.pop()
        if dtype.name not in ("float32", "float64"):
            raise TypeError(f"{self.name}: T is {dtype}; the emulation renders float32/float64")
        return dtype

    def __call__(self, *args: Any) -> Any:
        if len(args) not in (self.nin, self.nin + self.nout):
            raise TypeError(
                f"{self.name}: wrong number of arguments ({len(args)}; takes {self.nin} or "
                f"{self.nin + self.nout})"
            )
        ins, given = args[: self.nin], list(args[self.nin :])
        for a in given:
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{self.name}: an output must be an array, not {type(a)}")
        dtype = self._dtype(args)
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        for out in given:
            if out.shape != shape:
                raise ValueError(
                    f"{self.name}: Out shape is mismatched ({out.shape}; broadcast {shape})"
                )

        def kind(type_name: str) -> np.dtype[Any]:
            return dtype if type_name == "T" else _NP_TYPES[type_name]

        # each parameter as a contiguous array of the broadcast shape: the rendered kernel takes
        # every parameter as an array (a scalar's value repeated), which per element is the same
        in_bufs = [
            np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=kind(t)), shape))
            for (t, _), a in zip(self.ins, ins, strict=True)
        ]
        if given:
            out_bufs = [
                np.array(o, dtype=kind(t)) for (t, _), o in zip(self.outs, given, strict=True)
            ]
        else:
            out_bufs = [np.empty(shape, kind(t)) for t, _ in self.outs]
        n = int(np.prod(shape, dtype=np.int64))
        if n:  # CuPy launches nothing for an empty result
            kernel = self.module.get_function(kernel_symbol(self.source, dtype.name))
            grid = (-(-n // ELEMENTWISE_BLOCK),)
            kernel(grid, (ELEMENTWISE_BLOCK,), (*in_bufs, *out_bufs, np.int64(n)))
            self.launches[self.name, dtype.name] += 1
        for out, buf in zip(given, out_bufs, strict=False):
            out[...] = buf
        results = given or out_bufs
        return results[0] if len(results) == 1 else tuple(results)


# ------------------------------------------------------------------------------------------
# An array module
# ------------------------------------------------------------------------------------------


def emulated_array_module(
    elementwise: Sequence[Elementwise] = (), **settings: Any
) -> types.ModuleType:
    """NumPy with ``RawModule``/``RawKernel``/``ElementwiseKernel`` replaced by the emulated ones,
    as an ``xp``.

    Code written against CuPy's namespace (``xp.RawModule(code=...)``, ``xp.empty``...) then runs
    its CUDA kernels on the CPU. ``settings`` go to every :class:`EmulatedModule` (e.g.
    ``math="high"``). ``elementwise``: the ElementwiseKernel sources code may construct,
    compiled together in one module for float32 and float64 (one g++ run instead of one per
    kernel); constructing any other then raises ``ValueError`` (a kernel outside gpunn's
    registry would escape the checks). Without ``elementwise`` each ElementwiseKernel is
    compiled on its own when constructed. The module records what ran:
    ``xp.elementwise_launches`` (a Counter of ``(kernel name, dtype)``) and ``xp.raw_modules``
    (every :class:`EmulatedModule` made, each with its ``launches``).
    """
    suffix = ",".join(f"{k}={v}" for k, v in sorted(settings.items()))
    xp = types.ModuleType(f"gpunn_cuda_emulator[{suffix}]")
    dtypes = ("float32", "float64")
    elementwise_launches: collections.Counter[tuple[str, str]] = collections.Counter()
    raw_modules: list[EmulatedModule] = []
    prebuilt: dict[Elementwise, EmulatedModule] = {}
    if elementwise:
        shared = EmulatedModule(
            elementwise_code(elementwise, dtypes), **{**settings, "source_name": "elementwise.cu"}
        )
        prebuilt = dict.fromkeys(elementwise, shared)

    def raw_module(code: str, options: Sequence[str] = (), **kw: Any) -> EmulatedModule:
        module = EmulatedModule(code, options, **{**settings, **kw})
        raw_modules.append(module)
        return module

    def raw_kernel(code: str, name: str, options: Sequence[str] = (), **kw: Any) -> Any:
        return EmulatedRawKernel(code, name, options, **{**settings, **kw})

    def elementwise_kernel(
        in_params: str, out_params: str, operation: str, name: str
    ) -> EmulatedElementwiseKernel:
        source = Elementwise(name, in_params, out_params, operation)
        module = prebuilt.get(source)
        if module is None and prebuilt:
            known = ", ".join(src.name for src in prebuilt)
            raise ValueError(
                f"ElementwiseKernel {name!r} is not one of the sources given ({known})"
            )
        if module is None:
            module = EmulatedModule(
                elementwise_code([source], dtypes), **{**settings, "source_name": f"{name}.cu"}
            )
        return EmulatedElementwiseKernel(source, module, elementwise_launches)

    xp.RawModule = raw_module  # type: ignore[attr-defined]
    xp.RawKernel = raw_kernel  # type: ignore[attr-defined]
    xp.ElementwiseKernel = elementwise_kernel  # type: ignore[attr-defined]
    xp.elementwise_launches = elementwise_launches  # type: ignore[attr-defined]
    xp.raw_modules = raw_modules  # type: ignore[attr-defined]
    xp.__getattr__ = lambda name: getattr(np, name)  # type: ignore[method-assign]
    return xp
