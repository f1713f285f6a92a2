"""The ``gpunn bench`` subcommand: argument parsing, the sweep, the table and the files.

``add_parser(subparsers)`` adds ``bench`` to the main ``gpunn`` parser (and sets
``func=run``); ``run(args)`` returns the process exit code: 0 on success, 2 for a usage error
(a bad model, batch list or backend spec), 1 when the request cannot be honoured here (an
unavailable backend, a missing or bad ``--cpu-baseline`` file, ``--compare torch`` without
PyTorch, bench.png without matplotlib, an ``--out`` folder that cannot be written). Every one
of these is found before the sweep starts, and reported in one line.

Defaults keep a full sweep to a few minutes on a small CPU: every point stops timing a callable
once its spread is below 5 % or after about 1 s of timing (``--budget``), after at least 5
repeats; a single step slower than the budget is still timed 5 times.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from gpunn.backend import Backend, BackendUnavailableError, available_backends, get_backend
from gpunn.bench.env import blas_threads, environment
from gpunn.bench.harness import (
    CONV_BATCH_SIZES,
    DEFAULT_BATCH_SIZES,
    SweepConfig,
    compute_crossovers,
    run_sweep,
    series_name,
)
from gpunn.bench.results import (
    TABLE_COLUMNS,
    crossover_lines,
    load_baseline,
    make_report,
    ratio_marks,
    table_cells,
    table_notes,
    write_csv,
    write_json,
    write_markdown,
)
from gpunn.bench.timing import Policy
from gpunn.bench.torch_ref import load_torch
from gpunn.bench.workload import CONV_MODELS, MODELS, OPTIMIZERS, parse_model

__all__ = ["add_parser", "main", "run"]

DEFAULT_MODELS = ",".join(MODELS)
DEFAULT_OUT = "bench-out"
PLOT_HINT = "pip install 'gpunn[bench]' (or 'gpunn[plot]'), or pass --no-plot to skip bench.png"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark training and inference throughput (vs PyTorch and the GEMM limit)",
        description=(
            "Time the training step (forward, loss, backward, optimizer) and inference of ReLU "
            "MLPs and LeNet-5 per backend and batch size, with the bare-GEMM limit and PyTorch "
            "measured in the same run; print a table and write bench.json, bench.csv, "
            "bench.md, bench.png."
        ),
    )
    p.add_argument(
        "--backend",
        default="auto",
        help="comma list of numpy, cupy, cupy:N; 'auto' = numpy, plus cupy when a GPU is usable",
    )
    p.add_argument(
        "--batch-sizes",
        default=None,
        help="comma list of batch sizes (default: "
        f"{','.join(str(b) for b in DEFAULT_BATCH_SIZES)} for an MLP, "
        f"{','.join(str(b) for b in CONV_BATCH_SIZES)} for lenet5)",
    )
    mlps = ", ".join(f"{k}={'-'.join(map(str, v))}" for k, v in MODELS.items())
    convs = ", ".join(
        f"{k} (on {'x'.join(map(str, c.input_shape))})" for k, c in CONV_MODELS.items()
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODELS,
        help=f"comma list of MLP presets ({mlps}), widths like 784-256-10, or CNN presets "
        f"({convs}: conv 6@5x5 pad 2, max-pool 2, conv 16@5x5, max-pool 2, 120, 84, 10) "
        "(default: the MLP presets)",
    )
    p.add_argument(
        "--compare",
        default="auto",
        choices=("auto", "torch", "none"),
        help="PyTorch comparison: 'auto' (when installed, the default), 'torch', 'none'",
    )
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--optimizer", default="sgd", choices=tuple(OPTIMIZERS))
    p.add_argument(
        "--cpu-baseline",
        metavar="JSON",
        help="a bench.json from a CPU run: the GPU crossover is also computed against it",
    )
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help="output folder (default: %(default)s; the repository's committed results are in "
        "bench/results/, written only when asked for with --out bench/results)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=Policy.budget_s,
        help="seconds of timing per callable per point before giving up on a small spread "
        "(default: %(default)s)",
    )
    p.add_argument("--min-repeats", type=int, default=Policy.min_repeats)
    p.add_argument(
        "--target-spread",
        type=float,
        default=Policy.target_spread,
        help="stop repeating once interquartile range / median is below this",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=Policy.settle_s,
        help="seconds of pause between gpunn's and PyTorch's turns, so idle worker threads of "
        "the other library stop spinning (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plot", action="store_true", help="skip bench.png (needs no matplotlib)")
    p.set_defaults(func=run)
    return p


class UsageError(ValueError):
    """A malformed request (bad model, batch list, backend spec): one line, exit code 2."""


class BenchError(RuntimeError):
    """A request this machine cannot honour (a backend, file, library or folder is missing or
    unusable): one line, exit code 1."""


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UsageError(f"{what} must be positive integers, got {text!r}")
    return sorted(set(values))


def _backends(text: str) -> tuple[list[Backend], list[str]]:
    notes = []
    if text.strip().lower() == "auto":
        gpus = [s for s in available_backends() if s.name.startswith("cupy")]
        usable = [s.name for s in gpus if s.usable]
        specs = ["numpy", *usable[:1]]  # the first usable GPU
        if not usable:
            notes.append(f"CuPy not measured: {gpus[0].reason if gpus else 'no CuPy backend'}")
    else:
        specs = [s.strip() for s in text.split(",") if s.strip()]
    backends = []
    for spec in specs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                backends.append(get_backend(spec))
        except BackendUnavailableError as exc:
            raise BenchError(str(exc)) from None
        except ValueError as exc:  # not a backend spec at all
            raise UsageError(str(exc)) from None
    return list(dict.fromkeys(backends)), notes


def _torch(mode: str, threads: int | None) -> tuple[Any, str]:
    if mode == "none":
        return None, "PyTorch comparison switched off (--compare none)"
    torch, why = load_torch()
    if torch is None and mode == "torch":  # asked for by name: an error, not a note
        raise BenchError(f"--compare torch: {why}")
    if torch is None:
        return None, f"PyTorch not measured: {why}"
    if threads:
        torch.set_num_threads(threads)  # the same number of threads as NumPy's BLAS
    return torch, ""


def _build(args: argparse.Namespace) -> tuple[SweepConfig, list[str], dict[str, Any] | None]:
    try:
        models = [parse_model(m) for m in args.model.split(",") if m.strip()]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    batches = _int_list(args.batch_sizes, "--batch-sizes") if args.batch_sizes else None
    backends, notes = _backends(args.backend)  # usage errors first, then what is missing here
    baseline = None
    if args.cpu_baseline:
        try:
            baseline = load_baseline(args.cpu_baseline)
        except FileNotFoundError:
            raise BenchError(f"--cpu-baseline: no such file: {args.cpu_baseline}") from None
        except (OSError, ValueError) as exc:
            raise BenchError(f"--cpu-baseline {args.cpu_baseline}: {exc}") from None
    _check_plot(args.no_plot)
    _check_out(Path(args.out))
    torch, note = _torch(args.compare, blas_threads())
    if note:
        notes.append(note)
    if torch is not None and any(b.is_gpu for b in backends) and not torch.cuda.is_available():
        notes.append("PyTorch has no usable CUDA here: GPU rows have no PyTorch comparison")
    policy = Policy(
        budget_s=args.budget,
        min_repeats=args.min_repeats,
        target_spread=args.target_spread,
        settle_s=args.settle,
    )
    cfg = SweepConfig(
        backends=backends,
        models=models,
        batch_sizes=batches,
        dtype=args.dtype,
        optimizer=args.optimizer,
        policy=policy,
        torch=torch,
        seed=args.seed,
    )
    return cfg, notes, baseline


def _check_plot(no_plot: bool) -> None:
    """matplotlib draws bench.png: find out now, not after the sweep, that it is missing."""
    if no_plot:
        return
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise BenchError(
            f"bench.png needs matplotlib, which is not installed: {PLOT_HINT}"
        ) from None


def _check_out(out: Path) -> None:
    """Create the output folder and make sure files can be written in it, before the sweep."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise BenchError(
            f"cannot write the results to --out {out}: {why}; choose another folder with --out"
        ) from None


