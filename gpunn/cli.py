"""The `gpunn` command: info, train, evaluate, predict and bench.

Exit status: 0 success; 2 a usage error (the command line itself: a bad flag, a flag that
conflicts with the checkpoint); 1 a runtime error (a missing or unreadable file, an unwritable
output folder, bad data, an unusable backend, a non-finite loss); 130 interrupted (Ctrl-C);
141 the reader of the output went away (``gpunn ... | head``), which ends gpunn quietly as it
does any Unix tool. Every error is one readable line on stderr; ``--debug`` shows the full
traceback instead.

Everything that can go wrong before the work is checked before it: flags, the checkpoint to
resume, the output paths (``--save``, ``--plot``, ``--out``) and optional dependencies.
Heavy imports happen inside the commands, so ``gpunn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

DATASETS = ("digits", "spirals", "blobs", "mnist", "fashion-mnist", "cifar10")
#: --model: "mlp" (Dense layers, --hidden wide) or "lenet" (the data set's LeNet-style CNN)
MODELS = ("mlp", "lenet")
#: layer kinds that make a checkpoint's network a CNN (--model lenet) rather than an MLP
CNN_KINDS = ("Conv2D", "MaxPool2D", "AvgPool2D", "BatchNorm2D")
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")
ACTIVATION_KINDS = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "sigmoid": "Sigmoid", "tanh": "Tanh"}
OPTIMIZERS = ("adam", "adamw", "sgd")
OPTIMIZER_KINDS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
SGD_LR = 0.1  # the default learning rate of plain SGD (the table's lr is Adam's)
SGD_MOMENTUM = 0.9

#: Training settings each data set trains well with, used for every flag not given. Measured
#: with these defaults on a 2-core CPU, seeds 0-2 (test accuracy): digits 96.9-98.1 %, spirals
#: 99.8-100 %, blobs 100 %. mnist, fashion-mnist and cifar10 take common settings for an MLP
#: (not measured: they are downloaded). "file" is any --data file.
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"hidden": [128], "epochs": 30, "batch_size": 32, "lr": 1e-3},
    "spirals": {"hidden": [64, 64], "epochs": 50, "batch_size": 32, "lr": 1e-2},
    "blobs": {"hidden": [32], "epochs": 10, "batch_size": 32, "lr": 1e-3},
    "mnist": {"hidden": [256], "epochs": 10, "batch_size": 128, "lr": 1e-3},
    "fashion-mnist": {"hidden": [256], "epochs": 15, "batch_size": 128, "lr": 1e-3},
    "cifar10": {"hidden": [512, 256], "epochs": 20, "batch_size": 128, "lr": 1e-3},
    "file": {"hidden": [128], "epochs": 30, "batch_size": 32, "lr": 1e-3},
}
#: The same for --model lenet, on the image data sets. digits measured with these defaults on a
#: 2-core CPU, seeds 0-2 (test accuracy): 99.44 %, 98.89 %, 99.16 %. mnist, fashion-mnist and
#: cifar10 take common settings for LeNet-5 (not measured: they are downloaded).
LENET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 30, "batch_size": 32, "lr": 1e-3},
    "mnist": {"epochs": 10, "batch_size": 64, "lr": 1e-3},
    "fashion-mnist": {"epochs": 15, "batch_size": 64, "lr": 1e-3},
    "cifar10": {"epochs": 20, "batch_size": 64, "lr": 1e-3},
    "file": {"epochs": 30, "batch_size": 32, "lr": 1e-3},
}
#: Test accuracy of --model lenet with the defaults above, as measured (shown in --help).
LENET_ACCURACY = "digits 98.9-99.4 %"
PLOT_HELP = "pip install 'gpunn[plot]' (in a clone: .venv/bin/pip install -e '.[plot]')"
PREDICT_SUFFIXES = (".csv", ".txt", ".npz")


class UsageError(Exception):
    """A problem with the command line itself (exit status 2)."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default, unless it has none or the help already says."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" not in text
            and "default" not in text
            and action.default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and a hint), not the whole usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

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


def _threads(text: str) -> str:
    """``auto`` or a positive integer (BLAS threads per MPI rank)."""
    value = text.strip().lower()
    if value != "auto" and not (value.isdigit() and int(value) >= 1):
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
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
    parts = text.split(",")
    if any(not part.strip() for part in parts):  # "" or "64,,32": a typo, never "no layer"
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths like 256,128, got {text!r} (an empty width)"
        )
    try:
        widths = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths like 256,128, got {text!r}"
        ) from None
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return widths


