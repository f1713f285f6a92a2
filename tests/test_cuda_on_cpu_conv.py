"""gpunn/kernels/conv.cu, unchanged, run on the CPU under the CUDA shim (an emulation: nothing
here is a GPU result): fused col2im and max-pool backward against their references.

The kernels are launched through gpunn's own wrappers (``gpunn.kernels.conv``, given an array
module that is NumPy with an emulated ``RawModule``), so the grid, block, argument types and
strides are the ones CuPy would get. Each thread adds up, in the reference's order, the terms
the reference's per-cell passes add onto its pixel, so the results must equal the references
*exactly* (no tolerance; NumPy's ``assert_array_equal`` counts -0 equal to +0 and NaN equal to
NaN). Random normal inputs hold no float32 subnormals, so -ftz=true changes nothing here
(tests/test_cuda_on_cpu_kernels.py checks the flush with subnormal inputs).

Independent checks beside the references: col2im is the adjoint of im2col (<im2col(x), c> =
<x, col2im(c)> in float64), and max-pool backward sends each window's gradient to the first
maximum in row-major window order, found here by a plain loop over the windows.

Shapes: stride 1 and > 1, padding, odd and rectangular sizes, stride > kernel (pixels no window
reaches), kernel = input, one sample and one channel, the 6x6 stride-2 patches of LeNet-5's and
4x4 stride-2 padded ones of the digits CNN's fused conv + pool, int32 argmax (windows over 256
cells), ties, NaN and inf gradients, strided inputs and workspaces, and more pixels than
threads (the grid-stride loop).
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import numpy as np
import pytest

import gpunn
from gpunn import kernels
from gpunn.backend import Backend
from gpunn.kernels import conv as kc
from gpunn.kernels.spec import cached, compare
from gpunn.math.conv import col2im, im2col, output_size, pair
from gpunn.math.conv_pool import conv2d_maxpool2_backward, conv2d_maxpool2_forward
from gpunn.math.pool import max_pool2d_backward, max_pool2d_forward

from cuda_on_cpu import require_compiler
from cuda_on_cpu.emulate import emulated_array_module

require_compiler()
pytestmark = pytest.mark.cuda_on_cpu

#: the file these tests run (tests/cuda_on_cpu/__init__.py registers this module for it)
CU_FILE = "conv.cu"

DTYPES = ("float32", "float64")


@functools.cache
def emulated_xp() -> Any:
    """NumPy whose RawModule compiles and runs CUDA under the shim (one for the whole module:
    gpunn's wrappers cache their RawModules per array module)."""
    return emulated_array_module(source_name=CU_FILE)


def fused_col2im(*args: Any, **kwargs: Any) -> np.ndarray:
    xp = emulated_xp()
    return kc.COL2IM.build_fused(xp)(*args, xp=xp, **kwargs)


def fused_unpool(*args: Any, **kwargs: Any) -> np.ndarray:
    xp = emulated_xp()
    return kc.MAX_POOL2D_BACKWARD.build_fused(xp)(*args, xp=xp, **kwargs)


def launches(owner: str) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """Every launch so far of the RawModule that fused kernel ``owner`` built."""
    xp = emulated_xp()
    key = f"{CU_FILE}[{owner}]"
    return list(cached(xp, key, lambda: pytest.fail(f"{owner} built no RawModule")).launches)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------
# col2im
# ------------------------------------------------------------------------------------------

#: name -> (x_shape, kernel_size, stride, padding)
COL2IM_CASES = {
    "3x3 stride 1 padding 1": ((2, 3, 5, 6), 3, 1, 1),
    "3x3 stride 2, odd sizes": ((2, 2, 7, 9), 3, 2, 0),
    "stride > kernel, rectangular": ((1, 2, 7, 5), (3, 2), (2, 3), (0, 1)),
    "kernel = input": ((3, 2, 4, 5), (4, 5), 1, 0),
    "kernel = input, padded": ((2, 1, 3, 3), 3, 1, 1),
    "padding > stride": ((2, 2, 5, 5), 3, 2, 2),
    "one sample, one channel": ((1, 1, 6, 7), 3, 1, 0),
    "LeNet-5 conv2 as conv+pool (6x6 stride 2)": ((4, 6, 14, 14), 6, 2, 0),
    "digits conv2 as conv+pool (4x4 stride 2 padding 1)": ((3, 8, 4, 4), 4, 2, 1),
}


def columns(x_shape: tuple[int, ...], k: Any, s: Any, p: Any, dtype: str, seed: int = 0):
    (kh, kw), (sh, sw), (ph, pw) = pair(k), pair(s), pair(p)
    N, C, H, W = x_shape
    P = N * output_size(H, kh, sh, ph) * output_size(W, kw, sw, pw)
    return rng(seed).standard_normal((C * kh * kw, P)).astype(dtype)


@pytest.mark.parametrize("batch_last", [False, True], ids=["nchw", "batch_last"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", COL2IM_CASES.values(), ids=COL2IM_CASES.keys())
def test_col2im_equals_the_reference(case: tuple[Any, ...], dtype: str, batch_last: bool) -> None:
    x_shape, k, s, p = case
    cols = columns(x_shape, k, s, p, dtype)
    before = cols.copy()
    got = fused_col2im(cols, x_shape, k, s, p, batch_last=batch_last)
    want = col2im(cols, x_shape, k, s, p, xp=np, batch_last=batch_last)
    assert got.shape == want.shape == x_shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(cols, before)  # cols is only read
    if batch_last:  # stored (C, H, W, N), as the reference's result
        assert got.transpose(1, 2, 3, 0).flags.c_contiguous


@pytest.mark.parametrize("batch_last", [False, True], ids=["nchw", "batch_last"])
@pytest.mark.parametrize("case", COL2IM_CASES.values(), ids=COL2IM_CASES.keys())
def test_col2im_is_the_adjoint_of_im2col(case: tuple[Any, ...], batch_last: bool) -> None:
    """<im2col(x), c> = <x, col2im(c)>: an oracle that does not use the reference col2im."""
    x_shape, k, s, p = case
    x = rng(1).standard_normal(x_shape)
    c = columns(x_shape, k, s, p, "float64", seed=2)
    lhs = float((im2col(x, k, s, p, xp=np, batch_last=batch_last) * c).sum())
    rhs = float((x * fused_col2im(c, x_shape, k, s, p, batch_last=batch_last)).sum())
    assert rhs == pytest.approx(lhs, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("batch_last", [False, True], ids=["nchw", "batch_last"])
def test_col2im_writes_into_the_padded_workspace(batch_last: bool) -> None:
    """Given ``padded`` (here stored batch-innermost), the result is a view of its interior."""
    x_shape, k, s, p = (2, 3, 6, 5), 3, 2, 1
    cols = columns(x_shape, k, s, p, "float32")
    N, C, H, W = x_shape
    padded = np.full((C, H + 2, W + 2, N), 7.0, np.float32).transpose(3, 0, 1, 2)
    got = fused_col2im(cols, x_shape, k, s, p, padded=padded, batch_last=batch_last)
    assert np.shares_memory(got, padded)
    np.testing.assert_array_equal(got, padded[:, :, 1:-1, 1:-1])
    np.testing.assert_array_equal(got, col2im(cols, x_shape, k, s, p, xp=np, batch_last=batch_last))


def test_col2im_copies_non_contiguous_columns() -> None:
    x_shape, k, s, p = (2, 2, 5, 5), 3, 1, 1
    wide = np.repeat(columns(x_shape, k, s, p, "float64"), 2, axis=1)
    cols = wide[:, ::2]  # strided view
    got = fused_col2im(cols, x_shape, k, s, p)
    np.testing.assert_array_equal(got, col2im(np.ascontiguousarray(cols), x_shape, k, s, p, xp=np))


@pytest.mark.parametrize("dtype", DTYPES)
def test_col2im_grid_stride_loop(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """3 blocks of 256 threads for 2*3*11*13 = 858 pixels: some threads take 2 pixels."""
    monkeypatch.setattr(kc, "MAX_BLOCKS", 3)
    x_shape, k, s, p = (2, 3, 11, 13), 3, 2, 1
    cols = columns(x_shape, k, s, p, dtype)
    got = fused_col2im(cols, x_shape, k, s, p, batch_last=True)
    assert launches("col2im")[-1] == (f"gpunn_col2im_{dtype}", (3, 1, 1), (256, 1, 1))
    np.testing.assert_array_equal(got, col2im(cols, x_shape, k, s, p, xp=np, batch_last=True))


def test_col2im_without_work_or_with_other_types_uses_the_reference() -> None:
    """No launch for an empty batch or a dtype the kernel lacks; the same result as the
    reference; and a cols array that does not fit is refused before any launch."""
    before = len(launches("col2im"))
    cols = np.zeros((27, 0), np.float32)
    assert fused_col2im(cols, (0, 3, 5, 5), 3, 1, 1).shape == (0, 3, 5, 5)
    half = columns((1, 1, 4, 4), 3, 1, 0, "float16")
    np.testing.assert_array_equal(
        fused_col2im(half, (1, 1, 4, 4), 3), col2im(half, (1, 1, 4, 4), 3, xp=np)
    )
    assert len(launches("col2im")) == before
    with pytest.raises(ValueError, match="does not fit"):
        fused_col2im(np.zeros((9, 5), np.float32), (1, 1, 4, 4), 3)
    assert len(launches("col2im")) == before


# ------------------------------------------------------------------------------------------
# max-pool backward
# ------------------------------------------------------------------------------------------

#: name -> (x_shape, kernel_size, stride)
POOL_CASES = {
    "2x2 tiles": ((2, 3, 4, 6), 2, 2),
    "2x2, odd sizes (floor mode)": ((1, 2, 5, 7), 2, 2),
    "3x3 stride 1 (overlap)": ((2, 2, 5, 6), 3, 1),
    "3x3 stride 2, odd sizes": ((1, 2, 7, 9), 3, 2),
    "rectangular window and stride": ((2, 1, 6, 7), (2, 3), (1, 2)),
    "stride > kernel (gaps)": ((2, 1, 7, 8), 2, 3),
    "kernel = input, one sample one channel": ((1, 1, 4, 5), (4, 5), 1),
    "17x17 window (int32 argmax)": ((1, 2, 17, 18), 17, 1),
}


def pooled(x_shape: tuple[int, ...], k: Any, s: Any, dtype: str, *, ties: bool = True):
    """(dy, argmax, x): x of few distinct values (many ties) when ``ties``."""
    g = rng(3)
    x = (g.integers(-2, 3, size=x_shape) if ties else g.standard_normal(x_shape)).astype(dtype)
    _, argmax = max_pool2d_forward(x, k, s, xp=np)
    dy = g.standard_normal(argmax.shape).astype(dtype)
    return dy, argmax, x


def first_maximum_backward(x: np.ndarray, dy: np.ndarray, k: Any, s: Any) -> np.ndarray:
    """The gradient of max pooling by a loop over windows: all of dy to the first maximum in
    row-major window order (PyTorch's choice), added where windows overlap."""
    (kh, kw), (sh, sw) = pair(k), pair(s)
    dx = np.zeros_like(x)
    for n, c, ho, wo in np.ndindex(dy.shape):
        window = x[n, c, ho * sh : ho * sh + kh, wo * sw : wo * sw + kw]
        i, j = np.unravel_index(np.argmax(window), window.shape)  # numpy: the first maximum
        dx[n, c, ho * sh + i, wo * sw + j] += dy[n, c, ho, wo]
    return dx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES.values(), ids=POOL_CASES.keys())
def test_max_pool_backward_equals_the_reference_with_ties(
    case: tuple[Any, ...], dtype: str
) -> None:
    x_shape, k, s = case
    dy, argmax, x = pooled(x_shape, k, s, dtype)
    got = fused_unpool(dy, argmax, x_shape, k, s)
    want = max_pool2d_backward(dy, argmax, x_shape, k, s, xp=np)
    assert got.shape == x_shape and got.dtype == dy.dtype
    np.testing.assert_array_equal(got, want)
    # the tie rule, from x itself; sums of overlapping windows may round differently
    np.testing.assert_allclose(got, first_maximum_backward(x, dy, k, s), rtol=1e-6, atol=1e-6)
    assert argmax.dtype == (np.int32 if x_shape[-2] == 17 else np.uint8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_backward_nan_and_inf_spread_as_in_the_reference(dtype: str) -> None:
    """dy * (argmax == k): an inf or NaN gradient makes the window's other cells NaN too."""
    x_shape, k, s = (1, 2, 6, 6), 3, 1  # overlapping windows
    dy, argmax, _ = pooled(x_shape, k, s, dtype, ties=False)
    dy[0, 0, 1, 1], dy[0, 1, 2, 3], dy[0, 1, 0, 0] = np.nan, np.inf, -np.inf
    with np.errstate(invalid="ignore"):
        want = max_pool2d_backward(dy, argmax, x_shape, k, s, xp=np)
    got = fused_unpool(dy, argmax, x_shape, k, s)
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got).sum() > 3  # the spread happened (more than the three cells)


def test_max_pool_backward_strided_views_and_workspace() -> None:
    """dy and argmax as transposed views, the result into a batch-innermost workspace."""
    x_shape, k, s = (3, 2, 6, 4), 2, 2
    dy, argmax, _ = pooled(x_shape, k, s, "float32")
    dy_t = np.ascontiguousarray(dy.transpose(2, 3, 1, 0)).transpose(3, 2, 0, 1)  # same values
    am_t = np.ascontiguousarray(argmax.transpose(1, 3, 2, 0)).transpose(3, 0, 2, 1)
    out = np.full((2, 6, 4, 3), 9.0, np.float32).transpose(3, 0, 1, 2)
    got = fused_unpool(dy_t, am_t, x_shape, k, s, out=out)
    assert got is out
    np.testing.assert_array_equal(out, max_pool2d_backward(dy, argmax, x_shape, k, s, xp=np))


def test_max_pool_backward_grid_stride_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kc, "MAX_BLOCKS", 2)
    x_shape, k, s = (3, 4, 9, 10), 3, 2  # 1080 pixels for 512 threads
    dy, argmax, _ = pooled(x_shape, k, s, "float64")
    got = fused_unpool(dy, argmax, x_shape, k, s)
    name = "gpunn_max_pool_backward_float64_uint8"
    assert launches("max_pool2d_backward")[-1] == (name, (2, 1, 1), (256, 1, 1))
    np.testing.assert_array_equal(got, max_pool2d_backward(dy, argmax, x_shape, k, s, xp=np))


def test_max_pool_backward_refuses_mismatched_argmax() -> None:
    dy, argmax, _ = pooled((1, 1, 4, 4), 2, 2, "float32")
    with pytest.raises(ValueError, match="do not fit"):
        fused_unpool(dy, argmax[:, :, :1], (1, 1, 4, 4), 2, 2)


# ------------------------------------------------------------------------------------------
# In the layers: the fused conv + pool backward, and the dispatch choosing the kernels
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", [0, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_maxpool2_backward_with_both_kernels_equals_the_reference(
    padding: int, dtype: str
) -> None:
    """conv2d_maxpool2_backward with the fused col2im and unpool (the latter on the transposed
    block views this function makes) gives the reference's dx, dW and db bit for bit."""
    g = rng(5)
    x = g.standard_normal((3, 2, 9, 8)).astype(dtype)
    W = g.standard_normal((4, 2, 3, 3)).astype(dtype)
    b = g.standard_normal(4).astype(dtype)
    y, argmax, cols = conv2d_maxpool2_forward(x, W, b, padding=padding, xp=np, batch_last=True)
    dy = g.standard_normal(y.shape).astype(dtype)
    results = []
    fused = {  # the function calls them with xp=np: run them on the emulated module instead
        "col2im_impl": lambda *a, xp, **k: fused_col2im(*a, **k),
        "unpool_impl": lambda *a, xp, **k: fused_unpool(*a, **k),
    }
    for impls in ({}, fused):
        dW, db = np.empty_like(W), np.empty_like(b)
        dx = conv2d_maxpool2_backward(
            dy, argmax, cols, W, x.shape, padding=padding, xp=np, dW=dW, db=db,
            batch_last=True, **impls,
        )  # fmt: skip
        results.append((dx, dW, db))
    for got, want in zip(results[1], results[0], strict=True):
        np.testing.assert_array_equal(got, want)


def lenet_like(backend: Any) -> gpunn.Sequential:
    layers = [
        gpunn.Conv2D(1, 3, 3, padding=1),
        gpunn.ReLU(),
        gpunn.MaxPool2D(2),  # run by the conv: conv2d_maxpool2
        gpunn.Conv2D(3, 4, 3, stride=2),  # plain conv2d_backward: col2im
        gpunn.ReLU(),
        gpunn.MaxPool2D(2, 1),  # overlapping pool, not merged into the conv
        gpunn.Flatten(),
        gpunn.Dense(4, 3),
    ]
    return gpunn.Sequential(layers, backend=backend, seed=3)


def test_layers_dispatch_to_the_emulated_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """An array module that runs conv.cu under the shim, registered as having the fused forms:
    kernels.get picks them after their self-check, one backward pass launches each where the
    layers need it, and every gradient equals the NumPy run's."""
    xp = emulated_array_module(source_name=CU_FILE)  # its own RawModule cache and launch log
    monkeypatch.setattr(xp, "__name__", "emulated_cuda")
    names = ("col2im", "max_pool2d_backward")
    for name in names:
        previous = kernels.register_fused(name, "emulated_cuda", kernels.spec(name).build_fused)
        assert previous is None
    try:
        for name in names:  # the self-checks run here (and launch the kernels), not below
            assert kernels.get(name, xp) is not kernels.reference(name)
            assert kernels.outcomes()[f"{name}@emulated_cuda"].status == "fused"
        X = rng(7).standard_normal((5, 1, 10, 10)).astype(np.float32)
        y = np.array([0, 1, 2, 1, 0])
        grads, ran = [], collections.Counter()
        for backend in (gpunn.get_backend("numpy"), Backend("numpy", None, xp)):
            model = lenet_like(backend)
            loss = gpunn.SoftmaxCrossEntropy()
            loss.forward(model.forward(backend.asarray(X), training=True), backend.asarray(y))
            for module in xp.raw_modules:
                module.launches.clear()
            model.backward(loss.backward())
            ran = collections.Counter(n for m in xp.raw_modules for n, _, _ in m.launches)
            grads.append(np.array(model.flat_grads))
        # conv 1 runs its 2x2 pool itself (conv2d_maxpool2) and needs no dx; conv 2 (stride 2)
        # runs conv2d_backward's col2im and unpools its overlapping pool (moved before ReLU)
        assert ran == {
            "gpunn_col2im_float32": 1,
            "gpunn_max_pool_backward_float32_uint8": 2,
        }
        np.testing.assert_array_equal(grads[1], grads[0])
        assert np.abs(grads[0]).max() > 0
    finally:
        for name in names:
            kernels.register_fused(name, "emulated_cuda", None)


def test_gpunn_fused_0_gives_the_references_without_launching(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    xp = emulated_array_module(source_name=CU_FILE)
    monkeypatch.setattr(xp, "__name__", "emulated_cuda_off")
    monkeypatch.setenv("GPUNN_FUSED", "0")
    names = ("col2im", "max_pool2d_backward")
    for name in names:
        kernels.register_fused(name, "emulated_cuda_off", kernels.spec(name).build_fused)
    try:
        for name in names:
            assert kernels.get(name, xp) is kernels.reference(name)
            assert kernels.outcomes()[f"{name}@emulated_cuda_off"].status == "reference"
        assert xp.raw_modules == []  # nothing built, nothing launched
    finally:
        for name in names:
            kernels.register_fused(name, "emulated_cuda_off", None)


def test_project_self_checks_pass() -> None:
    """gpunn's own probes and tolerance (spec.compare) accept the emulated kernels, exactly."""
    xp = emulated_xp()
    for spec in (kc.COL2IM, kc.MAX_POOL2D_BACKWARD):
        worst = compare(spec.probe(spec.build_fused(xp), xp), spec.probe(spec.reference, np), np)
        assert worst == 0.0, spec.name


def test_threads_walk_pixels_in_the_outputs_memory_order() -> None:
    """The walk order handed to the kernels (a speed choice: neighbouring threads write
    neighbouring addresses; the results do not depend on it, so only the choice is tested)."""
    a = np.empty((2, 3, 4, 5))
    assert kc.memory_order(a) == (0, 1, 2, 3)
    assert kc.memory_order(np.empty((3, 4, 5, 2)).transpose(3, 0, 1, 2)) == (1, 2, 3, 0)
    P, O = 7, 3  # conv2d_maxpool2's block view: (P, O, 2, 2) of (4*O, P) rows
    blocks = np.empty((4 * O, P)).reshape(O, 2, 2, P).transpose(3, 0, 1, 2)
    assert kc.memory_order(blocks) == (1, 2, 3, 0)
    assert kc.memory_order(np.empty((1, 3, 1, 1))) == (0, 1, 2, 3)  # ties: axis order
