"""Every gpunn GPU kernel, compiled as CuPy would compile it, with the real NVRTC, without a GPU.

For each ElementwiseKernel in ``gpunn.kernels.ELEMENTWISE_SOURCES`` and each RawModule gpunn
builds (its ``.cu`` files), CuPy's own code generator and compiler pipeline run up to NVRTC
(tests/cuda_on_cpu/nvrtc.py) for sm_80 (A100) and sm_90 (H100/H200), with CUDA 13's NVRTC
(CuPy's own) and CUDA 12's, and must compile without errors or warnings. How gpunn calls its
kernels (which parameters get scalars, what a RawModule is built with, which functions it takes)
is learned from the kernels' own self-check probes, run through the real wrappers on the CPU, so
a kernel added to the registry is compiled without touching this file. Compiled only: whether
the kernels compute the right thing is checked under the CUDA shim (test_cuda_on_cpu_kernels.py).

Environment:
  GPUNN_NVRTC_MATRIX   ci (default) | smoke | full: how many (kernel, dtype, layout) per target
                       (ci: both dtypes, contiguous, every target; the other layouts in float32
                       on sm_90 with CuPy's NVRTC. smoke: that target only. full: everything)
  GPUNN_NVRTC_WORKERS  parallel compilations (default: the CPU count, at most 4)
  GPUNN_NVRTC12/13     path of a libnvrtc.so.12/13 to use instead of the pip wheels'
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import time
from typing import Any

import pytest

from cuda_on_cpu import report, require_module, unavailable

cupy = require_module("cupy", "pip install -e '.[dev,cuda13]'")
from cupy._core import core as cupy_core  # noqa: E402
from cupy.cuda import compiler as cupy_compiler  # noqa: E402

import gpunn.kernels as gk  # noqa: E402
from gpunn.kernels.cuda_source import cu_files, read_cu  # noqa: E402
from gpunn.kernels.spec import Elementwise  # noqa: E402

from cuda_on_cpu import nvrtc as cc  # noqa: E402 - it imports cupy: after the check above

pytestmark = pytest.mark.cuda_on_cpu

MATRICES = ("ci", "smoke", "full")
MATRIX = os.environ.get("GPUNN_NVRTC_MATRIX", "ci")
if MATRIX not in MATRICES:
    raise ValueError(f"GPUNN_NVRTC_MATRIX={MATRIX!r}: expected one of {MATRICES}")
WORKERS = int(os.environ.get("GPUNN_NVRTC_WORKERS", min(os.cpu_count() or 1, 4)))
DTYPES = ("float32", "float64")
CHECK = report.CHECKS["test_cuda_on_cpu_nvrtc.py"]

try:
    #: the target every layout is compiled for: what a GPU run with this CuPy would use on an H100
    PRIMARY = cc.Target("90", cc.cupy_nvrtc())
    TARGETS, MISSING = cc.find_targets()
except Exception as exc:  # CuPy's own NVRTC cannot be loaded: nothing can be compiled
    unavailable(
        f"CuPy's NVRTC cannot be loaded ({exc}); pip install 'nvidia-cuda-nvrtc>=13,<14'",
        module_level=True,
    )
TARGET_PARAMS = [pytest.param(t, id=str(t)) for t in TARGETS] + [
    pytest.param(why, id=f"missing-{i}") for i, why in enumerate(MISSING)
]


def target_or_unavailable(target: cc.Target | str) -> cc.Target:
    """The target, or (for a missing NVRTC, given as the reason) skip/fail saying so."""
    if isinstance(target, str):
        unavailable(target)
    return target


# ------------------------------------------------------------------------------------------
# How gpunn calls its kernels, learned from its self-check probes
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def usage() -> cc.RecordingXp:
    """Every kernel call made by the self-check probes of every fused kernel, on NumPy."""
    return cc.gpunn_usage()


@pytest.fixture(scope="module")
def jobs(usage: cc.RecordingXp) -> list[cc.ElementwiseJob]:
    """Each ElementwiseKernel source with the scalar parameters gpunn passes it."""
    return cc.gpunn_jobs(usage)


def plan(target: cc.Target, jobs: list[cc.ElementwiseJob]) -> list[cc.BatchItem]:
    """What to compile for ``target`` under GPUNN_NVRTC_MATRIX."""
    primary = target == PRIMARY
    if MATRIX == "full":
        return cc.matrix(jobs, DTYPES, cc.LAYOUTS)
    if MATRIX == "smoke":
        return cc.matrix(jobs, DTYPES, ["contiguous"]) if primary else []
    # ci: both dtypes, contiguous, on every target; every other layout (float32) on the primary
    items = cc.matrix(jobs, DTYPES, ["contiguous"])
    if primary:
        items += cc.matrix(jobs, ["float32"], [n for n in cc.LAYOUTS if n != "contiguous"])
    return items


def log(label: str, results: list[cc.CompileResult], wall: float, cpu: float) -> None:
    """A line of the end-of-run summary for one batch of compilations."""
    failed = sum(not r.ok for r in results)
    report.note(
        CHECK,
        f"{label}: {len(results)} compiled, {failed} failed ({wall:.1f} s wall, {cpu:.1f} s CPU"
        f" in this process; GPUNN_NVRTC_MATRIX={MATRIX})",
    )


def warnings_of(result: cc.CompileResult) -> list[str]:
    """NVRTC's warning lines (gpunn's kernels must compile cleanly, as with nvcc -Werror)."""
    return [line for line in result.log.splitlines() if "warning" in line.lower()]


def test_every_kernel_is_probed_and_will_be_compiled(
    usage: cc.RecordingXp, jobs: list[cc.ElementwiseJob]
) -> None:
    """Each ElementwiseKernel is called by a probe, each .cu file is built as a RawModule and
    every kernel it defines is taken with get_function: so each is compiled below."""
    assert {j.src.name for j in jobs} == {s.name for s in gk.ELEMENTWISE_SOURCES}
    modules = {job.name: job for job in cc.gpunn_raw_modules(usage)}
    assert set(modules) == set(cu_files()), "a .cu file that no probe builds, or code that is none"
    for filename, job in modules.items():
        defined = re.findall(r'extern "C" __global__ void (\w+)\(', read_cu(filename))
        assert defined and set(job.functions) == set(defined), (filename, job.functions, defined)


def test_a_kernel_no_probe_calls_is_reported(
    usage: cc.RecordingXp, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = Elementwise("gpunn_unprobed", "T x", "T y", "y = x;")
    monkeypatch.setattr(gk, "ELEMENTWISE_SOURCES", (*gk.ELEMENTWISE_SOURCES, extra))
    with pytest.raises(ValueError, match="gpunn_unprobed is never called by the self-check"):
        cc.gpunn_jobs(usage)


# ------------------------------------------------------------------------------------------
# gpunn's kernels compile
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_elementwise_kernels_compile(
    target: cc.Target | str, jobs: list[cc.ElementwiseJob]
) -> None:
    target = target_or_unavailable(target)
    items = plan(target, jobs)
    start, cpu = time.perf_counter(), time.process_time()
    results = cc.compile_elementwise_batch(items, target.arch, target.nvrtc, workers=WORKERS)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    log(f"ElementwiseKernels, {target}", results, wall, cpu)
    assert len(results) == len(items) and (items or MATRIX == "smoke")
    failed = [r for r in results if not r.ok]
    assert not failed, "NVRTC rejected:\n" + cc.format_results(failed)
    for r in results:  # what ElementwiseKernel's get_function(name) will look up
        assert r.has_symbol(r.kernel), f"{r.kernel}[{r.variant}]: no symbol {r.kernel}"
        assert "-ftz=true" in r.options, r.options  # what the shim's float32 emulation assumes
        assert not warnings_of(r), f"{r.kernel}[{r.variant}] {target}: {warnings_of(r)}"


@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_raw_modules_compile(target: cc.Target | str, usage: cc.RecordingXp) -> None:
    """Each RawModule as gpunn builds it (code and options as recorded), and each function gpunn
    takes from it with get_function is in the binary."""
    target = target_or_unavailable(target)
    start, cpu = time.perf_counter(), time.process_time()
    results = []
    for job in cc.gpunn_raw_modules(usage):
        r = cc.compile_raw_module(
            job.code, job.options, target.arch, target.nvrtc, job.name, **dict(job.kwargs)
        )
        results.append(r)
        assert r.ok, "NVRTC rejected:\n" + r.summary()
        assert "-ftz=true" in r.options, r.options
        assert not warnings_of(r), f"{job.name} {target}: {warnings_of(r)}"
        for function in job.functions:
            assert r.has_symbol(function), f"{job.name}: get_function({function!r}) would fail"
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    log(f"RawModules, {target}", results, wall, cpu)


# ------------------------------------------------------------------------------------------
# The check itself: it catches errors, and it compiles what CuPy compiles
# ------------------------------------------------------------------------------------------

BROKEN = Elementwise(
    "gpunn_broken", "T x, T slope", "T y", "y = x > (T)0 ? x : undefined_function(slope * x);"
)

BROKEN_CU = """
extern "C" __global__ void gpunn_broken(const float* x, float* y) {
    y[threadIdx.x] = x[threadIdx.x] * 2.0f  // missing semicolon
}
"""


def test_compile_errors_are_reported() -> None:
    r = cc.compile_elementwise(BROKEN, "float32", "strided", scalars=["slope"])
    assert not r.ok
    assert 'identifier "undefined_function" is undefined' in r.log, r.log
    assert "gpunn_broken" in r.source and "-ftz=true" in r.options  # CuPy got that far
    assert "FAILED" in r.summary() and "undefined_function" in r.summary()

    r = cc.compile_raw_module(BROKEN_CU, ("--std=c++17",), name="broken.cu")
    assert not r.ok
    assert 'expected a ";"' in r.log, r.log


WARNS_CU = """
extern "C" __global__ void gpunn_warns(float* y) {
    int unused = 1;  // NVRTC: declared but never referenced
    y[threadIdx.x] = 0.0f;
}
"""


def test_warnings_are_seen() -> None:
    r = cc.compile_raw_module(WARNS_CU, ("--std=c++17",), name="warns.cu")
    assert r.ok and warnings_of(r) and "unused" in r.log, r.log


def test_a_wrong_call_is_caught_by_cupys_type_check() -> None:
    """The recording array module runs CuPy's own argument checks on each call."""
    xp = cc.RecordingXp()
    kernel = xp.ElementwiseKernel("T z, T b", "T a", "a = z + b;", "gpunn_add")
    z32, b64 = xp.zeros((2, 3), dtype="float32"), xp.zeros(3, dtype="float64")
    with pytest.raises(TypeError, match="Type is mismatched"):
        kernel(z32, b64)
    with pytest.raises(TypeError, match="arguments"):
        kernel(z32)


