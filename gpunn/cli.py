"""The `gpunn` command: info, train, evaluate, predict and bench.

Usage errors exit with status 2 and runtime errors with status 1, each with one readable line
on stderr; ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

DATASETS = ("digits", "spirals", "blobs", "mnist", "fashion-mnist")
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")
OPTIMIZERS = ("adam", "adamw", "sgd")
DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.1}


class UsageError(Exception):
    """A problem with the command line itself (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and a hint), not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


# ------------------------------------------------------------------------------------------
# Argument types
# ------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _widths(text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths like 256,128, got {text!r}"
        ) from None
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return widths


def _backend_spec(text: str) -> str:
    from gpunn.backend import _parse_spec

    try:
        _parse_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# ------------------------------------------------------------------------------------------
# Parser
# ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")

    parser = _Parser(
        prog="gpunn",
        description="Train and benchmark hand-written neural networks on NumPy or CuPy.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("info", parents=[common], help="backends, devices and library versions")

    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--dataset", choices=DATASETS, default=None, help="built-in data set (default: digits)"
    )
    data.add_argument("--data", type=Path, help="your own data: .npz (X, y) or .csv (label last)")
    data.add_argument("--seed", type=int, default=0, help="seed for weights, split and batches")
    data.add_argument(
        "--backend",
        type=_backend_spec,
        default=None,
        help="auto, numpy, cupy or cupy:N (default: $GPUNN_BACKEND or auto)",
    )
    data.add_argument("--tf32", action="store_true", help="allow TF32 tensor-core GEMMs on CuPy")

    train = sub.add_parser("train", parents=[common, data], help="train a network")
    train.add_argument("--hidden", type=_widths, default=[128], help="hidden widths, e.g. 256,128")
    train.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    train.add_argument("--lr", type=_non_negative_float, default=None, help="learning rate")
    train.add_argument("--momentum", type=_non_negative_float, default=0.9, help="SGD momentum")
    train.add_argument("--epochs", type=_positive_int, default=30)
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    train.add_argument("--save", type=Path, help="write the trained model to this checkpoint")
    train.add_argument("--resume", type=Path, help="continue training from this checkpoint")
    train.add_argument("--plot", type=Path, help="write loss/accuracy curves to this PNG")
    train.add_argument("--quiet", action="store_true", help="print only the final results")
    train.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel training on the ranks of 'mpiexec -n N python -m mpi4py -m gpunn "
        "train --distributed ...'; --batch-size is then the global batch",
    )

    evaluate = sub.add_parser("evaluate", parents=[common, data], help="score a checkpoint")
    evaluate.add_argument("--checkpoint", type=Path, required=True)

    predict = sub.add_parser("predict", parents=[common], help="predict with a checkpoint")
    predict.add_argument("--checkpoint", type=Path, required=True)
    predict.add_argument("--data", type=Path, required=True, help=".npz (X) or .csv inputs")
    predict.add_argument("--out", type=Path, help="write predictions to .csv or .npz")
    predict.add_argument("--backend", type=_backend_spec, default=None)

    from gpunn.bench import cli as bench_cli

    bench = bench_cli.add_parser(sub)  # sets args.func to its own handler
    bench.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


# ------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------


def _backend(spec: str | None, tf32: bool = False) -> Any:
    """The backend, with the fallback warning (if any) printed as one line."""
    from gpunn.backend import get_backend

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = get_backend(spec, tf32=tf32 or None)
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    return backend


def _load_data(args: argparse.Namespace) -> tuple[Any, Any, Any, str]:
    """(train, validation, test) splits and a description, from --data or --dataset."""
    from gpunn import datasets

    if args.data is not None:
        X, y = datasets.load_file(args.data)
        name = str(args.data)
    else:
        name = args.dataset or "digits"
        if name in ("mnist", "fashion-mnist"):
            load = datasets.mnist if name == "mnist" else datasets.fashion_mnist
            (X, y), test = load()
            train, val, _ = datasets.train_val_test_split(X, y, val=0.1, test=0.0, seed=args.seed)
            return train, val, test, f"{name}: {len(X)} training + {len(test[0])} test samples"
        if name == "spirals":
            X, y = datasets.spirals(3000, seed=args.seed)
        elif name == "blobs":
            X, y = datasets.blobs(3000, seed=args.seed)
        else:
            X, y = datasets.digits()
    if X.ndim != 2:
        X = X.reshape(len(X), -1)
    train, val, test = datasets.train_val_test_split(X, y, val=0.1, test=0.2, seed=args.seed)
    return train, val, test, f"{name}: {len(X)} samples, {X.shape[1]} features"


