"""Every fused kernel of gpunn.kernels run on the CPU under the CUDA shim (an emulation: nothing
here is a GPU result), driven by the kernel registry so that a kernel added later is covered.

* **Self-check under emulation.** For each ``KernelSpec`` the fused implementation is built on an
  array module that is NumPy with CuPy's ``ElementwiseKernel`` and ``RawModule`` emulated
  (tests/cuda_on_cpu/emulate.py): its real Python wrapper launches its real CUDA (a ``.cu`` file
  unchanged; an ElementwiseKernel's operation inside a one-thread-per-element kernel), and its
  self-check probe is compared with the reference's, as gpunn's dispatch does on a GPU. Every
  registered ElementwiseKernel must run in float32 and float64, every ``.cu`` file must be built
  and every kernel in it launched, and every ``.cu`` file must have its own test module of edge
  cases (``cuda_on_cpu.EMULATION_TESTS``).
* **Flush-to-zero.** CuPy compiles every kernel with ``-ftz=true`` (test_cuda_on_cpu_nvrtc.py
  checks the option), so on a GPU a float32 subnormal reads as zero and a subnormal result is
  written as zero; the shim does the same. The ElementwiseKernel probes are rerun with float32
  and float64 subnormals (and large magnitudes, whose ``exp`` underflows into subnormals) put
  into their inputs. The emulated kernels must match the FTZ-aware expectation of
  ``gpunn.testing.ftz`` (the reference with subnormals flushed, what tests comparing a GPU
  result exactly must use) and must *not* match the naive NumPy expectation: where it expects a
  subnormal, the kernel gives zero, which an exact comparison on a GPU would report.
"""

from __future__ import annotations

import itertools
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpunn import kernels
from gpunn.kernels.cuda_source import cu_files, read_cu
from gpunn.kernels.spec import TOLERANCES, KernelSpec, compare
from gpunn.testing import ftz

from cuda_on_cpu import EMULATION_TESTS, require_compiler
from cuda_on_cpu.emulate import emulated_array_module, kernel_names

require_compiler()
pytestmark = pytest.mark.cuda_on_cpu

TESTS = Path(__file__).resolve().parent


@dataclass
class Run:
    """One kernel's self-check probe, run fused under emulation and as the reference."""

    fused: list[Any]
    reference: list[Any]
    elementwise: set[str]  # ElementwiseKernel names its wrapper launched
    cu_files: set[str]  # .cu files its wrapper built a RawModule from
    raw_launches: set[str]  # RawKernel functions launched


@pytest.fixture(scope="module")
def emulated() -> types.ModuleType:
    """NumPy with CuPy's kernels emulated; gpunn's ElementwiseKernels compiled in one g++ run."""
    return emulated_array_module(elementwise=kernels.ELEMENTWISE_SOURCES)


def run_probe(spec: KernelSpec, xp: Any, emulated: Any) -> Run:
    """Run ``spec``'s probe with its fused form on ``xp`` (emulated, or a wrapper of it) and with
    its reference on NumPy; record which kernels ran."""
    files = {read_cu(f): f for f in cu_files()}
    launches_before = dict(emulated.elementwise_launches)
    modules_before = len(emulated.raw_modules)
    fused = spec.probe(spec.build_fused(xp), xp)
    reference = spec.probe(spec.reference, np)
    elementwise = {
        name
        for (name, _), n in emulated.elementwise_launches.items()
        if n > launches_before.get((name, _), 0)
    }
    new_modules = emulated.raw_modules[modules_before:]
    return Run(
        fused,
        reference,
        elementwise,
        {files.get(m.code, "?") for m in new_modules},
        {name for m in new_modules for name, _, _ in m.launches},
    )


@pytest.fixture(scope="module")
def runs(emulated: types.ModuleType) -> dict[str, Run]:
    """Each registered kernel's self-check probe, run once."""
    return {name: run_probe(kernels.spec(name), emulated, emulated) for name in kernels.NAMES}