def _string_constants(module: Any) -> set[str]:
    """Every string literal in ``module``'s code, docstrings left out."""
    tree = ast.parse(inspect.getsource(module))
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            docstrings.add(id(body[0].value))
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    }


def test_options_are_what_cupy_passes(jobs: list[cc.ElementwiseJob]) -> None:
    """The options reaching NVRTC are CuPy's (cuda_on_cpu.nvrtc writes none of them), include
    -ftz=true, and flush-to-zero really reaches the generated code."""
    # 1. cuda_on_cpu.nvrtc contains no compiler option: whatever NVRTC receives, CuPy produced
    option = re.compile(r"(^|\s)--?(ftz|arch|gpu-architecture|std|I|D|O|device|default-device)")
    found = {s for s in _string_constants(cc) if option.search(s)}
    assert not found, f"cuda_on_cpu.nvrtc writes compiler options: {found}"

    # 2. ElementwiseKernel: CuPy's assembled options, then what _compile_with_cache_cuda and
    #    compile_using_nvrtc append; the source is CuPy's header includes + its generated code
    job = jobs[0]
    r = cc.compile_elementwise(job.src, "float32", "contiguous", "90", scalars=job.scalars)
    # CuPy 13 adds the include directory of the nvidia-cuda-runtime wheel after -ftz=true
    wheel_includes = getattr(cupy_compiler, "_get_extra_include_dir_opts", tuple)()
    tail = ("-ftz=true", *wheel_includes, "-arch=sm_90", "--device-as-default-execution-space")
    assert r.options == cupy_core.assemble_cupy_compiler_options(()) + tail
    assert ("--std=c++17" if cc.CUPY_MAJOR >= 14 else "--std=c++11") in r.options
    includes = "".join(f"#include <{h}>\n" for h in cupy_core._cupy_header_list)
    expected = cc.elementwise_source(job.src, "float32", "contiguous", job.scalars)
    assert r.source == includes + expected

    # 3. RawModule: gpunn's --std=c++17 is kept once (CuPy adds its default only when none)
    r = cc.compile_raw_module(read_cu("softmax_xent.cu"), ("--std=c++17",), "90")
    assert r.options == cupy_core.assemble_cupy_compiler_options(("--std=c++17",)) + tail
    assert r.options.count("--std=c++17") == 1
    assert r.source == read_cu("softmax_xent.cu")  # RawModule: no headers prepended

    # 4. FTZ in the code: with CUPY_COMPILE_WITH_PTX's path, float32 math is .ftz in the PTX
    r = cc.compile_elementwise(
        job.src, "float32", "contiguous", "90", scalars=job.scalars, ptx=True
    )
    assert "-arch=compute_90" in r.options
    ptx = r.binary.decode()
    assert ".ftz.f32" in ptx, ptx[-2000:]
    r = cc.compile_raw_module(read_cu("softmax_xent.cu"), ("--std=c++17",), "90", ptx=True)
    assert ".ftz.f32" in r.binary.decode()


