"""Shared fixtures and the note on the cuda_on_cpu checks printed at the end of a run.

The `backend` fixture runs a test body on NumPy, on CuPy where a GPU is usable, and on the
device-rule emulation of CuPy (``gpunn.testing.fake_cupy``) everywhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import gpunn
from gpunn import backend as backend_module
from gpunn.testing import fake_cupy

from cuda_on_cpu import in_ci
from cuda_on_cpu import report as cuda_on_cpu_report

#: The emulated GPU: GPU 1 of two (current for the test body, as a user's own code would have
#: it), fused kernels off (the emulation runs no CUDA code), float32 subnormals flushed as CuPy's
#: kernels flush them. Every array operation obeys CuPy's rules there: no NumPy array in a
#: device operation, host reads only through .get() and friends, nothing on another device.
EMULATED = "emulated-cupy"


def _cupy_status() -> tuple[bool, str]:
    usable, reason, _ = backend_module._probe_cupy(0)
    return usable, reason


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``backend``: NumPy, CuPy (``gpu``) and the emulation (``cuda_on_cpu``).

    Tests marked ``slow`` (learning runs of thousands of steps, which check convergence, not
    device rules) skip the emulation, whose every operation costs a few Python calls more.
    """
    if "backend" not in metafunc.fixturenames:
        return
    params = [
        pytest.param("numpy", id="numpy"),
        pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
    ]
    if metafunc.definition.get_closest_marker("slow") is None:
        params.append(pytest.param(EMULATED, id=EMULATED, marks=pytest.mark.cuda_on_cpu))
    metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Each backend in turn: NumPy always; CuPy only where a CUDA device is usable; the
    emulation of CuPy always (see EMULATED)."""
    if request.param == EMULATED:
        monkeypatch.setenv("GPUNN_FUSED", "0")
        with fake_cupy.installed(devices=2, ftz=True):
            emulated = gpunn.get_backend("cupy:1")
            with emulated.activate():
                yield emulated
        return
    if request.param == "cupy":
        usable, reason = _cupy_status()
        if not usable:
            pytest.skip(f"CuPy backend unavailable: {reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield gpunn.get_backend(request.param)


# ------------------------------------------------------------------------------------------
# The note on the GPU checks that run without a GPU (pytest -m cuda_on_cpu; tests/cuda_on_cpu/)
# ------------------------------------------------------------------------------------------


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    cuda_on_cpu_report.record(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    cuda_on_cpu_report.record(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = cuda_on_cpu_report.summary_lines()
    if lines:
        terminalreporter.section("GPU code checked without a GPU (cuda_on_cpu)")
        for line in lines:
            terminalreporter.write_line(line)
    skipped = cuda_on_cpu_report.ci_failures()
    if in_ci() and skipped:
        terminalreporter.write_line(
            f"CI is set: {len(skipped)} cuda_on_cpu test(s) skipped, which fails the run", red=True
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI a skipped cuda_on_cpu test fails the run: those checks must run there."""
    if in_ci() and cuda_on_cpu_report.ci_failures() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
