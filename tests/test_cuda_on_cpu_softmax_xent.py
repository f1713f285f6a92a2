"""gpunn/kernels/softmax_xent.cu, unchanged, run on the CPU under the CUDA shim (an emulation:
nothing here is a GPU result).

The kernel is launched through gpunn's own wrapper (``softmax_xent._build``, given an array
module that is NumPy with an emulated ``RawModule``), so the grid, block and argument types are
the ones CuPy would get; a few tests launch it directly to see per-row losses or to alias dz to z.
The shapes are those of the GPU parity test (``tests/test_gpu_parity.py``: C = 1, 10, 1000, 3000
with N = 0, 1, 3, and many rows) and the edges of the kernel's structure: rows narrower and wider
than the block, ragged warps, more rows than blocks, no classes, non-finite logits, underflow,
dz aliasing z, and labels outside [0, C).

Tolerances (derived, not tuned)
-------------------------------
Each result is compared with the exact value, computed in a wider type from the same inputs
(float64 for float32 data; 80-bit long double for float64 data), and with gpunn's NumPy reference.
Write u for the unit roundoff (2^-24 or 2^-53), E and L for the exp and log library errors in
ulps, d for the depth of the summation (additions on any path to the total), and for row r:
a_c = z_c - max z (exact), p_c = softmax, s = sum exp(a_c), t = a_y. First order, relative:

* e_c = exp(fl(a_c)): eps_e,c = 2E u + u |a_c|        (1 ulp <= 2u; the rounded shift moves
                                                       the exponent by u |a_c|)
* s (all terms positive): eps_s = max_c eps_e,c + d u
* p_c = fl(e_c / s): eps_p,c = eps_e,c + eps_s + u
* dz_c = fl(fl(p_c - [c = y]) / n): |err| <= p_c eps_p,c / n + 2u |dz_c|
* loss_r = fl(fl(fl(log s) - fl(t)) / n): |err| <= (eps_s + 2L u |log s| + u |t|) / n + 2u |loss_r|
* loss = sum_r loss_r (NumPy, any order): |err| <= sum_r |err_r| + (N + 1) u sum_r |loss_r|

Bounds are multiplied by 1.01 (second-order terms are O(d^2 u^2)) and widened by 4 x the
smallest normal number: CuPy compiles with -ftz=true, so values below 2^-126 may be flushed to
zero (an absolute error below 2^-126; NumPy keeps them). The wider exact computation adds its
own (C + 8) u_wide relative.

E, L and d per side:

* kernel (CUDA): expf 2 ulp, logf 1, exp 1, log 1 (CUDA Math API documentation, without
  -use_fast_math, as CuPy compiles); d = ceil(C / B) per-thread additions + 5 shuffle levels +
  (B/32 - 1) warp partials for block size B.
* reference (NumPy): exp 3 ulp and log 4 ulp in float32, 1 and 1 in float64 (the bounds NumPy's
  own accuracy tests enforce: numpy/_core/tests/data/umath-validation-set-{exp,log}.csv);
  d = C - 1 (``sum`` over the class axis, any order).

Kernel vs exact uses the kernel's bound; kernel vs reference uses the sum of both bounds. The
emulator's expf is glibc's (< 1 ulp), so the kernel is re-run with the math models "high", "low"
and "mixed", which put every exp/log result 1-2 ulps (expf) or up to 1 ulp (the others) off the
exact value: the tolerances hold for any library within CUDA's documented error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from gpunn.kernels import softmax_xent as sx
from gpunn.kernels.spec import cached, compare
from gpunn.math import losses

from cuda_on_cpu import require_compiler
from cuda_on_cpu.emulate import EmulatedModule, emulated_array_module

require_compiler()
pytestmark = pytest.mark.cuda_on_cpu

#: the file these tests run (tests/cuda_on_cpu/__init__.py registers this module for it)
CU_FILE = "softmax_xent.cu"

DTYPES = ("float32", "float64")
UNIT = {"float32": 2.0**-24, "float64": 2.0**-53}
TINY = {"float32": 2.0**-126, "float64": 2.0**-1022}  # smallest normal numbers
CUDA_ULPS = {"float32": (2, 1), "float64": (1, 1)}  # (exp, log), CUDA Math API
NUMPY_ULPS = {"float32": (3, 4), "float64": (1, 1)}  # (exp, log), NumPy's accuracy tests
MATH_MODELS = ("libm", "high", "low", "mixed")


# ------------------------------------------------------------------------------------------
# Running the kernel
# ------------------------------------------------------------------------------------------


@functools.cache
def emulated_xp(math: str = "libm") -> Any:
    """NumPy whose RawModule compiles and runs CUDA under the shim with the given math model
    (one per model: gpunn's wrapper caches its RawModule per array module)."""
    return emulated_array_module(math=math, source_name=CU_FILE)


def fused(z: np.ndarray, y: np.ndarray, math: str = "libm") -> tuple[np.ndarray, np.ndarray]:
    """gpunn's fused softmax cross-entropy, its kernel emulated: (loss, dz)."""
    xp = emulated_xp(math)
    return sx._build(xp)(z, y, xp=xp)


def module(math: str = "libm") -> EmulatedModule:
    """The RawModule gpunn's wrapper built (and cached) for ``emulated_xp(math)``."""
    xp = emulated_xp(math)
    return cached(xp, CU_FILE, lambda: xp.RawModule(code=sx.read_cu(CU_FILE)))


def launch(
    z: np.ndarray,
    y: np.ndarray,
    *,
    dz: np.ndarray | None = None,
    grid: int | None = None,
    math: str = "libm",
) -> tuple[np.ndarray, np.ndarray]:
    """Launch the kernel directly, as the wrapper does: (row_loss, dz). dz may be z itself."""
    n, c = z.shape
    dz = np.empty_like(z) if dz is None else dz
    row_loss = np.empty(n, z.dtype)
    kernel = module(math).get_function(f"gpunn_softmax_xent_{z.dtype.name}")
    args = (z, y, dz, row_loss, np.int64(n), np.int32(c), z.dtype.type(n))
    kernel((grid or min(n, sx.MAX_BLOCKS),), (sx.block_size(c),), args)
    return row_loss, dz


def logits(n: int, c: int, dtype: str, *, scale: float = 4.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, c)) * scale).astype(dtype)