def test_layouts_select_cupys_template_arguments(jobs: list[cc.ElementwiseJob]) -> None:
    """Each layout yields CuPy's CArray<T, ndim, c_contiguous, 32-bit>/CIndexer<ndim, 32-bit>."""
    job = next(j for j in jobs if j.src.name == "gpunn_bias_relu")  # (z, b, slope) -> a
    src = {
        name: cc.elementwise_source(job.src, "float32", name, job.scalars) for name in cc.LAYOUTS
    }
    assert len(set(src.values())) == len(cc.LAYOUTS)
    assert "const float slope" in src["contiguous"]  # a scalar, not an array
    assert "const CArray<float, 1, 1, 1> _raw_z" in src["contiguous"]
    assert "CIndexer<1, 1> _ind" in src["contiguous"]
    assert "const CArray<float, 2, 1, 1> _raw_z" in src["broadcast"]
    assert "const CArray<float, 2, 0, 1> _raw_b" in src["broadcast"]
    assert "CArray<float, 2, 0, 1> _raw_a" in src["strided"]
    assert "CArray<float, 1, 1, 0> _raw_a, CIndexer<1, 1> _ind" in src["large"]
    assert "CArray<float, 1, 1, 0> _raw_a, CIndexer<1, 0> _ind" in src["huge"]
    assert "CArray<float, 2, 0, 0> _raw_a, CIndexer<2, 0> _ind" in src["huge_strided"]
    assert "typedef double T;" in cc.elementwise_source(
        job.src, "float64", "contiguous", job.scalars
    )