def _task(y: Any) -> tuple[Any, int]:
    """The loss for these labels and the number of model outputs."""
    import gpunn

    if y.dtype.kind in "iu":
        classes = int(y.max()) + 1
        if classes == 2:
            return gpunn.BinaryCrossEntropy(), 1
        return gpunn.SoftmaxCrossEntropy(), classes
    return gpunn.MeanSquaredError(), 1


def _make_model(args: argparse.Namespace, n_in: int, n_out: int, backend: Any) -> Any:
    import gpunn

    act = {
        "relu": gpunn.ReLU,
        "leaky_relu": gpunn.LeakyReLU,
        "sigmoid": gpunn.Sigmoid,
        "tanh": gpunn.Tanh,
    }[args.activation]
    layers: list[Any] = []
    width = n_in
    for h in args.hidden:
        layers += [gpunn.Dense(width, h), act()]
        width = h
    layers.append(gpunn.Dense(width, n_out))
    return gpunn.Sequential(layers, backend=backend, dtype=args.dtype, seed=args.seed)


def _make_optimizer(args: argparse.Namespace) -> Any:
    import gpunn

    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    if args.optimizer == "sgd":
        return gpunn.SGD(lr, momentum=args.momentum)
    return (gpunn.Adam if args.optimizer == "adam" else gpunn.AdamW)(lr)


def _train_backend(args: argparse.Namespace) -> tuple[Any, Any]:
    """The backend, and with --distributed this rank's communicator (else None)."""
    if not args.distributed:
        return _backend(args.backend, args.tf32), None
    from gpunn.training import distributed

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = distributed.rank_backend(args.backend, tf32=args.tf32 or None)
        comm = distributed.get_communicator(backend)
    if comm.rank == 0:
        for w in caught:
            print(f"note: {w.message}", file=sys.stderr)
    return backend, comm


def _load_data_once(args: argparse.Namespace, comm: Any) -> tuple[Any, Any, Any, str]:
    """``_load_data``; on MPI ranks, rank 0 first (it may download), then the others."""
    if comm is not None and comm.rank != 0:
        comm.barrier()  # matches rank 0's barrier below, once the data set is cached
    loaded = _load_data(args)
    if comm is not None and comm.rank == 0:
        comm.barrier()
    return loaded


def _check_data_args(args: argparse.Namespace) -> None:
    """Usage errors in the data options, reported before any backend is started."""
    if getattr(args, "data", None) is not None and getattr(args, "dataset", None) is not None:
        raise UsageError(f"gpunn {args.command}: give either --data or --dataset, not both")


def cmd_train(args: argparse.Namespace) -> int:
    _check_data_args(args)
    backend, comm = _train_backend(args)
    if comm is not None and comm.rank != 0:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # rank 0 reports
            return _train(args, backend, comm)
    return _train(args, backend, comm)