def _image_shape(text: str) -> tuple[int, int, int]:
    """``C,H,W`` (also ``CxHxW``) -> (C, H, W), each a positive integer."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected an image shape C,H,W of three positive integers like 1,28,28, got {text!r}"
        )
    return shape  # type: ignore[return-value]


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


def _defaults_table() -> str:
    """The per-data-set defaults of ``train`` (--model mlp, then lenet) as aligned tables for
    its --help."""
    rows = [("--model mlp", "--hidden", "--epochs", "--batch-size", "--lr (adam)")]
    for name, d in TRAIN_DEFAULTS.items():
        hidden = ",".join(str(w) for w in d["hidden"])
        label = "--data FILE" if name == "file" else name
        rows.append((label, hidden, str(d["epochs"]), str(d["batch_size"]), f"{d['lr']:g}"))
    rows.append(("--model lenet", "", "", "", ""))
    for name, d in LENET_DEFAULTS.items():
        label = "--data FILE" if name == "file" else name
        rows.append((label, "", str(d["epochs"]), str(d["batch_size"]), f"{d['lr']:g}"))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join("  " + line.rstrip() for line in lines)


def build_parser() -> argparse.ArgumentParser:
    from gpunn._version import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")

    parser = _Parser(
        prog="gpunn",
        description="Train and benchmark hand-written neural networks on NumPy or CuPy.",
        epilog="Exit status: 0 ok, 1 runtime error, 2 usage error, 130 interrupted,\n"
        "141 output pipe closed (gpunn ... | head).",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"gpunn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser(
        "info",
        parents=[common],
        help="backends, devices and library versions",
        description="Print the backends (and why one is not usable), versions, GPUs, BLAS.",
    )

    device = argparse.ArgumentParser(add_help=False)
    device.add_argument(
        "--backend",
        type=_backend_spec,
        default=None,
        metavar="SPEC",
        help="auto, numpy, cupy or cupy:N (default: $GPUNN_BACKEND, else auto)",
    )
    device.add_argument("--tf32", action="store_true", help="allow TF32 tensor-core GEMMs on CuPy")

    train = sub.add_parser(
        "train",
        parents=[common, device],
        help="train a network",
        description="Train an MLP or a CNN on a built-in data set or your own file, split\n"
        "70/10/20 into training, validation and test rows by --seed (mnist, fashion-mnist\n"
        "and cifar10 keep their own test set), and print the test score.",
        epilog="Each setting not given takes its data set's default (--optimizer sgd: lr "
        f"{SGD_LR:g}):\n{_defaults_table()}\n"
        "Test accuracy with these defaults (2-core CPU, seeds 0-2): --model mlp: digits\n"
        f"96.9-98.1 %, spirals 99.8-100 %, blobs 100 %; --model lenet: {LENET_ACCURACY}.",
    )
    what = train.add_mutually_exclusive_group()
    what.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="built-in data set (default: digits; with --resume: the checkpoint's)",
    )
    what.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="your own data: .npz with arrays X and y, or .csv with the label last "
        "(see the README's 'Your own data')",
    )
    train.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of the weights, the split and the batch order "
        "(default: 0; with --resume: the checkpoint's)",
    )
    train.add_argument(
        "--task",
        choices=("classification", "regression"),
        default=None,
        help="what the labels mean (default: classification when they are all whole numbers)",
    )
    train.add_argument(
        "--model",
        choices=MODELS,
        default=None,
        help="mlp: Dense layers (--hidden, --activation); lenet: the LeNet-style CNN for the "
        "data's images, LeNet-5 for 28x28 and larger, a smaller CNN for the 8x8 digits "
        "(default: mlp; with --resume: the checkpoint's)",
    )
    train.add_argument(
        "--input-shape",
        type=_image_shape,
        default=None,
        metavar="C,H,W",
        help="channels, height and width of one image, for --model lenet on --data whose rows "
        "are flat (a CSV, or an .npz with 2-D X); an .npz with X of shape (N, C, H, W) "
        "needs none",
    )
    train.add_argument(
        "--hidden",
        type=_widths,
        default=None,
        metavar="W1,W2",
        help="hidden layer widths of --model mlp, e.g. 256,128 (default: per data set, below)",
    )
    train.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default=None,
        help="hidden activation of --model mlp (default: relu)",
    )
    train.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=None, help="update rule (default: adam)"
    )
    train.add_argument(
        "--lr",
        type=_non_negative_float,
        default=None,
        metavar="RATE",
        help="learning rate (default: per data set, below; with --resume: the checkpoint's, "
        "which --lr replaces)",
    )
    train.add_argument(
        "--momentum",
        type=_non_negative_float,
        default=None,
        metavar="M",
        help=f"SGD momentum, only with --optimizer sgd (default: {SGD_MOMENTUM:g})",
    )
    train.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="epochs to train (with --resume: epochs more) (default: per data set, below)",
    )
    train.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="samples per step (default: per data set, below)",
    )
    train.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=None,
        help="parameter and data type (default: float32)",
    )
    train.add_argument(
        "--save",
        type=Path,
        metavar="PATH",
        help="write the trained model, its optimizer and where its data came from to this "
        "checkpoint file (written atomically; Ctrl-C saves the last finished epoch)",
    )
    train.add_argument(
        "--resume",
        type=Path,
        metavar="PATH",
        help="continue training this checkpoint on its own data split; flags that would change "
        "its model or optimizer are refused",
    )
    train.add_argument(
        "--plot",
        type=Path,
        metavar="PATH",
        help="write loss/accuracy curves to this image (.png, .pdf, .svg; needs matplotlib)",
    )
    train.add_argument("--quiet", action="store_true", help="print only the final results")
    train.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel training on the ranks of 'mpiexec -n N python -m mpi4py -m gpunn "
        "train --distributed ...'; --batch-size is then the global batch",
    )
    train.add_argument(
        "--threads-per-rank",
        type=_threads,
        default=None,
        metavar="N|auto",
        help="BLAS threads of each rank, only with --distributed (default: "
        "$GPUNN_THREADS_PER_RANK, else auto: the machine's cores divided among its ranks)",
    )

    evaluate = sub.add_parser(
        "evaluate",
        parents=[common, device],
        help="score a checkpoint on its test split (or on every row of a file)",
        description="Print the loss (and accuracy) of a checkpoint. Without --dataset/--data\n"
        "it scores the test rows of the split the checkpoint was trained with (recorded\n"
        "in it); --data FILE scores every row of FILE.",
    )
    evaluate.add_argument(
        "--checkpoint", type=Path, required=True, metavar="PATH", help="the model to score"
    )
    which = evaluate.add_mutually_exclusive_group()
    which.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="score this built-in data set's test split (default: the checkpoint's data)",
    )
    which.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="score every row of this .npz (X, y) or .csv (label last) file",
    )
    evaluate.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of the test split (default: the checkpoint's; another one is refused, since "
        "its test rows would include training rows)",
    )

    predict = sub.add_parser(
        "predict",
        parents=[common, device],
        help="predict with a checkpoint",
        description="Predict every row of a file: one line per row with its class label\n"
        "(0..K-1), or its value for a regression model; --proba gives the class\n"
        "probabilities instead (comma-separated, one column per class).",
    )
    predict.add_argument(
        "--checkpoint", type=Path, required=True, metavar="PATH", help="the model to use"
    )
    predict.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="FILE",
        help=".npz with array X, or .csv of features (a last label column is ignored)",
    )
    predict.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="write to this .csv/.txt (one row per input) or .npz (arrays labels, logits and "
        "with --proba proba) instead of printing",
    )
    predict.add_argument(
        "--proba",
        action="store_true",
        help="class probabilities, one comma-separated column per class, instead of labels",
    )

    from gpunn.bench import cli as bench_cli

    bench = bench_cli.add_parser(sub)  # sets args.func to its own handler
    bench.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


# ------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------


def _note(text: str) -> None:
    """One line on stderr, for what gpunn assumed or chose on the user's behalf."""
    print(f"note: {text}", file=sys.stderr, flush=True)


