"""Measure data-parallel scaling: samples/s of 1 and 2 MPI ranks, and the all-reduce's share.

The workload is the MNIST-sized MLP 784-256-10 (ReLU, float32, plain SGD) on synthetic data at
global batch 4096, on the NumPy backend. Four runs, each in its own ``mpiexec`` job:

* A: 1 rank with 1 BLAS thread (the per-core baseline),
* B: 1 rank with as many BLAS threads as there will be ranks (the same cores, used by BLAS),
* C: N ranks (default 2) with 1 BLAS thread each,
* D: 1 rank with 1 BLAS thread at batch 4096 / N: one rank's share of C's work, alone.

Usage: ``python scripts/mpi_scaling.py [--ranks 2] [--samples 65536] [--epochs 4] [--repeat 3]``.
The first epoch is warm-up; a run's throughput is the median of the others, and with
``--repeat`` the four runs are repeated in turn and each one's fastest repetition is kept (on a
shared machine, other work only ever makes a run slower). Efficiency is
``throughput(C) / (N * throughput(A))``. The all-reduce time of C is wall time per step
(including any wait for the slower rank); it is also timed alone, with the ranks arriving
together. D gives the efficiency C would reach if the ranks' cores did not slow each other:
``step(A) / (N * (step(D) + all-reduce alone))``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 4096


def worker(args: argparse.Namespace) -> None:
    """One rank of a measured run (started by mpiexec); rank 0 prints one JSON line."""
    import gpunn
    from gpunn.training.callbacks import Callback
    from gpunn.training.distributed import get_communicator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comm = get_communicator("numpy")
    rng = np.random.default_rng(0)
    X = rng.random((args.samples, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.samples)
    model = gpunn.Sequential(
        [gpunn.Dense(784, 256), gpunn.ReLU(), gpunn.Dense(256, 10)], "numpy", "float32", seed=0
    )
    timed = TimedAllreduce(comm, model.flat_grads.size)

    class EpochMarks(Callback):
        def on_epoch_begin(self, epoch: int) -> None:
            timed.per_epoch.append(0.0)

    history = model.fit(
        X,
        y,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.SGD(0.01),
        epochs=args.epochs,
        batch_size=args.batch,
        verbose=0,
        callbacks=[EpochMarks()],
        comm=timed if comm.size > 1 else None,
    )
    steps = -(-args.samples // args.batch)
    epoch_s = statistics.median(history["epoch_seconds"][1:])
    allreduce_s = statistics.median(timed.per_epoch[1:]) if comm.size > 1 else 0.0
    alone_s = allreduce_alone(comm, model.flat_grads) if comm.size > 1 else 0.0
    if comm.rank == 0:
        result = {
            "ranks": comm.size,
            "threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "samples_per_s": args.samples / epoch_s,
            "step_ms": 1e3 * epoch_s / steps,
            "allreduce_ms_per_step": 1e3 * allreduce_s / steps,
            "allreduce_alone_ms": 1e3 * alone_s,
        }
        print("RESULT " + json.dumps(result), flush=True)


class TimedAllreduce:
    """A communicator that times the gradient all-reduces, epoch by epoch (wall time, so it
    includes waiting for the slower rank)."""

    def __init__(self, comm: Any, grad_size: int) -> None:
        self.comm, self.grad_size = comm, grad_size
        self.rank, self.size = comm.rank, comm.size
        self.per_epoch: list[float] = []

    def allreduce_sum(self, buffer: Any) -> Any:
        t0 = time.perf_counter()
        self.comm.allreduce_sum(buffer)
        if buffer.size == self.grad_size:  # not the end-of-epoch statistics
            self.per_epoch[-1] += time.perf_counter() - t0
        return buffer

    def allreduce_max(self, buffer: Any) -> Any:
        return self.comm.allreduce_max(buffer)

    def bcast(self, buffer: Any, root: int = 0) -> Any:
        return self.comm.bcast(buffer, root)

    def barrier(self) -> None:
        self.comm.barrier()


def allreduce_alone(comm: Any, grads: Any, repeats: int = 50) -> float:
    """Seconds per all-reduce of the gradient buffer when the ranks arrive together."""
    buf = np.zeros_like(grads)
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(repeats):
        comm.allreduce_sum(buf)
    return (time.perf_counter() - t0) / repeats


def launch(ranks: int, threads: int, args: argparse.Namespace, batch: int = BATCH) -> dict:
    exe = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    env = dict(os.environ, GPUNN_BACKEND="numpy")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [exe, "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__, "--worker"]
    cmd += ["--samples", str(args.samples), "--epochs", str(args.epochs), "--batch", str(batch)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--samples", type=int, default=65536)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="keep the best of this many")
    parser.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    n = args.ranks
    configs = {
        "A 1 rank x 1 thread": (1, 1, BATCH),
        f"B 1 rank x {n} threads": (1, n, BATCH),
        f"C {n} ranks x 1 thread": (n, 1, BATCH),
        f"D 1 rank, batch {BATCH // n}": (1, 1, BATCH // n),
    }
    runs: dict[str, dict] = {}
    for _ in range(args.repeat):
        for name, (ranks, threads, batch) in configs.items():
            r = launch(ranks, threads, args, batch)
            if name not in runs or r["samples_per_s"] > runs[name]["samples_per_s"]:
                runs[name] = r
    print(
        f"784-256-10 MLP, float32, SGD, global batch {BATCH}, {args.samples} samples, NumPy "
        f"(best of {args.repeat})"
    )
    print(f"{'run':<24}{'samples/s':>12}{'step ms':>10}{'allreduce ms':>14}{'share':>8}")
    for name, r in runs.items():
        share = r["allreduce_ms_per_step"] / r["step_ms"]
        print(
            f"{name:<24}{r['samples_per_s']:>12,.0f}{r['step_ms']:>10.1f}"
            f"{r['allreduce_ms_per_step']:>14.2f}{share:>8.1%}"
        )
    a, b, c, d = runs.values()
    alone = c["allreduce_alone_ms"]
    ideal = a["step_ms"] / (n * (d["step_ms"] + alone))
    print(f"all-reduce of the gradient buffer alone (ranks arriving together): {alone:.2f} ms")
    print(f"scaling efficiency C / ({n} x A): {c['samples_per_s'] / (n * a['samples_per_s']):.2f}")
    print(f"speed-up C / B (the same cores): {c['samples_per_s'] / b['samples_per_s']:.2f}")
    print(f"efficiency if the ranks' cores did not slow each other (from D): {ideal:.2f}")


if __name__ == "__main__":
    main()