def labels(n: int, c: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, max(c, 1), size=n).astype(np.int64)


# ------------------------------------------------------------------------------------------
# Exact values and error bounds
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exact:
    """Softmax cross-entropy of (z, y) computed in a wider type (NaN where undefined)."""

    a: np.ndarray  # (N, C) z - max z
    p: np.ndarray  # (N, C) softmax
    dz: np.ndarray  # (N, C) (p - onehot) / n; a bad label has no onehot
    log_s: np.ndarray  # (N,)
    t: np.ndarray  # (N,) a at the label, NaN for a bad label
    loss_row: np.ndarray  # (N,) (log_s - t) / n
    u_wide: float  # unit roundoff of the wide type


def exact(z: np.ndarray, y: np.ndarray) -> Exact:
    wide = np.float64 if z.dtype == np.float32 else np.longdouble
    n_rows, c = z.shape
    n = max(n_rows, 1)
    rows = np.arange(n_rows)
    valid = (y >= 0) & (y < c)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        zw = z.astype(wide)
        a = zw - zw.max(axis=1, keepdims=True)
        e = np.exp(a)
        s = e.sum(axis=1, keepdims=True)
        p = e / s
        t = np.where(valid, a[rows, np.where(valid, y, 0)], np.nan)
        log_s = np.log(s[:, 0])
        dz = p.copy()
        dz[rows[valid], y[valid]] -= 1
        dz /= n
        loss_row = (log_s - t) / n
    return Exact(a, p, dz, log_s, t, loss_row, float(np.finfo(wide).eps) / 2)


def bound(x: Exact, dtype: str, ulps: tuple[int, int], depth: int) -> tuple[np.ndarray, ...]:
    """(dz, loss_row) error bounds of an implementation (see the module docstring)."""
    exp_ulp, log_ulp = ulps
    u = UNIT[dtype]
    n, c = x.p.shape
    n = max(n, 1)
    with np.errstate(invalid="ignore"):
        # exp(-inf) = 0 exactly; an a_c = -inf term carries no error
        eps_e = np.where(np.isfinite(x.a), 2 * exp_ulp * u + u * np.abs(x.a), 0.0)
        eps_s = eps_e.max(axis=1, initial=0.0) + depth * u + (c + 8) * x.u_wide
        eps_p = eps_e + eps_s[:, None] + u
        tol_dz = x.p * eps_p / n + 2 * u * np.abs(x.dz)
        tol_loss = (eps_s + 2 * log_ulp * u * np.abs(x.log_s) + u * np.abs(x.t)) / n
        tol_loss += 2 * u * np.abs(x.loss_row)
    atol = 4 * TINY[dtype]
    return 1.01 * tol_dz + atol, 1.01 * tol_loss + atol