def test_ctypes_binding_matches_cupys() -> None:
    """The ctypes NVRTC binding, given CuPy's own library, produces CuPy's exact binary."""
    own = cc.cupy_nvrtc()
    path = cc.find_nvrtc(own.version[0])
    if path is None:
        pytest.skip(f"no libnvrtc.so.{own.version[0]} file found for ctypes")
    via_ctypes = cc.Nvrtc(own.label, path)
    if via_ctypes.version != own.version:
        pytest.skip(f"{path} is NVRTC {via_ctypes.version}, CuPy's is {own.version}")
    code = read_cu("softmax_xent.cu")
    a = cc.compile_raw_module(code, ("--std=c++17",), "90", own)
    b = cc.compile_raw_module(code, ("--std=c++17",), "90", via_ctypes)
    assert a.ok and b.ok
    assert (a.source, a.options) == (b.source, b.options)
    # CuPy's getCUBIN drops the buffer's last byte ("trailing NULL"); the rest is identical
    assert b.binary.startswith(a.binary) and len(b.binary) - len(a.binary) <= 1


def test_cupy_version_is_supported() -> None:
    assert cc.CUPY_MAJOR in (13, 14), (
        f"cuda_on_cpu.nvrtc is tested with CuPy 13.x/14.x, not {cupy.__version__}"
    )


def test_layouts_match_cupys_array_flags() -> None:
    """The flags each layout declares are the ones CuPy computes for such arrays (arrays over
    no memory: CuPy's ndarray logic runs, nothing is allocated)."""
    z = cc.fake_array((1000, 33), "float32")
    bias = cupy.broadcast_to(cc.fake_array((33,), "float32"), z.shape)  # as the kernel sees b
    views = {
        "contiguous": z,
        "broadcast": bias,
        "strided": z[:, ::2],
        "large": cc.fake_array((2**29 + 1,), "float32"),  # 2 GiB + 4 bytes, 2**29 + 1 elements
        "huge": cc.fake_array((2**31 + 1,), "float32"),
        "huge_strided": cc.fake_array((2**16, 2**16 + 3), "float32")[:, ::2],
    }
    for name, a in views.items():
        layout = cc.LAYOUTS[name]
        contiguous = layout.contiguous_inputs and not layout.broadcast_last_input
        assert a._c_contiguous == contiguous, name
        assert a._index_32_bits == layout.index_32_bits, name
        assert (a.size <= 2**31) == layout.indexer_32_bits, name  # CuPy's Indexer rule
        assert a.reduced_view().ndim == layout.ndim, name  # CuPy's dimension reduction
    assert not views["large"][:10]._index_32_bits  # a view keeps its base's 64-bit indexing