def _train(args: argparse.Namespace, backend: Any, comm: Any) -> int:
    from gpunn import checkpoint

    train, val, test, about = _load_data_once(args, comm)
    loss, n_out = _task(train[1])
    if args.resume is not None:
        model, optimizer, info = checkpoint.load_with_optimizer(args.resume, backend=backend)
        optimizer = optimizer or _make_optimizer(args)
        if args.lr is not None:
            optimizer.lr = args.lr
        done = int(info.get("epoch") or 0)
        start = f"resumed from {args.resume} after epoch {done}"
    else:
        model = _make_model(args, train[0].shape[1], n_out, backend)
        optimizer = _make_optimizer(args)
        done, start = 0, "new model"
    if not args.quiet:
        print(f"backend: {backend!r}")
        print(f"data:    {about}")
        print(f"model:   {model.layers} ({model.num_params:,} parameters, {model.dtype.name})")
        print(f"         {start}")
        print(f"train:   {optimizer!r}, {args.epochs} epochs, batch size {args.batch_size}")
        if comm is not None:
            print(f"ranks:   {comm.size}, {comm.kind} ({comm.reason})")
        sys.stdout.flush()
    t0 = time.perf_counter()
    try:
        history = model.fit(
            *train,
            loss=loss,
            optimizer=optimizer,
            epochs=args.epochs,
            batch_size=args.batch_size,
            validation_data=val if len(val[0]) else None,
            seed=args.seed,
            verbose=0 if args.quiet else 1,
            initial_epoch=done,
            comm=comm,
        )
    except MemoryError as exc:
        backend.free_memory_pool()
        raise RuntimeError(
            f"out of memory on {backend.spec} at batch size {args.batch_size} ({exc}); "
            "try a smaller --batch-size"
        ) from exc
    wall = time.perf_counter() - t0
    result = model.evaluate(*test, loss=loss)
    rate = sum(len(train[0]) for _ in history.epoch) / max(sum(history["epoch_seconds"]), 1e-12)
    if "accuracy" in result:
        print(f"test accuracy: {100 * result['accuracy']:.2f}%  (test loss {result['loss']:.4f})")
    else:
        print(f"test loss: {result['loss']:.6f}")
    print(f"throughput: {rate:,.0f} samples/s on {backend.spec}; training took {wall:.2f} s")
    rank0 = comm is None or comm.rank == 0  # the ranks hold the same model: one writes it
    if args.save is not None and rank0:
        path = checkpoint.save(model, args.save, optimizer, epoch=done + len(history.epoch))
        print(f"saved: {path}")
    if comm is not None:
        comm.barrier()  # the checkpoint is complete before any rank exits
    if args.plot is not None and rank0:
        from gpunn.plots import plot_history

        print(f"plot: {plot_history(history, args.plot)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gpunn import checkpoint

    _check_data_args(args)
    backend = _backend(args.backend, args.tf32)
    model = checkpoint.load(args.checkpoint, backend=backend)
    if args.data is not None and args.dataset is None:
        from gpunn.datasets import load_file

        X, y = load_file(args.data)
        X = X.reshape(len(X), -1)
        about = f"{args.data} (all {len(X)} samples)"
    else:
        _, _, (X, y), about = _load_data(args)
        about += f"; test split of seed {args.seed}"
    loss = _loss_for(model, y)
    result = model.evaluate(X, y, loss=loss)
    print(f"backend: {backend!r}")
    print(f"data:    {about}")
    if "accuracy" in result:
        print(f"accuracy: {100 * result['accuracy']:.2f}%  (loss {result['loss']:.4f})")
    else:
        print(f"loss: {result['loss']:.6f}")
    return 0


def _loss_for(model: Any, y: Any) -> Any:
    import gpunn

    if y.dtype.kind == "f":
        return gpunn.MeanSquaredError()
    return gpunn.BinaryCrossEntropy() if model.out_features == 1 else gpunn.SoftmaxCrossEntropy()


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from gpunn import checkpoint
    from gpunn.datasets import load_features

    backend = _backend(args.backend)
    model = checkpoint.load(args.checkpoint, backend=backend)
    X = load_features(args.data, model.in_features)
    logits = backend.to_numpy(model.predict(X))
    if model.out_features == 1:
        labels = (logits[:, 0] > 0).astype(np.int64)
    else:
        labels = logits.argmax(axis=1)
    if args.out is None:
        print("\n".join(str(v) for v in labels.tolist()))
    elif args.out.suffix.lower() == ".npz":
        np.savez(args.out, labels=labels, logits=logits)
        print(f"wrote {len(labels)} predictions to {args.out}", file=sys.stderr)
    else:
        np.savetxt(args.out, labels, fmt="%d")
        print(f"wrote {len(labels)} predictions to {args.out}", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from gpunn.info import collect, render

    print(render(collect()))
    return 0


COMMANDS = {"info": cmd_info, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gpunn` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not debug:  # overflow in a diverging run is reported as one NonFiniteLossError line
        warnings.filterwarnings("ignore", message=r".*(overflow|invalid value|divide by zero)")
    try:
        args = build_parser().parse_args(argv)
        command = COMMANDS.get(args.command)
        if command is None:  # a subcommand that registered its own handler (bench)
            return int(args.func(args))
        return command(args)
    except UsageError as exc:
        if debug:
            raise
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpunn: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(f"gpunn: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """The exception as one readable line; the type is named only for unexpected errors."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    expected = (ValueError, OSError, RuntimeError, ArithmeticError, MemoryError)
    return text if isinstance(exc, expected) else f"{type(exc).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
