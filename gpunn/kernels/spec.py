"""What a fused kernel is made of: its reference, CuPy builder, self-check probe and source.

A :class:`KernelSpec` ties one fused GPU kernel to the plain Python composition of core functions
whose math it repeats (the *reference*, used as the fallback and by the tests). An
:class:`Elementwise` holds the source of one CuPy ``ElementwiseKernel`` as plain data, so the very
same operation text is compiled by CuPy at run time and, in the tests, compiled as CuPy would and
run on the CPU; kernels are built once per array module and cached here (never inside the
training loop).

gpunn.kernels sits one floor above the pure math (``gpunn.math``): it imports the functions it
repeats and ``gpunn.backend``, and nothing below it imports the kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Impl = Callable[..., Any]
Array = Any  # a numpy.ndarray or a cupy.ndarray


@dataclass(frozen=True)
class KernelSpec:
    """One dispatchable operation: the fused fast path and the reference it must agree with."""

    name: str  # the dispatch name, e.g. "sgd_update"
    #: the functions whose math the kernel repeats ("gpunn.math.optim.sgd_update")
    repeats: tuple[str, ...]
    reference: Impl  # plain composition of core functions; same call signature as the fused form
    build_fused: Callable[[Any], Impl]  # xp -> fused implementation (compiles lazily, on CuPy)
    probe: Callable[[Impl, Any], list[Any]]  # run an implementation on small fixed inputs on xp


@dataclass(frozen=True)
class Elementwise:
    """The source of one CuPy ``ElementwiseKernel``: parameter lists and the per-element C code.

    ``in_params``/``out_params`` use CuPy's syntax (``"T z, T b, int32 flag"``; ``T`` is the
    array dtype). ``operation`` is C++ run once per element, reading the inputs and assigning the
    outputs (which may also be read: the optimizer kernels update their outputs in place).
    """

    name: str
    in_params: str
    out_params: str
    operation: str


#: (array module, name) -> built kernel object. Keyed by the module object, not its name, so that
#: a stand-in module called "cupy" (gpunn.testing.fake_cupy) never shares kernels with CuPy.
_BUILT: dict[tuple[Any, str], Any] = {}


def elementwise(xp: Any, src: Elementwise) -> Any:
    """The ``xp.ElementwiseKernel`` for ``src``, constructed on first use and cached per module.

    Constructing it is cheap; CuPy compiles (NVRTC) on the first call per dtype and device and
    caches the binary, in memory and on disk. One object serves every device.
    """
    key = (xp, src.name)
    kernel = _BUILT.get(key)
    if kernel is None:
        kernel = xp.ElementwiseKernel(src.in_params, src.out_params, src.operation, src.name)
        _BUILT[key] = kernel
    return kernel


def cached(xp: Any, key: str, build: Callable[[], Any]) -> Any:
    """``build()`` once per (array module, key); for RawModules and other compiled objects."""
    full = (xp, key)
    obj = _BUILT.get(full)
    if obj is None:
        obj = build()
        _BUILT[full] = obj
    return obj


# ------------------------------------------------------------------------------------------
# Comparing a fused result with the reference (used by the self-check)
# ------------------------------------------------------------------------------------------

#: (rtol, atol) by dtype name: float32 allows a few ulps of reordering (sums, FMA contraction)
TOLERANCES = {"float32": (1e-4, 1e-6), "float64": (1e-10, 1e-13)}


def compare(fused: list[Any], reference: list[Any], xp: Any) -> float:
    """Worst |f - r| / max|r| over all outputs; raises AssertionError if any output differs.

    Outputs must match in shape and dtype and satisfy ``allclose(f, r, rtol, atol)`` with the
    tolerance of their dtype (NaN equals NaN).
    """
    if len(fused) != len(reference):
        raise AssertionError(f"{len(fused)} outputs, the reference gives {len(reference)}")
    worst = 0.0
    for i, (f, r) in enumerate(zip(fused, reference, strict=True)):
        f, r = xp.asarray(f), xp.asarray(r)
        if f.shape != r.shape or f.dtype != r.dtype:
            raise AssertionError(
                f"output {i}: {f.dtype}{f.shape}, the reference gives {r.dtype}{r.shape}"
            )
        if r.size == 0:
            continue
        rtol, atol = TOLERANCES.get(r.dtype.name, (0.0, 0.0))
        err = float(xp.abs(f - r).max()) / max(float(xp.abs(r).max()), 1e-30)
        worst = max(worst, err if err == err else float("inf"))
        if not bool(xp.allclose(f, r, rtol=rtol, atol=atol, equal_nan=True)):
            raise AssertionError(
                f"output {i} ({r.dtype}{r.shape}) differs from the reference: "
                f"max relative error {err:.3g} (rtol {rtol:g}, atol {atol:g})"
            )
    return worst
