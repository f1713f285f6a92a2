"""Shared fixtures (the `backend` fixture runs a test body on NumPy and, where usable, on CuPy)
and the note on the cuda_on_cpu checks printed at the end of a run."""

from __future__ import annotations

import warnings

import pytest

import gpunn
from gpunn import backend as backend_module

from cuda_on_cpu import in_ci
from cuda_on_cpu import report as cuda_on_cpu_report


def _cupy_status() -> tuple[bool, str]:
    usable, reason, _ = backend_module._probe_cupy(0)
    return usable, reason


@pytest.fixture(
    params=[
        pytest.param("numpy", id="numpy"),
        pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
    ]
)
def backend(request: pytest.FixtureRequest) -> gpunn.Backend:
    """Each backend in turn: NumPy always; CuPy only where a CUDA device is usable."""
    if request.param == "cupy":
        usable, reason = _cupy_status()
        if not usable:
            pytest.skip(f"CuPy backend unavailable: {reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gpunn.get_backend(request.param)


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
