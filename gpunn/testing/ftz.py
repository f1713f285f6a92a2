"""Expected values as a GPU computes them: float32 subnormals flushed to zero (CuPy's -ftz=true).

CuPy compiles every kernel it launches (its ufuncs, ElementwiseKernels, RawKernels) with
``-ftz=true``: a float32 subnormal (0 < |x| < 2**-126, about 1.2e-38) that an arithmetic
instruction or a comparison reads counts as a zero of the same sign, and a subnormal result is
written as that zero. NumPy keeps subnormals. So an expectation computed with NumPy differs from
the GPU's result wherever a subnormal goes in or comes out, and an exact comparison fails there:
``max(z, 0.01 * z)`` at ``z = 1e-45`` is 1e-45 in NumPy and 0 on the GPU. float64 is never
flushed.

:func:`expected` computes an expectation the way the GPU does for an operation whose only
GPU-specific rounding is that flush: its float32 arguments are flushed, the function runs, its
float32 results are flushed. :func:`flushing` does the same for a function that updates arrays
in place (an optimizer step). What neither models: a subnormal *intermediate* that the function
then scales back into the normal range (``m / eps`` with a subnormal ``m``), where NumPy and the
GPU differ by far less than any tolerance a test would use; compare those with a tolerance.

Use it for every exact comparison of a backend's result with a NumPy expectation::

    a = backend.to_numpy(leaky_relu_forward(backend.asarray(z), slope, xp=backend.xp))
    want = ftz.expected(lambda z: np.maximum(z, np.float32(slope) * z), z, ftz=backend.is_gpu)
    np.testing.assert_array_equal(a, want)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from gpunn.backend import namespace

__all__ = ["expected", "flush_subnormals", "flushing"]


def flush_subnormals(a: Any) -> Any:
    """``a`` with its float32 subnormals replaced by zeros of the same sign (a new array, same
    shape); anything that is not a float32 array or scalar is returned unchanged."""
    xp = namespace(a)
    if getattr(a, "dtype", None) != xp.float32:
        return a
    subnormal = xp.abs(a) < xp.finfo(xp.float32).tiny  # zeros too: copysign keeps them
    return xp.where(subnormal, xp.copysign(xp.zeros_like(a), a), a)


def _flush_all(result: Any) -> Any:
    """:func:`flush_subnormals` of a result, or of each item of a tuple or list of results."""
    if isinstance(result, tuple | list):
        return type(result)(flush_subnormals(r) for r in result)
    return flush_subnormals(result)


def expected(fn: Callable[..., Any], *args: Any, ftz: bool = True, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` as a GPU computes it: with ``ftz`` (CuPy's default) its float32
    arguments are flushed (copies: the caller's arrays are left alone) and so are its float32
    results; ``ftz=False`` is the plain call (NumPy's answer). Shapes are ``fn``'s."""
    if not ftz:
        return fn(*args, **kwargs)
    flushed = [flush_subnormals(a) for a in args]
    return _flush_all(fn(*flushed, **{k: flush_subnormals(v) for k, v in kwargs.items()}))


def _flush_in_place(a: Any) -> None:
    if getattr(getattr(a, "flags", None), "writeable", True) and hasattr(a, "dtype"):
        flushed = flush_subnormals(a)
        if flushed is not a:
            a[...] = flushed


def flushing(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as a GPU runs it, for functions that update arrays in place: the float32 array
    arguments are flushed in place before the call, and again after it (the updated state), and
    the results are flushed. Between two such calls the state holds no subnormal, as a GPU's
    would not."""

    @functools.wraps(fn)
    def as_on_a_gpu(*args: Any, **kwargs: Any) -> Any:
        arrays = [a for a in (*args, *kwargs.values()) if hasattr(a, "dtype")]
        for a in arrays:
            _flush_in_place(a)
        result = fn(*args, **kwargs)
        for a in arrays:
            _flush_in_place(a)
        return _flush_all(result)

    return as_on_a_gpu
