"""Run under mpiexec by tests/test_distributed.py: CNNs in data-parallel fit, BatchNorm's rule.

Usage: ``mpiexec -n 2 python -m mpi4py tests/mpi/conv_equiv.py OUT_DIR``. Two cases:

* ``conv``: a CNN without BatchNorm (Conv2D, ReLU, MaxPool2D, Flatten, Dense) on 8x8 images,
  float64, 33-row batches split 17 + 16; rank 0 also trains it alone (the reference). Each rank
  writes ``conv.rank<r>.npz`` and rank 0 ``conv.reference.npz``.
* ``batchnorm``: Conv2D, BatchNorm2D, ReLU, Flatten, Dense, BatchNorm1D, ReLU, Dense, 32-row
  batches. The communicator records, at each epoch end, the running statistics each rank
  holds just before they are averaged, and whether the start broadcast them. Each rank writes
  ``batchnorm.rank<r>.npz`` (final weights and statistics, the recorded ones, the broadcast
  flag); rank 0's ModelCheckpoint writes ``batchnorm.ckpt``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import gpunn
from gpunn.training.callbacks import ModelCheckpoint
from gpunn.training.distributed import Communicator, get_communicator, rank_backend


def make_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, 1, 8, 8) with 3 classes that depend on where the bright pixels are."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, 1, 8, 8))
    y = (X[:, 0, :4].mean(axis=(1, 2)) > X[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)
    y += 2 * (X[:, 0, :, :2].mean(axis=(1, 2)) > 0.55)
    return X, np.minimum(y, 2)


def conv_model(backend: Any) -> gpunn.Sequential:
    layers = [
        gpunn.Conv2D(1, 4, 3, padding=1),
        gpunn.ReLU(),
        gpunn.MaxPool2D(2),
        gpunn.Flatten(),
        gpunn.Dense(4 * 4 * 4, 3),
    ]
    return gpunn.Sequential(layers, backend=backend, dtype="float64", seed=3, input_shape=(1, 8, 8))


def bn_model(backend: Any) -> gpunn.Sequential:
    layers = [
        gpunn.Conv2D(1, 3, 3),
        gpunn.BatchNorm2D(3),
        gpunn.ReLU(),
        gpunn.Flatten(),
        gpunn.Dense(3 * 6 * 6, 8),
        gpunn.BatchNorm1D(8),
        gpunn.ReLU(),
        gpunn.Dense(8, 3),
    ]
    return gpunn.Sequential(layers, backend=backend, dtype="float64", seed=4, input_shape=(1, 8, 8))


class Recording(Communicator):
    """``inner``'s collectives, noting the model's running statistics as each all-reduce of
    them begins (the values a rank holds before they are averaged) and broadcasts of them."""

    def __init__(self, inner: Communicator, model: gpunn.Sequential) -> None:
        super().__init__()
        self.inner, self.model = inner, model
        self.rank, self.size, self.kind = inner.rank, inner.size, inner.kind
        self.before: list[np.ndarray] = []
        self.state_broadcast = False

    def _is_state(self, buffer: Any) -> bool:
        return buffer is self.model.flat_state

    def allreduce_sum(self, buffer: Any) -> Any:
        if self._is_state(buffer):
            self.before.append(self.model.backend.to_numpy(buffer).copy())
        return self.inner.allreduce_sum(buffer)

    def allreduce_max(self, buffer: Any) -> Any:
        return self.inner.allreduce_max(buffer)

    def bcast(self, buffer: Any, root: int = 0) -> Any:
        self.state_broadcast |= self._is_state(buffer)
        return self.inner.bcast(buffer, root)

    def barrier(self) -> None:
        self.inner.barrier()


def fit(model: gpunn.Sequential, X, y, batch: int, comm: Any, callbacks=()) -> Any:
    return model.fit(
        X,
        y,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.SGD(0.1, momentum=0.9),
        epochs=2,
        batch_size=batch,
        seed=11,
        verbose=0,
        comm=comm,
        callbacks=list(callbacks),
    )


def main() -> None:
    out = Path(sys.argv[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # this script is run with python -m mpi4py
        backend = rank_backend("numpy")
        comm = get_communicator(backend)
    assert comm.size == 2, comm

    X, y = make_images(160)
    model = conv_model(backend)
    model.flat_params[...] += comm.rank  # different starting points: fit must broadcast
    history = fit(model, X, y, 33, comm)
    np.savez(
        out / f"conv.rank{comm.rank}.npz",
        params=backend.to_numpy(model.flat_params),
        loss=history["loss"],
    )
    if comm.rank == 0:
        ref = conv_model(backend)
        ref_history = fit(ref, X, y, 33, None)
        np.savez(
            out / "conv.reference.npz",
            params=backend.to_numpy(ref.flat_params),
            loss=ref_history["loss"],
        )

    model = bn_model(backend)
    model.flat_state[...] += 5 * comm.rank  # rank 1 starts from other statistics
    recording = Recording(comm, model)
    saver = ModelCheckpoint(out / "batchnorm.ckpt", save_best_only=False)
    fit(model, X, y, 32, recording, [saver])
    np.savez(
        out / f"batchnorm.rank{comm.rank}.npz",
        params=backend.to_numpy(model.flat_params),
        state=backend.to_numpy(model.flat_state),
        before=np.stack(recording.before),
        broadcast=recording.state_broadcast,
    )
    comm.barrier()


if __name__ == "__main__":
    main()
