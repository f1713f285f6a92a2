"""The note printed at the end of a pytest run: which ``cuda_on_cpu`` checks ran, and what not.

``tests/conftest.py`` feeds every test report to :func:`record` and prints
:func:`summary_lines`; tests add details with :func:`note` (the NVRTC targets and how many
compilations, for instance). Under CI a skipped ``cuda_on_cpu`` test fails the run
(:func:`ci_failures`): the checks exist to run there, and a skip would hide that they did not.
"""

from __future__ import annotations

import collections
from pathlib import PurePosixPath
from typing import Any

#: test module -> the check it belongs to (other cuda_on_cpu tests: the device-rule emulation)
CHECKS: dict[str, str] = {
    "test_cuda_on_cpu_nvrtc.py": "compiled as CuPy compiles them (NVRTC)",
    "test_cuda_on_cpu_shim.py": "run on the CPU under the CUDA shim",
    "test_cuda_on_cpu_softmax_xent.py": "run on the CPU under the CUDA shim",
    "test_cuda_on_cpu_kernels.py": "run on the CPU under the CUDA shim",
    "test_cuda_on_cpu_names.py": "CuPy names checked against the installed CuPy",
}
DEVICE_RULES = "training loop on the device-rule emulation (gpunn.testing.fake_cupy)"
ORDER = (*dict.fromkeys(CHECKS.values()), DEVICE_RULES)

_counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
_skips: list[tuple[str, str]] = []  # (nodeid, reason)
_notes: dict[str, list[str]] = collections.defaultdict(list)


def check_of(nodeid: str) -> str:
    """The check a test (or test module) belongs to, from its file name."""
    return CHECKS.get(PurePosixPath(nodeid.split("::")[0]).name, DEVICE_RULES)


def record(report: Any) -> None:
    """Count one test report (``pytest_runtest_logreport``/``pytest_collectreport``) if it is a
    cuda_on_cpu test, or the collection of one of the check modules (a module-level skip)."""
    nodeid = report.nodeid
    if report.when != "collect":
        if "cuda_on_cpu" not in report.keywords:
            return
        if report.when != "call" and report.outcome == "passed":
            return  # setup and teardown that passed: the call is counted
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
    else:
        if PurePosixPath(nodeid).name not in CHECKS or report.outcome == "passed":
            return
        outcome = report.outcome  # a whole module skipped, or failing to import
    _counts[check_of(nodeid)][outcome] += 1
    if outcome == "skipped":
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _skips.append((nodeid, reason.removeprefix("Skipped: ")))


def note(check: str, line: str) -> None:
    """Add a line under ``check`` (one of :data:`ORDER`) in the summary."""
    _notes[check].append(line)


def summary_lines() -> list[str]:
    """The summary: per check, how many tests passed/failed/skipped, its notes, and each skip's
    reason. Empty when no cuda_on_cpu test ran."""
    lines = []
    for check in ORDER:
        counts = _counts.get(check)
        if not counts and not _notes.get(check):
            continue
        tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted((counts or {}).items()))
        lines.append(f"{check}: {tally or 'no tests'}")
        lines += [f"    {line}" for line in _notes.get(check, [])]
    if _skips:
        lines.append("skipped (the check did not run there):")
        lines += [f"    {nodeid}: {reason}" for nodeid, reason in _skips]
    return lines


def ci_failures() -> list[str]:
    """The cuda_on_cpu tests that were skipped: none may be, under CI."""
    return [f"{nodeid}: {reason}" for nodeid, reason in _skips]