def kernel_bound(x: Exact, dtype: str) -> tuple[np.ndarray, ...]:
    c = x.p.shape[1]
    b = sx.block_size(c)
    depth = -(-c // b) + 5 + b // 32 - 1
    return bound(x, dtype, CUDA_ULPS[dtype], depth)


def reference_bound(x: Exact, dtype: str) -> tuple[np.ndarray, ...]:
    return bound(x, dtype, NUMPY_ULPS[dtype], max(x.p.shape[1] - 1, 0))


def total_bound(tol_rows: np.ndarray, x: Exact, dtype: str) -> float:
    """Bound on the error of sum_r loss_r given per-row bounds."""
    n = len(x.loss_row)
    return float(tol_rows.sum() + (n + 1) * UNIT[dtype] * np.abs(x.loss_row).sum())


def assert_within(got: np.ndarray, want: np.ndarray, tol: np.ndarray, what: str) -> None:
    """|got - want| <= tol elementwise; NaN exactly where ``want`` is NaN."""
    got = np.asarray(got)
    want = np.asarray(want)
    nan_want = np.isnan(want)
    if not np.array_equal(np.isnan(got), nan_want):
        where = np.argwhere(np.isnan(got) != nan_want)[:5].tolist()
        raise AssertionError(f"{what}: NaN pattern differs at {where}")
    err = np.where(nan_want, 0.0, np.abs(got.astype(want.dtype) - want))
    tol = np.where(nan_want, 1.0, np.broadcast_to(tol, want.shape))
    ratio = err / tol
    if (ratio > 1).any():
        i = np.unravel_index(np.argmax(ratio), ratio.shape)
        raise AssertionError(
            f"{what}: error {float(err[i]):.3g} > bound {float(tol[i]):.3g} at {tuple(map(int, i))}"
            f" (got {got[i]!r}, want {want[i]!r})"
        )


def check_fused(z: np.ndarray, y: np.ndarray, loss: Any, dz: np.ndarray) -> None:
    """The fused result against the exact values and against gpunn's reference."""
    dtype = z.dtype.name
    assert dz.dtype == z.dtype and dz.shape == z.shape and np.asarray(loss).dtype == z.dtype
    x = exact(z, y)
    k_dz, k_rows = kernel_bound(x, dtype)
    r_dz, r_rows = reference_bound(x, dtype)
    want_loss = np.asarray(x.loss_row.sum())
    assert_within(dz, x.dz, k_dz, "dz vs exact")
    assert_within(
        np.asarray(loss), want_loss, np.asarray(total_bound(k_rows, x, dtype)), "loss vs exact"
    )
    ref_loss, ref_dz = sx.softmax_cross_entropy_reference(z, y, xp=np)
    assert_within(dz, ref_dz.astype(x.dz.dtype), k_dz + r_dz, "dz vs reference")
    ref_tol = total_bound(k_rows, x, dtype) + total_bound(r_rows, x, dtype)
    assert_within(
        np.asarray(loss), np.asarray(ref_loss, x.dz.dtype), np.asarray(ref_tol), "loss vs reference"
    )


# ------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------

SHAPES = {
    "one row": (1, 7),
    "one class": (4, 1),
    "C below a warp": (5, 7),
    "ragged warps (C=33)": (3, 33),
    "ragged at the block limit (C=257)": (2, 257),
    "C wider than the block (C=1000)": (3, 1000),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_reference(shape: tuple[int, int], dtype: str) -> None:
    z, y = logits(*shape, dtype), labels(*shape)
    z_before = z.copy()
    loss, dz = fused(z, y)
    check_fused(z, y, loss, dz)
    np.testing.assert_array_equal(z, z_before)  # z is only read


#: (N, C) of tests/test_gpu_parity.py's softmax case that the emulation can afford: its N = 1023
#: and 4097 would take minutes (one host thread per CUDA thread, a context switch per thread at
#: each of a row's 6 barriers), so "many rows" is N = 200 with C = 10
PARITY_SHAPES = [(n, c) for c in (1, 10, 1000, 3000) for n in (0, 1, 3)] + [(200, 10)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PARITY_SHAPES, ids=[f"{n}x{c}" for n, c in PARITY_SHAPES])
def test_parity_shapes_with_both_ends_of_the_class_range(
    shape: tuple[int, int], dtype: str
) -> None:
    n, c = shape
    z, y = logits(n, c, dtype, scale=5.0, seed=3), labels(n, c, seed=4)
    if n >= 2:
        y[0], y[1] = 0, c - 1
    loss, dz = fused(z, y)
    if n == 0:
        assert float(loss) == 0.0 and dz.shape == (0, c)
        return
    check_fused(z, y, loss, dz)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_logits_are_copied_to_rows(dtype: str) -> None:
    wide = logits(6, 20, dtype)
    z, y = wide[:, ::2], labels(6, 10)
    loss, dz = fused(z, y)
    assert dz.flags.c_contiguous
    check_fused(np.ascontiguousarray(z), y, loss, dz)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("math", MATH_MODELS[1:])
@pytest.mark.parametrize("shape", [(5, 7), (3, 1000)], ids=["C=7", "C=1000"])
def test_tolerance_covers_cudas_math_library(shape: tuple[int, int], dtype: str, math: str) -> None:
    z, y = logits(*shape, dtype, seed=3), labels(*shape, seed=4)
    loss, dz = fused(z, y, math)
    check_fused(z, y, loss, dz)


@pytest.mark.parametrize("dtype", DTYPES)
def test_more_rows_than_blocks(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The grid-stride loop: 4 blocks take 37 rows (10, 9, 9, 9 each)."""
    monkeypatch.setattr(sx, "MAX_BLOCKS", 4)
    z, y = logits(37, 40, dtype), labels(37, 40)
    loss, dz = fused(z, y)
    assert module().launches[-1] == (f"gpunn_softmax_xent_{dtype}", (4, 1, 1), (64, 1, 1))
    check_fused(z, y, loss, dz)


@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_logits_underflow(dtype: str) -> None:
    """|z - max z| up to ~200: most exp terms underflow (subnormal or zero; flushed in float32)."""
    z, y = logits(6, 64, dtype, scale=40.0), labels(6, 64)
    loss, dz = fused(z, y)
    check_fused(z, y, loss, dz)
    if dtype == "float32":
        p = exact(z, y).p
        tiny = (p > 0) & (p < 2.0**-126)
        tiny[np.arange(6), y] = False  # the label's dz is (p - 1) / n
        assert tiny.any() and (dz[tiny] == 0).all()  # -ftz=true flushes them


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_logits(dtype: str) -> None:
    """A NaN or +inf logit makes its row NaN (as NumPy's max); a -inf logit is a zero term."""
    z, y = logits(5, 9, dtype), labels(5, 9)
    z[0, 3] = np.nan
    z[1, 0] = np.inf
    z[2, 5] = -np.inf
    y[2] = 4
    z[3, :] = -np.inf  # all -inf: NaN, as NumPy gives (-inf - -inf)
    loss, dz = fused(z, y)
    with np.errstate(invalid="ignore"):  # the reference computes inf - inf on purpose
        check_fused(z, y, loss, dz)
    assert np.isnan(dz[[0, 1, 3]]).all() and np.isfinite(dz[[2, 4]]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 4), (0, 0), (2, 0)])
def test_empty_batch_or_no_classes(shape: tuple[int, int], dtype: str) -> None:
    """N = 0 or C = 0 never launches: the wrapper hands the case to the reference, so both give
    the same result, or (for (0, 0) and (2, 0): NumPy's max of an empty axis) the same error."""
    z, y = np.zeros(shape, dtype), np.zeros(shape[0], np.int64)
    launched = len(module().launches)
    try:
        ref_loss, ref_dz = sx.softmax_cross_entropy_reference(z, y, xp=np)
    except ValueError as ref_err:
        with pytest.raises(ValueError) as fused_err:
            fused(z, y)
        assert str(fused_err.value) == str(ref_err)
    else:
        loss, dz = fused(z, y)
        assert float(loss) == float(ref_loss) == 0.0
        assert dz.shape == ref_dz.shape == shape and dz.dtype == dtype
    assert len(module().launches) == launched


# ------------------------------------------------------------------------------------------
# Direct launches: aliasing and bad labels
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "grid"), [((5, 7), None), ((3, 300), None), ((9, 40), 2)])
def test_dz_may_alias_z(shape: tuple[int, int], grid: int | None, dtype: str) -> None:
    """The .cu claims dz may be z: the in-place result is bit-identical to the out-of-place one."""
    z, y = logits(*shape, dtype), labels(*shape)
    rows_apart, dz_apart = launch(z, y, grid=grid)
    buffer = z.copy()
    rows_inplace, dz_inplace = launch(buffer, y, dz=buffer, grid=grid)
    assert dz_inplace is buffer
    np.testing.assert_array_equal(dz_inplace, dz_apart)
    np.testing.assert_array_equal(rows_inplace, rows_apart)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bad_labels_give_nan_loss_rows(dtype: str) -> None:
    """A label outside [0, C): that row's loss is NaN, its dz is softmax / n (no onehot)."""
    z = logits(5, 10, dtype)
    y = np.array([-1, 10, 3, 1 << 40, -(1 << 62)], np.int64)
    row_loss, dz = launch(z, y)
    x = exact(z, y)
    tol_dz, tol_rows = kernel_bound(x, dtype)
    assert_within(row_loss, x.loss_row, tol_rows, "row losses vs exact")
    assert np.isnan(row_loss[[0, 1, 3, 4]]).all() and np.isfinite(row_loss[2])
    assert_within(dz, x.dz, tol_dz, "dz vs exact")
    # the bad rows' dz against gpunn's own softmax (its forward, with a valid dummy label)
    _, p = losses.softmax_cross_entropy_forward(z, np.zeros_like(y), xp=np)
    bad = [0, 1, 3, 4]
    r_dz, _ = reference_bound(x, dtype)
    assert_within(dz[bad], (p[bad] / 5).astype(x.dz.dtype), (tol_dz + r_dz)[bad], "bad rows")
    loss, _ = fused(z, y)  # through the wrapper: the batch loss shows the mistake
    assert np.isnan(loss)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bad_labels_agree_with_the_reference(dtype: str) -> None:
    """gpunn's reference follows the kernel's contract: the loss is NaN (a negative label does
    not wrap around to class C - 1, a label >= C does not raise), the bad rows' dz is softmax / n
    and every other row is as usual."""
    z = logits(6, 7, dtype)
    y = np.array([-1, 2, 7, 1 << 40, 0, -(1 << 62)], np.int64)
    loss, dz = fused(z, y)
    ref_loss, _ = sx.softmax_cross_entropy_reference(z, y, xp=np)
    assert np.isnan(loss) and np.isnan(ref_loss) and np.isfinite(dz).all()
    check_fused(z, y, loss, dz)  # dz against exact values and against the reference


def test_reverse_block_order_changes_nothing() -> None:
    z, y = logits(9, 40, "float32"), labels(9, 40)
    rows, dz = launch(z, y, grid=3)
    xp = emulated_array_module(reverse_blocks=True, source_name=CU_FILE)
    rev = xp.RawModule(code=sx.read_cu(CU_FILE)).get_function("gpunn_softmax_xent_float32")
    dz_rev, rows_rev = np.empty_like(z), np.empty(9, np.float32)
    rev((3,), (64,), (z, y, dz_rev, rows_rev, np.int64(9), np.int32(40), np.float32(9)))
    np.testing.assert_array_equal(dz_rev, dz)
    np.testing.assert_array_equal(rows_rev, rows)


def test_project_self_check_passes() -> None:
    """gpunn's own probe and tolerances (spec.compare) accept the emulated kernel."""
    xp = emulated_xp()
    kernel_spec = sx.SOFTMAX_CROSS_ENTROPY
    impl: Callable[..., Any] = kernel_spec.build_fused(xp)
    worst = compare(kernel_spec.probe(impl, xp), kernel_spec.probe(kernel_spec.reference, np), np)
    assert worst < 1e-5
