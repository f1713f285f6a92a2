"""Run under mpiexec by tests/test_distributed.py: how many BLAS threads each rank ends up with.

Usage: ``mpiexec -n 2 python -m mpi4py tests/mpi/threads.py OUT_DIR``. Each rank writes
``rank<r>.json``: the CPUs it may run on, its BLAS threads (as threadpoolctl reports them)
before ``get_communicator``, after it, and after a short data-parallel ``fit``, and the count
the communicator reports.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info

import gpunn
from gpunn.training.distributed import get_communicator


def blas_threads() -> list[int]:
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def main() -> None:
    out = Path(sys.argv[1])
    before = blas_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # this script is run with python -m mpi4py
        comm = get_communicator("numpy")
    after = blas_threads()
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 8)), rng.integers(0, 3, 64)
    model = gpunn.Sequential([gpunn.Dense(8, 16), gpunn.ReLU(), gpunn.Dense(16, 3)], "numpy")
    model.fit(X, y, loss=gpunn.SoftmaxCrossEntropy(), optimizer=gpunn.SGD(0.1),
              epochs=1, batch_size=16, verbose=0, comm=comm)  # fmt: skip
    report = {
        "size": comm.size,
        "cpus": len(os.sched_getaffinity(0)),
        "before": before,
        "after": after,
        "after_fit": blas_threads(),
        "comm_threads": comm.threads,
    }
    (out / f"rank{comm.rank}.json").write_text(json.dumps(report))
    comm.barrier()


if __name__ == "__main__":
    main()
