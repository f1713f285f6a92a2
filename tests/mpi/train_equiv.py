"""Run under mpiexec by tests/test_distributed.py: data-parallel fit against one-process fit.

Usage: ``mpiexec -n 2 python -m mpi4py tests/mpi/train_equiv.py OUT_DIR [BACKEND]`` (BACKEND
"numpy", the default, or "cupy": each rank then takes GPU local_rank % device_count). For each
case every rank trains with the communicator gpunn picks, and rank 0 also trains the same model
alone (no communicator: the reference). Each rank writes ``<case>.rank<r>.npz`` (final flat
weights, history, host reads per epoch) and rank 0 adds ``<case>.reference.npz`` and
``comm.txt`` (the communicator's kind); the test compares them.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

import gpunn
from gpunn.training.callbacks import Callback, ModelCheckpoint
from gpunn.training.distributed import get_communicator, rank_backend

# name: (dtype, optimizer, samples, global batch, epochs); steps = epochs * ceil(samples / batch)
CASES = {
    # 20 steps in float64, batches split evenly (32 = 16 + 16)
    "float64": ("float64", "sgd", 320, 32, 2),
    # 10 steps in float32 with Adam
    "float32": ("float32", "adam", 640, 64, 1),
    # 20 steps, 33-row batches split 17 + 16, and a last batch of one row: rank 1 gets none
    "uneven": ("float64", "sgd", 298, 33, 2),
    # as "uneven", with the data set too large for the "device": shards are gathered on the host
    "chunked": ("float64", "sgd", 298, 33, 2),
}


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 12))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64) + 2 * (X[:, 3] > 0.5)
    return X, y


def make_model(dtype: str, backend: gpunn.Backend) -> gpunn.Sequential:
    layers = [gpunn.Dense(12, 16), gpunn.Tanh(), gpunn.Dense(16, 4)]
    return gpunn.Sequential(layers, backend=backend, dtype=dtype, seed=3)


def make_optimizer(kind: str) -> gpunn.Optimizer:
    return gpunn.SGD(0.2, momentum=0.9) if kind == "sgd" else gpunn.Adam(3e-3)


def train(case: str, backend, comm, out: Path):
    """(model, history, host reads per epoch) of one case; comm None trains alone."""
    dtype, opt, n, batch, epochs = CASES[case]
    X, y = make_data(n)
    model = make_model(dtype, backend)
    if comm is not None:
        model.flat_params[...] += comm.rank  # different starting points: fit must broadcast
    reads: list[int] = []  # host reads of each epoch, up to the end-of-epoch callbacks
    counting = [False]
    to_numpy = model.backend.to_numpy

    def counted(a):
        if counting[0]:
            reads[-1] += 1
        return to_numpy(a)

    model.backend.to_numpy = counted  # an instance attribute: `del` below restores the method
    if case == "chunked" and comm is not None:
        model.backend.free_memory = lambda: 4000  # bytes: room for 19 rows of X and y

    class CountEpochs(Callback):
        def on_epoch_begin(self, epoch: int) -> None:
            reads.append(0)
            counting[0] = True

        def on_epoch_end(self, epoch: int, logs: dict) -> None:
            counting[0] = False  # the checkpoint written after this reads weights on purpose

    saver = ModelCheckpoint(out / f"{case}.ckpt", save_best_only=False)
    callbacks = [CountEpochs()] + ([saver] if comm is not None else [])
    try:
        history = model.fit(
            X,
            y,
            loss=gpunn.SoftmaxCrossEntropy(),
            optimizer=make_optimizer(opt),
            epochs=epochs,
            batch_size=batch,
            seed=11,
            verbose=0,
            callbacks=callbacks,
            comm=comm,
        )
    finally:
        del model.backend.to_numpy
        model.backend.__dict__.pop("free_memory", None)
    model.saved = len(saver.saved)  # checkpoints this rank wrote
    return model, history, reads


def main() -> None:
    out = Path(sys.argv[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # this script is run with python -m mpi4py
        backend = rank_backend(sys.argv[2] if len(sys.argv) > 2 else "numpy")
        comm = get_communicator(backend)
    assert comm.size == 2, comm
    if comm.rank == 0:
        (out / "comm.txt").write_text(f"{comm.kind}\n{comm.reason}\n")
    for case in CASES:
        model, history, reads = train(case, backend, comm, out)
        np.savez(
            out / f"{case}.rank{comm.rank}.npz",
            params=backend.to_numpy(model.flat_params),
            loss=history["loss"],
            accuracy=history["accuracy"],
            reads=reads,
            saved=model.saved,
        )
        if comm.rank == 0:
            ref, ref_history, _ = train(case, backend, None, out)
            np.savez(
                out / f"{case}.reference.npz",
                params=backend.to_numpy(ref.flat_params),
                loss=ref_history["loss"],
                accuracy=ref_history["accuracy"],
            )
    comm.barrier()


if __name__ == "__main__":
    main()