def _check_env_backend(args: argparse.Namespace) -> None:
    """A bad $GPUNN_BACKEND is a usage error naming the variable, before any work."""
    if getattr(args, "backend", None) is None:
        value = os.environ.get("GPUNN_BACKEND", "").strip()
        if value:
            from gpunn.backend import _parse_spec

            try:
                _parse_spec(value)
            except ValueError as exc:
                raise UsageError(f"gpunn: environment variable GPUNN_BACKEND: {exc}") from None


def _backend(spec: str | None, tf32: bool = False, quiet: bool = False) -> Any:
    """The backend; a fallback from 'auto' to NumPy is one short note ('gpunn info' says why)."""
    from gpunn.backend import get_backend

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = get_backend(spec, tf32=tf32 or None)
    auto = (spec or os.environ.get("GPUNN_BACKEND", "").strip() or "auto").lower() == "auto"
    for w in caught:
        if quiet:
            continue
        if auto and backend.name == "numpy":
            _note("no usable CUDA GPU, running on the CPU with NumPy ('gpunn info' says why)")
        else:
            _note(str(w.message))
    return backend


def _describe_backend(backend: Any) -> str:
    return f"{backend.spec} ({backend.gpu_name or 'GPU'})" if backend.is_gpu else "numpy (CPU)"


def _check_output(path: Path, flag: str, suffixes: Sequence[str] | None = None) -> None:
    """Fail now, not after training, if ``path`` cannot be written: a usage error (2) for a
    wrong kind of name, a runtime error (1) for the file system's refusal."""
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise UsageError(
            f"gpunn: {flag} {path}: expected a file name ending in {', '.join(suffixes)}"
        )
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path}: is a folder; give a file name, e.g. {path}/out")
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(
            f"{flag} {path}: the folder {folder} {what}; create it first (mkdir -p {folder})"
        )
    try:  # the one sure test of "can I create a file here" is to create one
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(
            f"{flag} {path}: cannot write in the folder {folder} ({exc.strerror}); choose "
            "another path"
        ) from None


def _check_plot(path: Path) -> None:
    """--plot needs matplotlib and a format it can write; checked before training."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError(
            f"--plot {path} needs matplotlib, which is not installed: {PLOT_HELP}; or leave "
            "out --plot"
        ) from None
    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        shown = ", ".join(f".{f}" for f in ("png", "pdf", "svg") if f in formats)
        raise UsageError(f"gpunn: --plot {path}: expected a file name ending in {shown}")
    _check_output(path, "--plot")


# ------------------------------------------------------------------------------------------
# What a checkpoint holds, in command-line terms
# ------------------------------------------------------------------------------------------


def _data_source(info: dict[str, Any]) -> Any:
    from gpunn.datasets.source import DataSource

    return DataSource.from_dict(info["data"]) if info.get("data") else None


def _model_flags(info: dict[str, Any]) -> dict[str, Any]:
    """The model flags (model, hidden, activation, dtype, input shape) that describe a
    checkpoint's network."""
    layers = info["architecture"]
    dense = [entry["config"]["out_features"] for entry in layers if entry["kind"] == "Dense"]
    kinds = {entry["kind"] for entry in layers if entry["kind"] in ACTIVATION_KINDS.values()}
    names = [name for name, kind in ACTIVATION_KINDS.items() if kind in kinds]
    model = "lenet" if any(entry["kind"] in CNN_KINDS for entry in layers) else "mlp"
    shape = info.get("input_shape")
    return {
        "model": model,
        "hidden": dense[:-1],
        "activation": names,
        "dtype": info["dtype"],
        "input_shape": tuple(shape) if shape else None,
    }


