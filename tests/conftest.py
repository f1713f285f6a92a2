"""Shared fixtures: the `backend` fixture runs a test body on NumPy and, where usable, on CuPy."""

from __future__ import annotations

import warnings

import pytest

import gpunn
from gpunn import backend as backend_module


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
