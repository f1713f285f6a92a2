"""Every CUDA-specific CuPy name gpunn uses exists in the installed CuPy (no GPU needed).

tests/cuda_on_cpu/cupy_names.py scans ``gpunn/`` statically for attribute chains rooted at CuPy
(``xp.cuda.Device(n).synchronize``, ``cupy._core._routines_linalg.set_compute_type``,
``cupy.cuda.nccl.NcclCommunicator(...).allReduce``...) and resolves each against the installed
CuPy. ``cupy.cuda.nccl`` and ``cupy.cuda.cublas`` cannot be imported on a machine without NCCL
and cuBLAS; the checker then builds stub libraries with the sonames and symbols CuPy's
extension modules need (nothing is ever called in them), so the real modules import and their
real attribute lists are checked. It runs in a subprocess: the stubs must not stay loaded in a
process that may use CuPy for real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import gpunn

from cuda_on_cpu import require_module, unavailable

cupy = require_module("cupy", "pip install -e '.[dev,cuda13]'")
CHECKER = Path(__file__).resolve().parent / "cuda_on_cpu" / "cupy_names.py"
pytestmark = pytest.mark.cuda_on_cpu

#: names gpunn uses that the installed CuPy lacks, on purpose (each with its reason); a bug
#: otherwise. Empty: every name is there.
KNOWN_MISSING: dict[str, str] = {}

SAMPLE = """
import importlib

import cupy
from cupy._core import _routines_linalg


def tf32(xp, on):
    linalg = xp._core._routines_linalg
    kind = linalg.COMPUTE_TYPE_TF32 if on else _routines_linalg.COMPUTE_TYPE_DEFAULT
    cupy._core.set_compute_type(xp.float32, kind)


def lookups(xp):
    names = ("get_compute_type", "COMPUTE_TYPE_FP16", "COMPUTE_TYPE_TF23")
    linalg = getattr(getattr(xp, "_core", None), "_routines_linalg", None)
    return [getattr(linalg, n) for n in names], hasattr(xp.cuda, "graph")


class Comm:
    def __init__(self, backend):
        self.nccl = importlib.import_module(f"{backend.xp.__name__}.cuda.nccl")
        self.pool = backend.xp.get_default_memory_pool()

    def run(self):
        self.nccl.NcclCommunicator.allReduce
        self.nccl.NCCL_FLOAT16
        self.pool.free_all_blocks()
        self.pool.free_everything()         # missing
        cupy.cuda.runtime.getDeviceCont()   # missing
        cupy.cuda.cublas.CUBLAS_TF32_TENSOR_OP_MATH  # missing: not in CuPy's cublas module
        cupy.cuda.cudnn.getVersion()        # missing in CuPy 14 (removed)
        cupy.exp(cupy.ones(3))              # a NumPy name: not this checker's business
"""


@pytest.fixture(scope="module")
def findings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """package -> {chain: finding} for gpunn and for SAMPLE, from one run of the checker."""
    missing_tools = [t for t in ("gcc", "nm", "readelf") if shutil.which(t) is None]
    if missing_tools:
        unavailable(f"{', '.join(missing_tools)} not on PATH: needed for the stub libraries")
    sample = tmp_path_factory.mktemp("names") / "sample"
    sample.mkdir()
    (sample / "mod.py").write_text(SAMPLE)
    gpunn_dir = Path(gpunn.__file__).resolve().parent
    done = subprocess.run(
        [sys.executable, str(CHECKER), str(gpunn_dir), str(sample), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert report["cupy"] == cupy.__version__
    return {
        "gpunn": {f["chain"]: f for f in report["packages"][str(gpunn_dir)]},
        "sample": {f["chain"]: f for f in report["packages"][str(sample)]},
    }


def by_status(found: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for chain, f in found.items():
        out.setdefault(f["status"], set()).add(chain)
    return out


def test_cupy_names_used_by_gpunn_exist(findings: dict[str, dict[str, Any]]) -> None:
    status = by_status(findings["gpunn"])
    missing = {c: findings["gpunn"][c]["where"] for c in status.get("missing", set())}
    assert set(missing) == set(KNOWN_MISSING), f"missing in CuPy {cupy.__version__}: {missing}"
    assert not status.get("unimportable"), status.get("unimportable")
    assert not status.get("unchecked"), status.get("unchecked")


@pytest.mark.parametrize(
    "chain",
    [
        "cupy.cuda.nccl.NcclCommunicator.().allReduce.()",  # needs libnccl: stubbed here
        "cupy._core._routines_linalg.set_compute_type",  # TF32, through getattr over names
        "cupy._core._routines_linalg.COMPUTE_TYPE_TF32",
        "cupy.cuda.Device.().synchronize.()",  # Backend.activate's context
        "cupy.cuda.runtime.getDeviceCount.()",
        "cupy.RawModule.()",
        "cupy.ElementwiseKernel.()",
    ],
)
def test_the_scan_sees_the_names_that_matter(
    findings: dict[str, dict[str, Any]], chain: str
) -> None:
    """A chain the scan stops seeing would no longer be checked: these must stay found."""
    assert findings["gpunn"][chain]["status"] == "ok", findings["gpunn"].get(chain)


def test_the_checker_finds_missing_names(findings: dict[str, dict[str, Any]]) -> None:
    status = {chain: f["status"] for chain, f in findings["sample"].items()}
    assert status["cupy._core.set_compute_type.()"] == "ok"
    assert status["cupy._core._routines_linalg.COMPUTE_TYPE_TF32"] == "ok"
    assert status["cupy._core._routines_linalg.COMPUTE_TYPE_DEFAULT"] == "ok"
    assert status["cupy._core._routines_linalg.get_compute_type"] == "ok"  # getattr over names
    assert status["cupy._core._routines_linalg.COMPUTE_TYPE_FP16"] == "ok"
    assert status["cupy._core._routines_linalg.COMPUTE_TYPE_TF23"] == "missing"
    assert status["cupy.cuda.graph"] == "ok"  # hasattr with a constant
    assert status["cupy.cuda.nccl.NcclCommunicator.allReduce"] == "ok"
    assert status["cupy.cuda.nccl.NCCL_FLOAT16"] == "ok"
    assert status["cupy.get_default_memory_pool.().free_all_blocks.()"] == "ok"
    assert status["cupy.get_default_memory_pool.().free_everything.()"] == "missing"
    assert status["cupy.cuda.runtime.getDeviceCont.()"] == "missing"
    assert status["cupy.cuda.cublas.CUBLAS_TF32_TENSOR_OP_MATH"] == "missing"
    if int(cupy.__version__.split(".")[0]) >= 14:
        assert status["cupy.cuda.cudnn.getVersion.()"] == "missing"
    assert not any(chain.startswith(("cupy.exp", "cupy.ones")) for chain in status)