def _check_resume_flags(args: argparse.Namespace, info: dict[str, Any]) -> None:
    """Refuse every flag that would change the resumed model or optimizer (usage error)."""
    have = _model_flags(info)
    where = f"{args.resume}"

    def refuse(flag: str, given: Any, saved: Any) -> NoReturn:
        raise UsageError(
            f"gpunn train: {flag} {given} conflicts with {where}, whose {flag.lstrip('-')} is "
            f"{saved}: --resume continues that model as it is (leave out {flag}, or train a "
            "new model without --resume)"
        )

    if args.model is not None and args.model != have["model"]:
        refuse("--model", args.model, have["model"])
    mlp = have["model"] == "mlp"  # an MLP's --input-shape, a CNN's --hidden are refused later
    saved_shape = have["input_shape"]
    if not mlp and args.input_shape is not None and saved_shape != args.input_shape:
        refuse("--input-shape", _shape_text(args.input_shape), _shape_text(saved_shape or ()))
    if mlp and args.hidden is not None and args.hidden != have["hidden"]:
        refuse("--hidden", ",".join(map(str, args.hidden)), ",".join(map(str, have["hidden"])))
    if mlp and args.activation is not None and have["activation"] != [args.activation]:
        refuse("--activation", args.activation, "/".join(have["activation"]) or "none")
    if args.dtype is not None and args.dtype != have["dtype"]:
        refuse("--dtype", args.dtype, have["dtype"])
    opt = info["optimizer"]
    if opt is None:
        return
    kind = opt["kind"]
    if args.optimizer is not None and OPTIMIZER_KINDS[args.optimizer] != kind:
        refuse("--optimizer", args.optimizer, kind.lower())
    momentum = opt["hyperparams"].get("momentum")
    if args.momentum is not None and momentum is not None and args.momentum != momentum:
        refuse("--momentum", f"{args.momentum:g}", f"{momentum:g}")


# ------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------


def _train_backend(args: argparse.Namespace) -> tuple[Any, Any]:
    """The backend, and with --distributed this rank's communicator (else None)."""
    if not args.distributed:
        return _backend(args.backend, args.tf32, args.quiet), None
    from gpunn.training import distributed

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = distributed.rank_backend(args.backend, tf32=args.tf32 or None)
        comm = distributed.get_communicator(backend, threads_per_rank=args.threads_per_rank)
    if comm.rank == 0 and not args.quiet:
        for w in caught:
            if "NumPy (CPU) backend" in str(w.message):
                _note("no usable CUDA GPU, running on the CPU with NumPy ('gpunn info' says why)")
            else:
                _note(str(w.message))
    return backend, comm


def _plan_train(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None, Any, str]:
    """(data source, checkpoint info or None, data source recorded in it or None, model kind
    "mlp" or "lenet"); every usage error of ``train`` that the command line shows is raised
    here, before any backend or data is touched."""
    from gpunn.datasets import source as sources

    info = recorded = None
    kind = OPTIMIZER_KINDS[args.optimizer or "adam"]
    model = args.model or "mlp"
    if args.resume is not None:
        from gpunn import checkpoint

        info = checkpoint.read_info(args.resume)  # a bad file is a runtime error, before work
        _check_resume_flags(args, info)
        model = _model_flags(info)["model"]
        recorded = _data_source(info)
        if info["optimizer"] is not None:
            kind = info["optimizer"]["kind"]
        if recorded is not None and args.task is not None and args.task != recorded.task:
            raise UsageError(
                f"gpunn train: --task {args.task} conflicts with {args.resume}, a "
                f"{recorded.task} model"
            )
    if args.threads_per_rank is not None and not args.distributed:
        raise UsageError("gpunn train: --threads-per-rank applies to --distributed runs only")
    if args.momentum is not None and kind != "SGD":
        raise UsageError(f"gpunn train: --momentum applies to --optimizer sgd only, not {kind}")
    if args.data is not None:
        seed = args.seed if args.seed is not None else (recorded.seed if recorded else 0)
        source = sources.data_file(args.data, seed) if args.data.is_file() else None
        if source is None:
            from gpunn.datasets import load_file

            load_file(args.data)  # raises the usual "no such file" / wrong type error
    elif args.dataset is not None or recorded is None:
        name = args.dataset or "digits"
        if recorded is not None and recorded.dataset == name:
            seed = args.seed if args.seed is not None else recorded.seed
        else:
            seed = args.seed if args.seed is not None else 0
        source = sources.builtin(name, seed)
    else:
        source = recorded.with_seed(args.seed if args.seed is not None else recorded.seed)
    if recorded is not None and source.same_data(recorded):
        if source.seed != recorded.seed:
            raise UsageError(
                f"gpunn train: --seed {args.seed} conflicts with {args.resume}, trained on the "
                f"split of seed {recorded.seed}: another split would train on its test rows "
                "(leave out --seed)"
            )
        source = recorded  # the same rows, split the same way, with the same task
    elif recorded is not None and not args.quiet:
        _note(
            f"{args.resume} was trained on {recorded.name}; continuing on {source.name} as "
            f"asked (split seed {source.seed})"
        )
    elif info is not None and not args.quiet:
        _note(
            f"{args.resume} does not record the data it was trained on; continuing on the "
            f"{source.describe()} as given"
        )
    _check_model_flags(args, model, source, info)
    return source, info, recorded, model


def _check_model_flags(args: argparse.Namespace, model: str, source: Any, info: Any) -> None:
    """Flags that do not apply to the model kind, and a CNN on data that holds no images, are
    usage errors (the image shape of a file is checked once it is read)."""
    from gpunn.datasets.source import IMAGE_SHAPES

    where = f"{args.resume} is a {model} model" if info is not None else f"--model {model}"
    if model == "lenet":
        for flag, value in (("--hidden", args.hidden), ("--activation", args.activation)):
            if value is not None:
                raise UsageError(
                    f"gpunn train: {flag} sets up --model mlp; {where}, whose layers are its "
                    "preset's (gpunn train --help lists them)"
                )
        if source.dataset is not None and source.dataset not in IMAGE_SHAPES:
            images = ", ".join(IMAGE_SHAPES)
            raise UsageError(
                f"gpunn train: {where} needs images, and {source.dataset} is not an image data "
                f"set (those are {images}, or --data with images)"
            )
        shape = IMAGE_SHAPES.get(str(source.dataset))
        if args.input_shape is not None and shape is not None and args.input_shape != shape:
            raise UsageError(
                f"gpunn train: --input-shape {_shape_text(args.input_shape)} conflicts with "
                f"{source.dataset}, whose images are {_shape_text(shape)} (leave out "
                "--input-shape)"
            )
    elif args.input_shape is not None:
        raise UsageError(
            f"gpunn train: --input-shape applies to --model lenet; {where}, which takes flat rows"
        )