# ------------------------------------------------------------------------------------------
# The self-check of every kernel, and coverage of the registry
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", kernels.NAMES)
def test_every_fused_kernel_passes_its_self_check_under_emulation(
    name: str, runs: dict[str, Run]
) -> None:
    run = runs[name]
    assert run.elementwise or run.raw_launches, f"{name}: no CUDA kernel ran"
    worst = compare(run.fused, run.reference, np)  # gpunn's own self-check tolerance
    assert worst < TOLERANCES["float32"][0]


def test_every_elementwise_kernel_ran_in_both_dtypes(
    runs: dict[str, Run], emulated: types.ModuleType
) -> None:
    ran = {name for run in runs.values() for name in run.elementwise}
    assert ran == {src.name for src in kernels.ELEMENTWISE_SOURCES}
    for src in kernels.ELEMENTWISE_SOURCES:
        for dtype in ("float32", "float64"):
            assert emulated.elementwise_launches[src.name, dtype] > 0, (src.name, dtype)


@pytest.mark.parametrize("filename", cu_files())
def test_every_cu_file_runs_every_kernel_it_defines(filename: str, runs: dict[str, Run]) -> None:
    built = [run for run in runs.values() if filename in run.cu_files]
    assert built, f"no fused kernel builds a RawModule from {filename}"
    launched = set().union(*(run.raw_launches for run in built))
    assert set(kernel_names(read_cu(filename))) <= launched


@pytest.mark.parametrize("filename", cu_files())
def test_every_cu_file_has_its_own_emulation_tests(filename: str) -> None:
    """A RawKernel needs the edge cases of its structure tested (blocks, warps, grid stride...):
    its own module, registered in tests/cuda_on_cpu/__init__.py."""
    module = EMULATION_TESTS.get(filename)
    assert module is not None, (
        f"{filename} has no emulation tests: write tests/test_cuda_on_cpu_<name>.py (see "
        "test_cuda_on_cpu_softmax_xent.py) and register it in cuda_on_cpu.EMULATION_TESTS"
    )
    text = (TESTS / module).read_text(encoding="utf-8")
    assert "pytestmark = pytest.mark.cuda_on_cpu" in text
    assert re.search(rf'^CU_FILE = "{re.escape(filename)}"$', text, re.MULTILINE), module


# ------------------------------------------------------------------------------------------
# Flush-to-zero: the FTZ-aware expectation holds, the naive one does not
# ------------------------------------------------------------------------------------------

SUBNORMALS = {
    "float32": np.array([1e-45, -3e-45, 4e-40, -1.1e-38], np.float32),
    "float64": np.array([5e-324, -1e-320, 3e-310, -2e-308]),
}
#: magnitudes whose exp(-|x|) is subnormal (float32: exp(-90) = 8e-40; float64: exp(-720))
LARGE = {
    "float32": np.array([-90.0, 95.0, -100.0, 92.0], np.float32),
    "float64": np.array([-720.0, 725.0, -730.0, 722.0]),
}


