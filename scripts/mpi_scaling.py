"""Measure data-parallel scaling: samples/s of 1 and 2 MPI ranks, and the all-reduce's share.

The workload is the MNIST-sized MLP 784-256-10 (ReLU, float32, plain SGD) on synthetic data at
global batch 4096, on the NumPy backend. Five runs, each in its own ``mpiexec`` job:

* A: 1 rank with 1 BLAS thread (the per-core baseline),
* B: 1 rank with as many BLAS threads as there will be ranks (the same cores, used by BLAS),
* C: N ranks (default 2) with 1 BLAS thread each, set by OPENBLAS_NUM_THREADS and friends,
* D: 1 rank with 1 BLAS thread at batch 4096 / N: one rank's share of C's work, alone,
* E: N ranks with no thread variables set: the threads gpunn gives each rank by itself
  (the machine's cores divided among the ranks; it should match C when N = cores),

and with ``--oversubscribed`` a sixth, F: N ranks that each keep one BLAS thread per core
(``GPUNN_THREADS_PER_RANK`` = cores), as every rank did before gpunn divided the cores.

Usage: ``python scripts/mpi_scaling.py [--ranks 2] [--samples 65536] [--epochs 4] [--repeat 3]
[--oversubscribed]``. The first epoch is warm-up; a run's throughput is the median of the
others. With ``--repeat`` the runs are repeated in turn (interleaved, so drift of a shared
machine hits them alike) and the table gives the median over the repetitions, their range,
and the fastest (other work only ever makes a run slower). Efficiency is
``throughput(C) / (N * throughput(A))``, from the fastest repetitions. The all-reduce time
of C is wall time per step (including any wait for the slower rank); it is also timed alone,
with the ranks arriving together. D gives the efficiency C would reach if the ranks' cores
did not slow each other: ``step(A) / (N * (step(D) + all-reduce alone))``.
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
            "threads": blas_threads(),
            "samples_per_s": args.samples / epoch_s,
            "step_ms": 1e3 * epoch_s / steps,
            "allreduce_ms_per_step": 1e3 * allreduce_s / steps,
            "allreduce_alone_ms": 1e3 * alone_s,
        }
        print("RESULT " + json.dumps(result), flush=True)


def blas_threads() -> int | None:
    """This process's BLAS threads as threadpoolctl sees them (after gpunn's division)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    pools = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return max(pools) if pools else None


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


def launch(
    ranks: int, threads: int | None, args: argparse.Namespace, batch: int = BATCH, **extra: str
) -> dict:
    """One measured mpiexec job; ``threads`` None leaves the BLAS thread variables unset."""
    exe = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    env = dict(os.environ, GPUNN_BACKEND="numpy", **extra)
    if "GPUNN_THREADS_PER_RANK" not in extra:
        env.pop("GPUNN_THREADS_PER_RANK", None)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)
        if threads is not None:
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
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions")
    parser.add_argument(
        "--oversubscribed",
        action="store_true",
        help="also run F: every rank with one BLAS thread per core (slow)",
    )
    parser.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    n, cores = args.ranks, len(os.sched_getaffinity(0))
    configs: dict[str, tuple[int, int | None, int, dict[str, str]]] = {
        "A 1 rank x 1 thread": (1, 1, BATCH, {}),
        f"B 1 rank x {n} threads": (1, n, BATCH, {}),
        f"C {n} ranks x 1 thread": (n, 1, BATCH, {}),
        f"D 1 rank, batch {BATCH // n}": (1, 1, BATCH // n, {}),
        f"E {n} ranks, gpunn's threads": (n, None, BATCH, {}),
    }
    if args.oversubscribed:
        configs[f"F {n} ranks x {cores} threads"] = (
            n, None, BATCH, {"GPUNN_THREADS_PER_RANK": str(cores)}
        )  # fmt: skip
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(args.repeat):
        for name, (ranks, threads, batch, extra) in configs.items():
            runs[name].append(launch(ranks, threads, args, batch, **extra))
    print(
        f"784-256-10 MLP, float32, SGD, global batch {BATCH}, {args.samples} samples, NumPy, "
        f"{cores} cores; {args.repeat} interleaved repetition(s)"
    )
    print(
        f"{'run':<28}{'threads':>8}{'samples/s median':>18}{'(min-max)':>20}{'best':>10}"
        f"{'step ms':>9}{'allreduce ms':>14}{'share':>7}"
    )
    best = {}
    for name, results in runs.items():
        rates = [r["samples_per_s"] for r in results]
        top = max(results, key=lambda r: r["samples_per_s"])
        best[name] = top
        share = top["allreduce_ms_per_step"] / top["step_ms"]
        span = f"({min(rates):,.0f}-{max(rates):,.0f})"
        print(
            f"{name:<28}{top['threads'] or '?':>8}{statistics.median(rates):>18,.0f}{span:>20}"
            f"{top['samples_per_s']:>10,.0f}{top['step_ms']:>9.1f}"
            f"{top['allreduce_ms_per_step']:>14.2f}{share:>7.1%}"
        )
    a, b, c, d, e = (best[name] for name in list(configs)[:5])
    alone = c["allreduce_alone_ms"]
    ideal = a["step_ms"] / (n * (d["step_ms"] + alone))
    print(f"all-reduce of the gradient buffer alone (ranks arriving together): {alone:.2f} ms")
    print(f"scaling efficiency C / ({n} x A): {c['samples_per_s'] / (n * a['samples_per_s']):.2f}")
    print(f"speed-up C / B (the same cores): {c['samples_per_s'] / b['samples_per_s']:.2f}")
    print(f"gpunn's own thread choice E / C: {e['samples_per_s'] / c['samples_per_s']:.2f}")
    print(f"efficiency if the ranks' cores did not slow each other (from D): {ideal:.2f}")
    if args.oversubscribed:
        f = best[list(configs)[5]]
        print(f"oversubscribed F / E: {f['samples_per_s'] / e['samples_per_s']:.3f}")


if __name__ == "__main__":
    main()