def cmd_train(args: argparse.Namespace) -> int:
    _check_env_backend(args)
    source, info, recorded, model = _plan_train(args)
    if args.save is not None:
        _check_output(args.save, "--save")
    if args.plot is not None:
        _check_plot(args.plot)
    # bad data fails before a backend starts; MPI ranks load it in turn, once they know theirs
    data = None if args.distributed else _task_data(args, source, info, model, None)
    backend, comm = _train_backend(args)
    if comm is not None and comm.rank != 0:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # rank 0 reports
            return _train(args, backend, comm, source, info, model, data)
    return _train(args, backend, comm, source, info, model, data)


def _task_data(args: argparse.Namespace, source: Any, info: Any, model: str, comm: Any) -> Any:
    """(split, task): the data, split as ``source`` says (X as images for a CNN), and what its
    labels ask for."""
    import numpy as np

    from gpunn.datasets.source import infer_task

    recorded = _data_source(info) if info is not None else None
    split = _load_split(source, comm)
    if model == "lenet":
        split = _as_images(args, split, source, info)
    all_y = np.concatenate([split.train[1], split.val[1], split.test[1]])
    requested = args.task or (recorded.task if recorded is not None else None)
    task = infer_task(all_y, requested, where=source.name)
    if task.kind == "regression":  # whole-number targets become float for the squared error
        split.train, split.val, split.test = (
            (X, y.astype(np.float32)) for X, y in (split.train, split.val, split.test)
        )
    return split, task


def _as_images(args: argparse.Namespace, split: Any, source: Any, info: Any) -> Any:
    """The split with X as (n, C, H, W) images: of the shape --input-shape gives, else the
    resumed model's, else the data's own; a usage error for flat rows with no shape given."""
    saved = _model_flags(info)["input_shape"] if info is not None else None
    shape = args.input_shape or saved or split.image_shape
    if shape is None:
        raise UsageError(
            f"gpunn train: --model lenet needs images, and the rows of {source.name} are flat "
            f"({split.n_features} values each): give their shape with --input-shape C,H,W "
            "(e.g. 1,8,8 for 64 grey pixels), or use an .npz whose X has shape (N, C, H, W)"
        )
    if split.image_shape is not None and tuple(shape) != split.image_shape:
        whose = f"{args.resume} takes" if args.input_shape is None else "--input-shape gives"
        raise ValueError(
            f"{whose} {_shape_text(shape)} images, and those of {source.name} are "
            f"{_shape_text(split.image_shape)}"
        )
    try:
        return split.as_images(tuple(shape))
    except ValueError as exc:
        raise ValueError(f"{source.name}: {exc} (--input-shape {_shape_text(shape)})") from None


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _settings(args: argparse.Namespace, source: Any, model: str) -> dict[str, Any]:
    """Every training setting: the flag where given, else the data set's default."""
    tables = LENET_DEFAULTS if model == "lenet" else TRAIN_DEFAULTS
    table = tables[source.dataset or "file"]
    optimizer = args.optimizer or "adam"
    lr = args.lr if args.lr is not None else (SGD_LR if optimizer == "sgd" else table["lr"])
    return {
        "model": model,
        "hidden": args.hidden if args.hidden is not None else table.get("hidden"),
        "activation": args.activation or "relu",
        "optimizer": optimizer,
        "lr": lr,
        "momentum": args.momentum if args.momentum is not None else SGD_MOMENTUM,
        "epochs": args.epochs if args.epochs is not None else table["epochs"],
        "batch_size": args.batch_size if args.batch_size is not None else table["batch_size"],
        "dtype": args.dtype or "float32",
    }


def _make_model(
    settings: dict[str, Any], shape: tuple[int, ...], n_out: int, backend: Any, seed: int
) -> Any:
    """A new network for samples of ``shape`` with ``n_out`` outputs: --model mlp or lenet."""
    import gpunn

    if settings["model"] == "lenet":
        layers = _lenet_layers(shape, n_out)
        return gpunn.Sequential(
            layers, backend=backend, dtype=settings["dtype"], seed=seed, input_shape=shape
        )
    (n_in,) = shape
    act = {
        "relu": gpunn.ReLU,
        "leaky_relu": gpunn.LeakyReLU,
        "sigmoid": gpunn.Sigmoid,
        "tanh": gpunn.Tanh,
    }[settings["activation"]]
    layers: list[Any] = []
    width = n_in
    for h in settings["hidden"]:
        layers += [gpunn.Dense(width, h), act()]
        width = h
    layers.append(gpunn.Dense(width, n_out))
    return gpunn.Sequential(layers, backend=backend, dtype=settings["dtype"], seed=seed)


def _lenet_layers(shape: tuple[int, ...], n_out: int) -> list[Any]:
    """The layers of --model lenet for (C, H, W) images: the small digits CNN for 1x8x8,
    LeNet-5 for square images of 12x12 or more (conv 5x5 pad 2, pool, conv 5x5, pool, 120,
    84, outputs)."""
    from gpunn import presets

    channels, height, width = shape
    if shape == (1, 8, 8):
        return list(presets.digits_cnn(classes=n_out))
    if height == width and height >= 12:
        return list(presets.lenet5(in_channels=channels, image_size=height, classes=n_out))
    raise ValueError(
        f"--model lenet has no network for {_shape_text(shape)} images: LeNet-5 takes square "
        "images of 12x12 pixels or more (any number of channels), the small CNN 1x8x8 images"
    )


