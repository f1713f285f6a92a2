"""Test support that checks gpunn's GPU code on a machine without a GPU (pytest marker
``cuda_on_cpu``).

Four checks, each a test module ``tests/test_cuda_on_cpu_*.py`` (the device-rule emulation of
the training loop lives in ``gpunn.testing.fake_cupy``, tested by ``tests/test_device_rules.py``
and ``tests/test_fake_cupy.py``):

* ``nvrtc``: every kernel compiled exactly as CuPy compiles it at its first launch (CuPy's own
  code generator, options and compiler, the real NVRTC of CUDA 12 and 13, sm_80 and sm_90),
  stopping before the binary would be loaded onto a device.
* ``emulate`` with ``cuda_shim.h``: CUDA C run unchanged on the CPU, one host thread per CUDA
  thread (RawKernel sources as they are; ElementwiseKernel operations inside a one-thread-per-
  element kernel), with float32 flush-to-zero as CuPy's ``-ftz=true`` gives it.
* ``cupy_names``: every CUDA-specific CuPy attribute gpunn mentions exists in the installed CuPy,
  including modules that need a library this machine lacks (imported against stub libraries).
* ``report``: the summary at the end of a pytest run of what ran (the "note").

A check whose tool is missing (CuPy, an NVRTC library, g++) skips with the reason, except under
CI (``CI`` set to a true value), where it fails instead: CI must run every one of them.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest

#: the test module that runs each RawKernel source (``gpunn/kernels/*.cu``) under the CUDA shim
#: against its reference, over the shapes of the parity tests: empty, one row, rows wider and
#: narrower than the block, more rows than blocks, bad input. A new .cu file needs its own
#: (tests/test_cuda_on_cpu_kernels.py fails until it is registered here).
EMULATION_TESTS: dict[str, str] = {"softmax_xent.cu": "test_cuda_on_cpu_softmax_xent.py"}


def in_ci() -> bool:
    """Whether this run is CI's (``CI`` set to 1/true/yes): then no cuda_on_cpu check may skip."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str, *, module_level: bool = False) -> NoReturn:
    """Skip the calling test because a tool it needs is missing; under CI, fail it instead."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: every cuda_on_cpu check must run)", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def require_module(name: str, install: str) -> ModuleType:
    """``importlib.import_module(name)``, or :func:`unavailable` (at module level) saying how to
    install it."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # any import failure (ImportError, a missing library) counts
        unavailable(f"{name} cannot be imported ({exc}); {install}", module_level=True)


def require_compiler() -> str:
    """The path of ``g++`` (the CUDA shim needs C++20: g++ 11 or later), or :func:`unavailable`
    at module level."""
    path = shutil.which("g++")
    if path is None:
        unavailable("g++ is not on PATH: the CUDA shim compiles CUDA C with it", module_level=True)
    return path
