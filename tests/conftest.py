"""Shared fixtures: the `backend` fixture runs a test body on NumPy, on CuPy where a GPU is
usable, and on the device-rule emulation of CuPy (``gpunn.testing.fake_cupy``) everywhere."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import gpunn
from gpunn import backend as backend_module
from gpunn.testing import fake_cupy

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