def _make_optimizer(settings: dict[str, Any]) -> Any:
    import gpunn

    if settings["optimizer"] == "sgd":
        return gpunn.SGD(settings["lr"], momentum=settings["momentum"])
    return (gpunn.Adam if settings["optimizer"] == "adam" else gpunn.AdamW)(settings["lr"])


def _loss(task: Any) -> Any:
    import gpunn

    if task.kind == "regression":
        return gpunn.MeanSquaredError()
    return gpunn.BinaryCrossEntropy() if task.outputs == 1 else gpunn.SoftmaxCrossEntropy()


def _describe_optimizer(optimizer: Any) -> str:
    params = optimizer.hyperparams()
    shown = [f"lr {optimizer.lr:g}"]
    shown += [f"{k} {v:g}" for k, v in params.items() if k != "lr" and isinstance(v, float) and v]
    return f"{optimizer.kind} ({', '.join(shown)})"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _load_split(source: Any, comm: Any) -> Any:
    """``load_split``; on MPI ranks, rank 0 first (it may download), then the others."""
    from gpunn.datasets.source import load_split

    if comm is not None and comm.rank != 0:
        comm.barrier()  # matches rank 0's barrier below, once the data set is cached
    split = load_split(source)
    if comm is not None and comm.rank == 0:
        comm.barrier()
    return split


def _train(
    args: argparse.Namespace,
    backend: Any,
    comm: Any,
    source: Any,
    info: Any,
    kind: str,
    data: Any,
) -> int:
    from gpunn import checkpoint

    if data is None:
        data = _task_data(args, source, info, kind, comm)
    split, task = data
    loss = _loss(task)
    settings = _settings(args, source, kind)
    sample = tuple(split.train[0].shape[1:])  # one sample's shape: (features,) or (C, H, W)
    if info is not None:
        model, optimizer, loaded = checkpoint.load_with_optimizer(args.resume, backend=backend)
        if optimizer is None:
            optimizer = _make_optimizer(settings)
            if not args.quiet:
                _note(f"{args.resume} holds no optimizer state: starting a new {optimizer.kind}")
        elif args.lr is not None and args.lr != optimizer.lr:
            if not args.quiet:
                _note(f"learning rate set to {args.lr:g} (the checkpoint's was {optimizer.lr:g})")
            optimizer.lr = args.lr
        done = int(loaded.get("epoch") or 0)
        start = f"resumed from {args.resume} after {_plural(done, 'epoch')}"
        takes = model.input_shape or (model.in_features,)
        if model.out_features != task.outputs or tuple(takes) != sample:
            raise ValueError(
                f"{args.resume} takes {_sample_text(takes)} to {model.out_features} "
                f"outputs; {source.name} has {_sample_text(sample)} and needs "
                f"{task.outputs} output(s) ({task.describe()})"
            )
    else:
        model = _make_model(settings, sample, task.outputs, backend, source.seed)
        optimizer = _make_optimizer(settings)
        done, start = 0, f"new, seed {source.seed}"
    epochs, batch_size = settings["epochs"], settings["batch_size"]
    if not args.quiet:
        sizes = [len(part[1]) for part in (split.train, split.val, split.test)]
        print(f"backend: {_describe_backend(backend)}")
        print(f"data:    {source.describe()}")
        what = (
            f"samples x {sample[0]} features"
            if len(sample) == 1
            else f"images of {_shape_text(sample)}"
        )
        print(
            f"         {split.n_samples:,} {what}: "
            f"{sizes[0]:,} train, {sizes[1]:,} validation, {sizes[2]:,} test"
        )
        print(f"task:    {task.describe()}")
        print(f"model:   {start}")
        for line in model.summary().splitlines():
            print(f"         {line}")
        print(
            f"train:   {_describe_optimizer(optimizer)}, {_plural(epochs, 'epoch')}, "
            f"batch size {batch_size}"
        )
        if comm is not None:
            threads = getattr(comm, "threads", None)
            each = f", {_plural(threads, 'BLAS thread')} each" if threads else ""
            print(f"ranks:   {comm.size}, {comm.kind} ({comm.reason}){each}")
        sys.stdout.flush()
    rank0 = comm is None or comm.rank == 0  # the ranks hold the same model: one writes it
    data_entry = {**source.as_dict(), "task": task.kind, "classes": task.classes}
    snapshot = _epoch_snapshot()
    t0 = time.perf_counter()
    try:
        history = model.fit(
            *split.train,
            loss=loss,
            optimizer=optimizer,
            epochs=epochs,
            batch_size=batch_size,
            validation_data=split.val if len(split.val[0]) else None,
            seed=source.seed,
            verbose=0 if args.quiet else 1,
            initial_epoch=done,
            comm=comm,
            callbacks=[snapshot],
        )
    except KeyboardInterrupt:
        _save_interrupted(args, snapshot, model, optimizer, done, data_entry, rank0)
        raise
    except MemoryError as exc:
        backend.free_memory_pool()
        raise RuntimeError(
            f"out of memory on {backend.spec} at batch size {batch_size} ({exc}); "
            "try a smaller --batch-size"
        ) from exc
    wall = time.perf_counter() - t0
    result = model.evaluate(*split.test, loss=loss)
    rate = sum(len(split.train[0]) for _ in history.epoch) / max(
        sum(history["epoch_seconds"]), 1e-12
    )
    if "accuracy" in result:
        print(f"test accuracy: {100 * result['accuracy']:.2f}%  (test loss {result['loss']:.4f})")
    else:
        print(f"test loss: {result['loss']:.6f}")
    print(f"throughput: {rate:,.0f} samples/s on {backend.spec}; training took {wall:.2f} s")
    if args.save is not None and rank0:
        epoch = done + len(history.epoch)
        path = checkpoint.save(model, args.save, optimizer, epoch=epoch, data=data_entry)
        print(f"saved: {path}")
    if comm is not None:
        comm.barrier()  # the checkpoint is complete before any rank exits
    if args.plot is not None and rank0:
        from gpunn.plots import plot_history

        print(f"plot: {plot_history(history, args.plot)}")
    return 0


