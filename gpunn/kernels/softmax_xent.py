"""Softmax cross-entropy loss and its gradient in one pass (CUDA source: softmax_xent.cu).

The unfused path runs the loss forward (max, subtract, exp, sum, log, gather, mean: about ten
launches) and then the backward (scatter -1, divide). The fused kernel gives one block per row that
writes the row's loss term and the row of dlogits together; a second tiny launch sums the rows.
"""

from __future__ import annotations

from typing import Any

from gpunn.backend import host_rng
from gpunn.kernels.cuda_source import read_cu
from gpunn.kernels.spec import Array, KernelSpec, cached
from gpunn.math import losses

CU_FILE = "softmax_xent.cu"
MAX_THREADS = 256  # per block: enough to stream a row of a few thousand classes
MAX_BLOCKS = 1 << 20  # the kernel loops over rows when N is larger


def softmax_cross_entropy_reference(z: Array, y: Array, *, xp: Any) -> tuple[Array, Array]:
    """(mean loss as a 0-d array, dlogits (N, C)) for logits z (N, C) and int labels y (N,).

    Reference: ``gpunn.math.losses.softmax_cross_entropy_forward`` then ``..._backward``. z is
    not modified; the gradient is a new array.
    """
    loss, p = losses.softmax_cross_entropy_forward(z, y, xp=xp)
    return loss, losses.softmax_cross_entropy_backward(p, y, xp=xp)


def block_size(n_classes: int) -> int:
    """Threads per row: whole warps, enough to cover C once, at most MAX_THREADS."""
    warps = -(-max(n_classes, 1) // 32)
    return min(32 * warps, MAX_THREADS)


def _build(xp: Any) -> Any:
    def module() -> Any:
        return xp.RawModule(code=read_cu(CU_FILE), options=("--std=c++17",))

    def softmax_cross_entropy_fused(z: Array, y: Array, *, xp: Any) -> tuple[Array, Array]:
        """Fused form of softmax_cross_entropy_reference (one RawKernel + one sum)."""
        n, c = z.shape
        if n == 0 or c == 0:  # nothing to launch; the reference defines these cases
            return softmax_cross_entropy_reference(z, y, xp=xp)
        if z.dtype.name not in ("float32", "float64"):
            raise TypeError(f"softmax cross-entropy kernel needs float32/64 logits, not {z.dtype}")
        kernel = _function(xp, z.dtype.name, module)
        z = xp.ascontiguousarray(z)  # (N, C) row-major: the kernel indexes r * C + c
        y = xp.ascontiguousarray(y, dtype=xp.int64)  # (N,)
        dz = xp.empty_like(z)  # (N, C)
        row_loss = xp.empty(n, dtype=z.dtype)  # (N,) loss_r / N
        grid = (min(n, MAX_BLOCKS),)
        args = (z, y, dz, row_loss, xp.int64(n), xp.int32(c), z.dtype.type(n))
        kernel(grid, (block_size(c),), args)
        return row_loss.sum(), dz

    return softmax_cross_entropy_fused


def _function(xp: Any, dtype: str, module: Any) -> Any:
    """The RawKernel for ``dtype`` from the cached RawModule, looked up once per dtype.

    ``RawModule.get_function`` builds a new RawKernel (and hashes the whole source to find the
    module) at every call; one RawKernel serves every device, as it loads the module for the
    current device on its first launch there and keeps one function per device.
    """
    name = f"gpunn_softmax_xent_{dtype}"
    return cached(xp, f"{CU_FILE}:{name}", lambda: cached(xp, CU_FILE, module).get_function(name))


def _probe(impl: Any, xp: Any) -> list[Any]:
    rng = host_rng(99)
    outs = []
    # (N, C): a ragged warp, several warps per row (C > MAX_THREADS), one class, an empty batch
    for dtype in ("float32", "float64"):
        for n, c in ((5, 7), (3, 1000), (4, 1), (0, 4)):
            z = xp.asarray(rng.standard_normal((n, c)) * 4, dtype=dtype)
            y = xp.asarray(rng.integers(0, c, size=n), dtype=xp.int64)
            outs += list(impl(z, y, xp=xp))
    return outs


SOFTMAX_CROSS_ENTROPY = KernelSpec(
    name="softmax_cross_entropy",
    repeats=(
        "gpunn.math.losses.softmax_cross_entropy_forward",
        "gpunn.math.losses.softmax_cross_entropy_backward",
    ),
    reference=softmax_cross_entropy_reference,
    build_fused=_build,
    probe=_probe,
)
