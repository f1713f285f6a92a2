"""Test accuracy of ``gpunn.presets.digits_cnn`` on the 8x8 digits, over seeds, beside the MLP.

Each seed makes the split ``gpunn train --dataset digits`` makes (70/10/20, shuffled by the
seed), the initial weights and the batch order, as the command line does. The CNN is trained
as ``gpunn.presets.DIGITS_CNN_TRAINING`` says, on the images reshaped to (N, 1, 8, 8); the MLP
(64-128-10, ReLU) with the command line's digits defaults (Adam 1e-3, 30 epochs, batch 32).
The settings were chosen on the validation part; the test part is only reported. BLAS runs
on ``--threads`` threads (default 1): the summation order of a multi-threaded GEMM can differ,
which changes a run's last digits and so, over 30 epochs, its accuracy by a sample or two.

Run: .venv/bin/python bench/digits_cnn.py --seeds 0 1 2 3 4 [--mlp]
"""

from __future__ import annotations

import argparse
import statistics
import time

import threadpoolctl

import gpunn
from gpunn.datasets.source import builtin, load_split
from gpunn.presets import DIGITS_CNN_TRAINING, digits_cnn, mlp


def run(seed: int, cnn: bool) -> tuple[float, float, float]:
    """(validation accuracy, test accuracy, seconds) of one training run."""
    split = load_split(builtin("digits", seed))
    parts = [split.train, split.val, split.test]
    if cnn:
        parts = [(X.reshape(-1, 1, 8, 8), y) for X, y in parts]
        model = gpunn.Sequential(digits_cnn(), backend="numpy", seed=seed, input_shape=(1, 8, 8))
        settings = DIGITS_CNN_TRAINING
    else:
        model = gpunn.Sequential(mlp(64, [128], 10), backend="numpy", seed=seed)
        settings = {"lr": 1e-3, "epochs": 30, "batch_size": 32}
    t0 = time.perf_counter()
    history = model.fit(
        *parts[0],
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.Adam(settings["lr"]),
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        validation_data=parts[1],
        seed=seed,
        verbose=0,
    )
    seconds = time.perf_counter() - t0
    return history["val_accuracy"][-1], model.evaluate(*parts[2])["accuracy"], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--mlp", action="store_true", help="also train the MLP on each seed")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    args = ap.parse_args()
    threadpoolctl.threadpool_limits(args.threads, user_api="blas")
    kinds = [("digits_cnn", True)] + ([("mlp 64-128-10", False)] if args.mlp else [])
    for label, cnn in kinds:
        tests = []
        for seed in args.seeds:
            val, test, seconds = run(seed, cnn)
            tests.append(test)
            print(
                f"{label:>14}  seed {seed}: validation {100 * val:.2f} %, test {100 * test:.2f} %"
                f"  ({seconds:.0f} s)",
                flush=True,
            )
        print(
            f"{label:>14}  test accuracy over seeds {args.seeds}: {100 * min(tests):.2f}-"
            f"{100 * max(tests):.2f} %, mean {100 * statistics.mean(tests):.2f} %",
            flush=True,
        )


if __name__ == "__main__":
    main()