def _sample_text(shape: Sequence[Any]) -> str:
    """``(64,)`` -> ``"64 features"``, ``(1, 8, 8)`` -> ``"1x8x8 images"``."""
    if len(shape) == 1:
        return f"{shape[0]} features"
    return f"{_shape_text(shape)} images"


def _epoch_snapshot() -> Any:
    """A callback keeping a device copy of the weights and optimizer state as they were at the
    end of the last finished epoch, so that Ctrl-C can save finished work (not a half epoch)."""
    from gpunn.training.callbacks import Callback

    class EpochSnapshot(Callback):
        state: tuple[Any, ...] | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            opt = self.optimizer
            copies = {name: value.copy() for name, value in opt.state.items()}
            model = self.model
            stats = model.flat_state.copy()  # BatchNorm's running statistics (often empty)
            # one assignment: an interrupt lands before it (old snapshot) or after (new one)
            self.state = (epoch, model.flat_params.copy(), stats, copies, opt.step_count, opt.lr)

        def restore(self) -> int | None:
            """Put the snapshot back into the model and optimizer; returns its epoch."""
            if self.state is None:
                return None
            epoch, params, stats, copies, steps, lr = self.state
            self.model.flat_params[...] = params
            self.model.flat_state[...] = stats
            self.optimizer.state = copies
            self.optimizer.step_count, self.optimizer.lr = steps, lr
            return epoch

    return EpochSnapshot()


def _save_interrupted(
    args: argparse.Namespace,
    snapshot: Any,
    model: Any,
    optimizer: Any,
    done: int,
    data: dict[str, Any],
    rank0: bool,
) -> None:
    """On Ctrl-C: write the last finished epoch to --save (atomically) and say so."""
    from gpunn import checkpoint

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the save short
    try:
        epoch = snapshot.restore()
        if not rank0:
            return
        if epoch is None or epoch <= done:
            print(
                "gpunn: interrupted before the first epoch finished: nothing saved", file=sys.stderr
            )
            return
        if args.save is None:
            print(
                f"gpunn: interrupted after epoch {epoch}: nothing saved (--save PATH keeps the "
                "finished epochs)",
                file=sys.stderr,
            )
            return
        checkpoint.save(model, args.save, optimizer, epoch=epoch, data=data)
        print(
            f"gpunn: interrupted; saved the weights after epoch {epoch} to {args.save} "
            f"(continue with --resume {args.save})",
            file=sys.stderr,
        )
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# ------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from gpunn import checkpoint
    from gpunn.datasets import load_file
    from gpunn.datasets import source as sources

    _check_env_backend(args)
    info = checkpoint.read_info(args.checkpoint)
    recorded = _data_source(info)
    if args.data is not None:
        if args.seed is not None:
            raise UsageError("gpunn evaluate: --seed chooses a split; --data scores every row")
        X, y = load_file(args.data)
        X = X.reshape(len(X), -1)
        about = f"{args.data}: every row ({len(X):,} samples)"
        given = sources.data_file(args.data, 0)
        if recorded is not None and given.same_data(recorded):
            _note(
                f"{args.data} is the file {args.checkpoint} was trained on: {len(X):,} rows "
                "scored, training rows included; leave out --data to score its test rows only"
            )
    else:
        if recorded is None:
            source = sources.builtin(args.dataset or "digits", args.seed or 0)
            _note(
                f"{args.checkpoint} does not record the data it was trained on; scoring the "
                f"test rows of {source.describe()}: if it was trained with other data or "
                "another --seed, some of them may be training rows"
            )
        elif args.dataset is not None and args.dataset != recorded.dataset:
            source = sources.builtin(args.dataset, args.seed or 0)
            _note(
                f"{args.checkpoint} was trained on {recorded.name}; scoring the test rows of "
                f"{source.describe()} as asked"
            )
        else:
            if args.seed is not None and args.seed != recorded.seed:
                raise UsageError(
                    f"gpunn evaluate: --seed {args.seed} conflicts with {args.checkpoint}, "
                    f"trained on the split of seed {recorded.seed}: the test rows of another "
                    "split include training rows (leave out --seed)"
                )
            source = recorded
        split = sources.load_split(source)
        X, y = split.test
        recorded_here = "as recorded in the checkpoint" if source is recorded else "as asked"
        about = (
            f"{source.describe()}: the {len(y):,} test rows of {split.n_samples:,}, {recorded_here}"
        )
    # the task is the model's: recorded when training, else guessed from these labels
    task = sources.infer_task(
        y,
        recorded.task if recorded is not None else None,
        where=str(args.data or source.name),
        complete=False,
    )
    backend = _backend(args.backend, args.tf32)
    model = checkpoint.load(args.checkpoint, backend=backend)
    X = _check_fits(model, X, task, args.checkpoint)
    if task.kind == "regression":
        y = y.astype(np.float32)
    result = model.evaluate(X, y, loss=_loss(task))
    print(f"backend: {_describe_backend(backend)}")
    print(f"data:    {about}")
    if "accuracy" in result:
        print(f"accuracy: {100 * result['accuracy']:.2f}%  (loss {result['loss']:.4f})")
    else:
        print(f"loss: {result['loss']:.6f}")
    return 0