class Injecting(types.ModuleType):
    """An array module whose ``asarray``, called by a kernel's self-check probe, puts subnormals
    (every 5th element, at the same positions in every array so that they meet in a kernel)
    and large magnitudes (every 7th, shifted from one array to the next) into float data."""

    def __init__(self, base: Any, probe: Callable[..., Any]) -> None:
        super().__init__(f"injecting[{base.__name__}]")
        self._base, self._probe = base, probe.__code__
        self._arrays = itertools.count()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        out = np.array(a, dtype=dtype)
        if sys._getframe(1).f_code is not self._probe or out.dtype.name not in SUBNORMALS:
            return self._base.asarray(out)  # a wrapper's or reference's own asarray: untouched
        flat, i = out.reshape(-1), np.arange(out.size)
        shift = next(self._arrays)
        sub, large = SUBNORMALS[out.dtype.name], LARGE[out.dtype.name]
        at = i % 7 == (3 + shift) % 7
        flat[at] = large[(i[at] // 7 + shift) % len(large)]
        at = i % 5 == 1
        flat[at] = sub[(i[at] // 5) % len(sub)]
        return self._base.asarray(out)


def injected_probe(spec: KernelSpec, emulated: Any) -> tuple[list[Any], list[Any], list[Any]]:
    """(fused under emulation, FTZ-aware reference, naive reference) on injected inputs."""
    xp = Injecting(emulated, spec.probe)
    with np.errstate(all="ignore"):  # exp overflows and underflows on purpose
        fused = spec.probe(spec.build_fused(xp), xp)
        aware = spec.probe(ftz.flushing(spec.reference), Injecting(np, spec.probe))
        naive = spec.probe(spec.reference, Injecting(np, spec.probe))
    return fused, aware, naive


def assert_as_expected(got: list[Any], want: list[Any]) -> None:
    """gpunn's self-check tolerance, and exactly the same zeros where the expectation is zero or
    subnormal (an exact comparison fails there, whatever the tolerance): a flushed result
    against an expected subnormal is a failure. A float32 result never holds a subnormal."""
    compare(got, want, np)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        g, w = np.asarray(g), np.asarray(w)
        tiny = np.abs(w) < np.finfo(w.dtype).tiny
        differ = tiny & ((g == 0) != (w == 0))
        if differ.any():
            raise AssertionError(
                f"output {k} ({w.dtype}): {int(differ.sum())} values where zero and subnormal "
                f"differ, e.g. got {g[differ][:3]}, expected {w[differ][:3]}"
            )
        if g.dtype == np.float32:
            sub = (g != 0) & (np.abs(g) < np.finfo(np.float32).tiny)
            assert not sub.any(), f"output {k}: float32 subnormals {g[sub][:3]} (not flushed)"


@pytest.mark.parametrize("name", kernels.NAMES)
def test_kernels_meet_the_ftz_aware_expectation_not_the_naive_one(
    name: str, emulated: types.ModuleType
) -> None:
    fused, aware, naive = injected_probe(kernels.spec(name), emulated)
    assert_as_expected(fused, aware)
    # the injected inputs do reach float32 subnormals: the naive expectation has them ...
    naive32 = [np.asarray(w) for w in naive if np.asarray(w).dtype == np.float32]
    tiny = np.finfo(np.float32).tiny
    assert any(((w != 0) & (np.abs(w) < tiny)).any() for w in naive32), name
    # ... and the emulated kernel does not produce them: the naive expectation fails
    with pytest.raises(AssertionError, match="zero and subnormal differ"):
        assert_as_expected(fused, naive)
    # float64 keeps its subnormals: there the naive expectation is the right one
    got64 = [g for g, w in zip(fused, naive, strict=True) if np.asarray(w).dtype == np.float64]
    want64 = [w for w in naive if np.asarray(w).dtype == np.float64]
    assert_as_expected(got64, want64)
    assert any((np.abs(w) < np.finfo(np.float64).tiny).any() for w in want64)


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.5])
def test_leaky_relu_at_subnormal_z_is_what_the_activation_tests_expect(
    slope: float, emulated: types.ModuleType
) -> None:
    """tests/test_activations.py compares a GPU's leaky ReLU exactly with max(z, slope z). At
    z = 1e-45 NumPy says 1e-45 and the GPU says 0: the expectation must be the FTZ-aware one
    (gpunn.testing.ftz.expected, which that test uses); the naive one fails here as on a GPU."""
    z = np.array([1e-45, -1e-45, 3e-39, -1e-38, -1.2e-36, 2.0, -2.0, 0.0], np.float32)
    forward = kernels.spec("bias_activation_forward").build_fused(emulated)
    a = forward(z[None, :], np.zeros(z.size, np.float32), "leaky_relu", slope=slope, xp=emulated)

    def leaky(z: np.ndarray) -> np.ndarray:
        return np.maximum(z, np.float32(slope) * z)

    np.testing.assert_array_equal(a[0], ftz.expected(leaky, z))
    with pytest.raises(AssertionError, match="Mismatched elements"):
        np.testing.assert_array_equal(a[0], ftz.expected(leaky, z, ftz=False))
