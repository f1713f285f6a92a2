"""Where the estimators' data lives, and how it is cut into mini-batches.

Dense X is moved to the model's backend once per ``fit`` (on NumPy that is the array itself, or one
cast to the model's dtype) and batches are gathered there with ``take``, as in
:mod:`gpunn.training`; a CuPy X is already there and is never copied to the host. Two cases stay
on the host and move one batch at a time: a SciPy sparse X (each batch's rows are densified and
moved; the whole matrix never is) and a dense X too large for half the GPU's free memory.
Targets and sample weights (N or N x K numbers) always move to the device once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import scipy.sparse

from gpunn.backend import Backend, namespace
from gpunn.nn.layer import Array

__all__ = [
    "CHUNK_ELEMENTS",
    "DEVICE_MEMORY_SHARE",
    "MAX_CHUNK_ROWS",
    "TrainingData",
    "chunk_rows",
    "device_scope",
    "is_device_array",
    "row_chunks",
]

#: the share of free device memory the training data may take before it is streamed per batch
DEVICE_MEMORY_SHARE = 0.5
#: rows of X per forward pass of predict and L-BFGS: at most this many elements (64 MiB of
#: float32 input; the hidden layers' activations are of the same order for usual widths) ...
CHUNK_ELEMENTS = 1 << 24
#: ... and at most this many rows
MAX_CHUNK_ROWS = 65536


def chunk_rows(n_features: int) -> int:
    """Rows per chunk for data of ``n_features`` columns (see CHUNK_ELEMENTS)."""
    return max(1, min(MAX_CHUNK_ROWS, CHUNK_ELEMENTS // max(n_features, 1)))


def is_device_array(a: Any) -> bool:
    """Whether ``a`` is a CuPy array (decided from its type's module, as gpunn.backend does)."""
    return namespace(a).__name__ != "numpy"


def device_scope(backend: Backend) -> Any:
    """A context in which new arrays land on ``backend``'s GPU (``cupy:N``: device N is made
    current; gpunn's layers allocate on the current device); nothing to do on NumPy."""
    if backend.device is None:
        return contextlib.nullcontext()
    return backend.xp.cuda.Device(backend.device)


def row_chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive row slices of at most ``size`` rows covering 0..n."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class TrainingData:
    """X (N, D), targets Y and optional weights w (N,) for one fit, on ``backend``.

    ``X`` may be a host NumPy array, a SciPy sparse matrix or a device array; ``Y`` and ``w``
    host or device arrays (``w`` None for unit weights).
    """

    def __init__(
        self, backend: Backend, X: Any, Y: Any, w: Any, *, dtype: Any, y_dtype: Any
    ) -> None:
        self.backend, self.xp = backend, backend.xp
        self.dtype = dtype
        self.n = X.shape[0]
        self.sparse = scipy.sparse.issparse(X)
        if self.sparse:
            self.X = X.tocsr()  # row slicing; the data itself stays sparse
            self.on_device = False
        elif is_device_array(X) or self._fits(X):
            self.X = backend.asarray(X, dtype=dtype)  # (N, D) once; no copy when already there
            self.on_device = True
        else:
            self.X = X  # too large for the device: batches are gathered here and moved
            self.on_device = False
        self.Y = backend.asarray(Y, dtype=y_dtype)  # (N,) class ids or (N, K)
        self.w = None if w is None else backend.asarray(w, dtype=dtype)  # (N,)

    def _fits(self, X: Any) -> bool:
        free = self.backend.free_memory()  # None on NumPy: X is in host memory already
        row_bytes = X.shape[1] * self.dtype.itemsize
        return free is None or row_bytes * X.shape[0] <= DEVICE_MEMORY_SHARE * free

    def subset(self, rows: Any) -> TrainingData:
        """The rows ``rows`` (host indices) as a new TrainingData (early stopping's split)."""
        part = object.__new__(TrainingData)
        part.__dict__.update(self.__dict__)
        idx = self.backend.asarray(rows)
        part.n = len(rows)
        part.X = self.xp.take(self.X, idx, axis=0) if self.on_device else self.X[rows]
        part.Y = self.xp.take(self.Y, idx, axis=0)
        part.w = None if self.w is None else self.xp.take(self.w, idx, axis=0)
        return part

    def host_rows(self, rows: slice | Any) -> Array:
        """Rows of a host-resident X, densified and moved to the device in the model's dtype."""
        block = self.X[rows]
        if self.sparse:
            block = block.toarray()
        return self.backend.asarray(block, dtype=self.dtype)

    def batches(
        self, order: Any, batch_size: int
    ) -> Iterator[tuple[Array, Array, Array | None, int]]:
        """(X_b, Y_b, w_b, n_b) on the device for consecutive slices of ``order`` (host row
        indices), or of 0..N-1 in order when ``order`` is None."""
        xp = self.xp
        order_dev = None if order is None else self.backend.asarray(order)  # once per epoch
        for s in row_chunks(self.n, batch_size):
            if order_dev is None:  # contiguous rows: views, no gather
                xb = self.X[s] if self.on_device else self.host_rows(s)
                yb = self.Y[s]
                wb = None if self.w is None else self.w[s]
            else:
                idx = order_dev[s]
                xb = xp.take(self.X, idx, axis=0) if self.on_device else self.host_rows(order[s])
                yb = xp.take(self.Y, idx, axis=0)
                wb = None if self.w is None else xp.take(self.w, idx, axis=0)
            yield xb, yb, wb, s.stop - s.start

    def weight_sum(self) -> Any:
        """The number of samples, or the sum of the weights (a 0-d device array)."""
        return self.n if self.w is None else self.w.sum()