def _print_table(console: Any, report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="gpunn bench", show_lines=False)
    for i, name in enumerate(TABLE_COLUMNS):
        table.add_column(name, justify="left" if i < 4 else "right")
    for row in report["rows"]:
        table.add_row(*table_cells(row))
    console.print(table)
    for line in table_notes(report["rows"]):
        console.print(line, highlight=False)
    for line in crossover_lines(report):
        console.print(line)


def _command_line() -> str:
    """``gpunn bench ...`` as typed (whichever entry point ran it)."""
    args = sys.argv[1:]
    if args[:1] == ["bench"]:
        args = args[1:]
    return shlex.join(["gpunn", "bench", *args])


def main(argv: list[str] | None = None) -> int:
    """``python -m gpunn.bench [options]``: the subcommand without the main ``gpunn`` CLI."""
    parser = argparse.ArgumentParser(prog="gpunn")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


def run(args: argparse.Namespace) -> int:
    """Run ``gpunn bench`` with parsed arguments; returns the exit code."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file: no need to squeeze the table into 80 columns
    try:
        cfg, notes, baseline = _build(args)
    except (UsageError, BenchError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"gpunn bench: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    out = Path(args.out)

    def progress(row: dict[str, Any]) -> None:
        marks = {k: f" ({v})" if v else "" for k, v in ratio_marks(row).items()}
        extra = ""
        if row.get("limit_fraction"):
            extra += f"  limit {row['limit_fraction']:.2f}{marks['limit_fraction']}"
        if row.get("vs_torch_train"):
            extra += f"  vs torch {row['vs_torch_train']:.2f}{marks['vs_torch_train']}"
        busy = row.get("other_cpu") or 0.0
        extra += f"  [yellow](other processes used {busy:.0%} of the CPU)[/]" if busy > 0.05 else ""
        console.print(
            f"{row['model']:>18} batch {row['batch']:>6} {series_name(row):<14} "
            f"train {row['train_samples_per_s']:>12,.0f}/s  "
            f"infer {row['infer_samples_per_s']:>12,.0f}/s{extra}",
            soft_wrap=True,
        )

    rows = run_sweep(cfg, progress)
    baseline_rows = baseline["rows"] if baseline else None
    crossovers = compute_crossovers(rows, baseline_rows, args.cpu_baseline or "")
    settings = cfg.settings() | {
        "threads": {
            "blas": blas_threads(),
            "torch": cfg.torch.get_num_threads() if cfg.torch is not None else None,
        }
    }
    report = make_report(
        command=_command_line(),
        settings=settings,
        environment=environment(cfg.backends, cfg.torch, "; ".join(notes)),
        rows=rows,
        crossovers=crossovers,
        cpu_baseline=(
            {
                "path": args.cpu_baseline,
                "cpu_model": baseline.get("environment", {}).get("cpu_model"),
                "rows": len(baseline_rows or []),
            }
            if baseline
            else None
        ),
        notes=notes,
    )
    _print_table(console, report)
    written = [
        write_json(report, out / "bench.json"),
        write_csv(report["rows"], out / "bench.csv"),
        write_markdown(report, out / "bench.md"),
    ]
    if not args.no_plot:
        from gpunn.bench.plot import write_plot

        written.append(write_plot(report, out / "bench.png", baseline_rows))
    console.print("wrote " + ", ".join(str(p) for p in written))
    return 0
