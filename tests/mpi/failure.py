"""Run under mpiexec by tests/test_distributed.py: a data-parallel run that goes wrong on rank 1.

Usage: ``mpiexec -n 2 python -m mpi4py tests/mpi/failure.py MODE`` with MODE

* ``raise``: rank 1 raises in its third batch while rank 0 waits in the gradient all-reduce;
  ``python -m mpi4py`` must turn that into the end of the whole job.
* ``drift``: rank 1 changes one of its weights before the first epoch; the end-of-epoch
  checksum comparison must stop every rank with a DriftError.
* ``mismatch``: rank 1 has one sample more; fit must refuse to start, on every rank.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

import gpunn
from gpunn.training.callbacks import Callback
from gpunn.training.distributed import get_communicator


class Sabotage(Callback):
    def __init__(self, mode: str, rank: int) -> None:
        self.mode, self.rank = mode, rank

    def on_epoch_begin(self, epoch: int) -> None:
        if self.mode == "drift" and self.rank == 1 and epoch == 1:
            self.model.flat_params[0] += 0.05

    def on_batch_begin(self, batch: int) -> None:
        if self.mode == "raise" and self.rank == 1 and batch == 2:
            raise RuntimeError("deliberate failure on rank 1")


def main() -> None:
    mode = sys.argv[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comm = get_communicator("numpy")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((401 if mode == "mismatch" and comm.rank == 1 else 400, 8))
    y = (X[:, 0] > 0).astype(np.int64)
    model = gpunn.Sequential(
        [gpunn.Dense(8, 16), gpunn.ReLU(), gpunn.Dense(16, 2)], backend="numpy", seed=1
    )
    model.fit(
        X,
        y,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.SGD(0.1),
        epochs=3,
        batch_size=40,
        verbose=0,
        callbacks=[Sabotage(mode, comm.rank)],
        comm=comm,
    )
    print(f"rank {comm.rank}: finished without an error", flush=True)


if __name__ == "__main__":
    main()