def _check_fits(model: Any, X: Any, task: Any, path: Path) -> Any:
    """X (n, ...) shaped for the model, whose samples and labels must suit it (one clear line
    if not)."""
    X = _model_input(model, X, path)
    _check_labels(model, task, path)
    return X


def _model_input(model: Any, X: Any, path: Path) -> Any:
    """X (n, ...) as the model takes it: flat rows for an MLP, (n, C, H, W) images for a CNN
    (flat rows of as many values are read as its images, row by row)."""
    takes = tuple(model.input_shape or (model.in_features,))
    size = 1
    for d in takes:
        size *= int(d)
    flat = X.reshape(len(X), -1)
    if X.ndim > 2 and len(takes) > 1 and tuple(X.shape[1:]) != takes:
        raise ValueError(
            f"{path} takes {_sample_text(takes)}; the data holds {_sample_text(X.shape[1:])}"
        )
    if flat.shape[1] != size:
        have = _sample_text(X.shape[1:]) if X.ndim > 2 else f"{flat.shape[1]} features"
        raise ValueError(f"{path} takes {_sample_text(takes)} per sample; the data has {have}")
    return flat.reshape(len(X), *takes)


def _check_labels(model: Any, task: Any, path: Path) -> None:
    """The labels must be ones the model's outputs can score."""
    if task.kind == "classification" and task.classes is not None:
        outputs = model.out_features
        top = 2 if outputs == 1 else outputs
        if task.classes > top:
            raise ValueError(
                f"{path} predicts {top} classes (0..{top - 1}); the labels go up to "
                f"{task.classes - 1}"
            )
    elif task.kind == "regression" and model.out_features != 1:
        raise ValueError(
            f"{path} is a {model.out_features}-class model; these labels are not whole numbers"
        )


# ------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from gpunn import checkpoint
    from gpunn.datasets import load_features
    from gpunn.datasets.files import has_label_column

    _check_env_backend(args)
    if args.out is not None:
        _check_output(args.out, "--out", PREDICT_SUFFIXES)
    recorded = _data_source(checkpoint.read_info(args.checkpoint))
    task = recorded.task if recorded is not None else "classification"
    if args.proba and task == "regression":
        raise UsageError(f"gpunn predict: --proba: {args.checkpoint} is a regression model")
    # stdout is data here, and the backend does not change it: no note about the fallback
    backend = _backend(args.backend, args.tf32, quiet=True)
    model = checkpoint.load(args.checkpoint, backend=backend)
    if recorded is None and model.out_features == 1:
        _note(
            f"{args.checkpoint} does not say whether its one output is a class score or a "
            "value; taking it as binary classification"
        )
    takes = tuple(model.input_shape or (model.in_features,))
    size = 1
    for d in takes:
        size *= int(d)
    X = _model_input(model, load_features(args.data, size), args.data)
    if has_label_column(args.data, size):
        _note(
            f"{args.data} has {size + 1} columns and the model takes {size} values per "
            "sample: the last column is taken as labels and ignored"
        )
    logits = backend.to_numpy(model.predict(X)).astype(np.float64)  # (N, outputs)
    if task == "regression":
        values, fmt = logits[:, 0], "%.8g"
    else:
        proba = _probabilities(logits)  # (N, classes)
        labels = proba.argmax(axis=1)
        values, fmt = (proba, "%.6g") if args.proba else (labels, "%d")
    if args.out is None:
        np.savetxt(sys.stdout, values, fmt=fmt, delimiter=",")
        return 0
    if args.out.suffix.lower() == ".npz":
        arrays = {"logits": logits.astype(np.float32)}
        if task == "regression":
            arrays["values"] = values
        else:
            arrays["labels"] = labels
            if args.proba:
                arrays["proba"] = proba.astype(np.float32)
        np.savez(args.out, **arrays)
    else:
        np.savetxt(args.out, values, fmt=fmt, delimiter=",")
    print(f"wrote {len(X):,} predictions to {args.out}", file=sys.stderr)
    return 0


def _probabilities(logits: Any) -> Any:
    """Class probabilities (N, K) from logits: softmax over K, or [1 - p, p] for one logit."""
    import numpy as np

    if logits.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-np.clip(logits[:, 0], -500, 500)))  # sigmoid, no overflow
        return np.stack([1.0 - p, p], axis=1)
    shifted = logits - logits.max(axis=1, keepdims=True)  # softmax(z) = softmax(z - max z)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------
# info and the entry point
# ------------------------------------------------------------------------------------------


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
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help and --version print, then exit 0
            sys.stdout.flush()
            return int(exc.code or 0)
        command = COMMANDS.get(args.command)
        # a subcommand that registered its own handler (bench) runs that
        status = int(args.func(args)) if command is None else command(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return status
    except BrokenPipeError:
        return _broken_pipe()
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


def _broken_pipe() -> int:
    """The reader of stdout went away (``gpunn ... | head``): stop quietly like a Unix tool.

    Python's own exit would flush stdout again and print "Exception ignored ... BrokenPipeError",
    so stdout is pointed at /dev/null first. The status is the shell's for death by SIGPIPE.
    """
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 128 + getattr(signal, "SIGPIPE", 13)


def _one_line(exc: BaseException) -> str:
    """The exception as one readable line; the type is named only for unexpected errors."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    expected = (ValueError, OSError, RuntimeError, ArithmeticError, MemoryError)
    return text if isinstance(exc, expected) else f"{type(exc).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
