"""Benchmark results on disk: ``bench.json`` (schema below), ``bench.csv``, ``bench.md``, and
loading a CPU baseline back.

bench.json (``schema: "gpunn-bench/1"``) is one object:

* ``schema``: ``"gpunn-bench/1"``.
* ``created``: UTC time, ISO 8601.  ``command``: the command line that produced the file.
* ``settings``: ``backends``, ``models`` (model labels), ``batch_sizes`` (every batch size
  measured), ``batch_sizes_per_model`` (model label -> its batch sizes), ``dtype``,
  ``optimizer``, ``optimizer_hyperparams``, ``activation``, ``loss``, ``compare_torch``,
  ``policy`` (the timing policy of :class:`gpunn.bench.timing.Policy`), ``seed``,
  ``threads`` (``blas`` and ``torch`` thread counts).
* ``environment``: ``cpu_model``, ``cpu_cores`` (``logical``, ``physical``, ``usable``),
  ``load_average`` (1, 5, 15 min, when the run ended), ``platform``, ``python``,
  ``gpunn_version``, ``numpy_version``, ``numpy_blas_build``,
  ``blas`` (list of ``library``, ``version``, ``threads``, ``architecture``,
  ``threading_layer``, ``file``), ``gpus`` (list of ``backend``, ``name``,
  ``memory_total_bytes``, ``memory_free_bytes``, ``compute_capability``, ``multiprocessors``,
  ``driver_version``, ``cuda_runtime_version``, ``cupy_version``, ``tf32``), ``torch``
  (``version``, ``threads``, ``mkl``, ``cuda_available``, ``cuda_version``, ``cuda_device``) or
  null, ``torch_note``.
* ``rows``: one object per (model, batch, engine, device) with the :data:`ROW_FIELDS` below.
* ``crossovers``: one object per GPU series and CPU source: ``model``, ``dtype``,
  ``optimizer``, ``gpu`` (series), ``cpu`` (series), ``cpu_source`` (``"this run"`` or the
  baseline file), ``metric`` (``"train_samples_per_s"``), ``batch`` (grid crossover or null),
  ``estimate`` (log-log interpolated batch size or null), ``gpu_always_faster``, ``compared``
  (batch sizes both series cover). See :mod:`gpunn.bench.crossover`.
* ``cpu_baseline``: null, or ``path``, ``cpu_model``, ``rows`` (count) of the baseline used.
* ``notes``: list of strings (e.g. why PyTorch or CuPy was not measured).

``ROW_FIELDS`` (also the columns of bench.csv, in this order; absent values are null / empty):

* ``model`` (``"784-256-10"`` for an MLP, ``"lenet5-1x28x28"`` for a convolutional preset),
  ``model_name`` (``"mnist"``, ``"lenet5"``, or ``""`` for a custom model),
  ``params`` (trainable parameters), ``batch``, ``engine`` (``"gpunn"`` or ``"torch"``),
  ``device`` (``"numpy"``, ``"cupy:0"``, ``"cpu"``, ``"cuda:0"``), ``dtype``, ``optimizer``.
* ``train_s``, ``train_min_s``, ``train_max_s``: median, min and max seconds per training step
  (forward, loss, backward, optimizer step); ``train_repeats``; ``train_spread`` (interquartile
  range / median); ``train_samples_per_s`` = batch / ``train_s``.
* ``infer_s``, ``infer_min_s``, ``infer_max_s``, ``infer_repeats``, ``infer_spread``,
  ``infer_samples_per_s``: the same for a forward pass in inference mode.
* ``gemm_s``, ``gemm_min_s``, ``gemm_max_s``, ``gemm_repeats``, ``gemm_spread``: the bare GEMMs
  of one step timed alone (gpunn rows); ``gemm_count`` (3 per Dense or Conv2D layer, less the
  first one's input gradient: 3 x layers - 1 for an MLP, 14 for LeNet-5). A convolution's GEMMs
  are those of im2col at the same shapes: ``W (O, C*kh*kw) @ cols (C*kh*kw, N*Ho*Wo)`` forward,
  ``dz @ cols^T`` and ``W^T @ dz`` backward (:func:`gpunn.bench.workload.step_gemms`).
* ``limit_fraction`` = ``gemm_s / train_s`` (gpunn rows; 1.0 would mean zero overhead);
  ``limit_fraction_best`` = ``gemm_min_s / train_min_s``, from the fastest repeats (less
  sensitive to a busy machine, which slows the step's many small operations most).
* ``vs_torch_train``, ``vs_torch_infer``: gpunn samples/s / PyTorch samples/s on the matching
  device, measured interleaved in the same run (gpunn rows, when PyTorch ran), from the
  medians; ``vs_torch_train_best``: the same from the fastest repeats (``train_min_s``).
* ``vs_torch_train_noisy``, ``vs_torch_infer_noisy``, ``limit_fraction_noisy``: true when the
  repeats of the two timings a ratio divides are spread so widely that the ratio means little
  (:func:`ratio_is_noisy`: their ``*_spread`` values summed above :data:`NOISY_SPREAD_SUM`, or
  either one's slowest repeat more than :data:`NOISY_RANGE` times its fastest); null where the
  ratio is.
* ``limit_fraction_disturbed``: true when ``limit_fraction`` or ``limit_fraction_best`` is above
  1. The bare GEMMs are part of the step, so alone they cannot take longer than the whole step:
  a fraction above 1 means the machine's speed changed between the two timings, and the value
  measures the machine, not gpunn.
* ``rss_peak_bytes``: the process's peak resident set size seen while the point was timed;
  ``rss_setup_bytes``: RSS growth from building this engine's model and batch and its first step.
* ``gpu_used_bytes``, ``gpu_total_bytes``: on CuPy the memory pool's bytes in use by live arrays
  and held by the pool after the first step (from an emptied pool); on torch CUDA
  ``max_memory_allocated`` / ``max_memory_reserved``; null on the CPU.
* ``im2col_bytes``: for a convolutional model, the bytes of the im2col matrices its Conv2D
  layers hold after the first step (measured from the arrays; they are kept and reused, so
  this is also their peak; :func:`gpunn.bench.workload.im2col_bytes`); null for an MLP.
* ``other_cpu``: the share of all CPU cores that *other* processes kept busy while the point was
  timed (:mod:`gpunn.bench.load`); above about 0.05 the machine was not quiet and the times,
  ratios included, deserve less trust.
"""

from __future__ import annotations

import csv
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "NOISY_RANGE",
    "NOISY_SPREAD_SUM",
    "ROW_FIELDS",
    "SCHEMA",
    "flag_ratios",
    "load_baseline",
    "make_report",
    "markdown_table",
    "ratio_is_noisy",
    "table_notes",
    "write_csv",
    "write_json",
    "write_markdown",
]

SCHEMA = "gpunn-bench/1"

ROW_FIELDS: tuple[str, ...] = (
    "model",
    "model_name",
    "params",
    "batch",
    "engine",
    "device",
    "dtype",
    "optimizer",
    "train_s",
    "train_min_s",
    "train_max_s",
    "train_repeats",
    "train_spread",
    "train_samples_per_s",
    "infer_s",
    "infer_min_s",
    "infer_max_s",
    "infer_repeats",
    "infer_spread",
    "infer_samples_per_s",
    "gemm_s",
    "gemm_min_s",
    "gemm_max_s",
    "gemm_repeats",
    "gemm_spread",
    "gemm_count",
    "limit_fraction",
    "limit_fraction_best",
    "vs_torch_train",
    "vs_torch_infer",
    "vs_torch_train_best",
    "vs_torch_train_noisy",
    "vs_torch_infer_noisy",
    "limit_fraction_noisy",
    "limit_fraction_disturbed",
    "rss_peak_bytes",
    "rss_setup_bytes",
    "gpu_used_bytes",
    "gpu_total_bytes",
    "im2col_bytes",
    "other_cpu",
)

TOP_LEVEL_FIELDS = (
    "schema",
    "created",
    "command",
    "settings",
    "environment",
    "rows",
    "crossovers",
    "cpu_baseline",
    "notes",
)


# --------------------------------------------------------------------------------------------
# When a ratio means little: the rule behind the *_noisy and *_disturbed fields
# --------------------------------------------------------------------------------------------

#: a ratio of two medians is noisy when the two timings' spreads (interquartile range / median)
#: add up to more than this: each median is then uncertain by a quarter or more
NOISY_SPREAD_SUM = 0.5
#: ... or when either timing's slowest repeat took more than this many times its fastest: its
#: speed changed several-fold while it was measured (e.g. threads of two libraries fighting)
NOISY_RANGE = 4.0


def ratio_is_noisy(a: dict[str, Any], a_prefix: str, b: dict[str, Any], b_prefix: str) -> bool:
    """Whether the ratio of timing ``a_prefix`` of row ``a`` to ``b_prefix`` of row ``b``
    (e.g. gpunn's ``train`` to torch's ``train``) is too noisy to mean much (rule above)."""
    spread = a[f"{a_prefix}_spread"] + b[f"{b_prefix}_spread"]
    ranges = [r[f"{p}_max_s"] / r[f"{p}_min_s"] for r, p in ((a, a_prefix), (b, b_prefix))]
    return spread > NOISY_SPREAD_SUM or max(ranges) > NOISY_RANGE


def flag_ratios(row: dict[str, Any], torch_row: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``*_noisy`` and ``limit_fraction_disturbed`` fields of a gpunn row (its timings, and
    those of the matching PyTorch row when there is one)."""
    flags: dict[str, Any] = {}
    if row.get("gemm_s") is not None:
        flags["limit_fraction_noisy"] = ratio_is_noisy(row, "gemm", row, "train")
        best = row.get("limit_fraction_best") or 0.0
        flags["limit_fraction_disturbed"] = max(row["limit_fraction"], best) > 1.0
    if torch_row is not None:
        flags["vs_torch_train_noisy"] = ratio_is_noisy(row, "train", torch_row, "train")
        flags["vs_torch_infer_noisy"] = ratio_is_noisy(row, "infer", torch_row, "infer")
    return flags


def make_report(
    *,
    command: str,
    settings: dict[str, Any],
    environment: dict[str, Any],
    rows: list[dict[str, Any]],
    crossovers: list[dict[str, Any]],
    cpu_baseline: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The bench.json object; every row gets every field of :data:`ROW_FIELDS` (None if absent)."""
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "settings": settings,
        "environment": environment,
        "rows": [{name: row.get(name) for name in ROW_FIELDS} for row in rows],
        "crossovers": crossovers,
        "cpu_baseline": cpu_baseline,
        "notes": list(notes or []),
    }


def write_json(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def write_csv(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """One line per row, the columns of :data:`ROW_FIELDS`; None is written as an empty cell."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in ROW_FIELDS})
    return path


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a bench.json written by ``gpunn bench`` (for ``--cpu-baseline``); checks the schema."""
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a gpunn bench.json (schema {SCHEMA!r})")
    return report


# --------------------------------------------------------------------------------------------
# Human-readable table (markdown here; the CLI renders the same cells with rich)
# --------------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    "model",
    "batch",
    "engine",
    "device",
    "train samples/s (min-max)",
    "vs torch (best)",
    "limit fraction (best)",
    "infer samples/s",
    "infer vs torch",
    "peak RSS MiB",
    "GPU pool MiB",
    "im2col MiB",
    "other CPU",
)


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def _fmt_ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _with_best(median: float | None, best: float | None, mark: str = "") -> str:
    """``"0.88 (0.91)"``: from the medians, and in brackets from the fastest repeats; ``mark``
    (``"noisy"``, ``"disturbed"``) follows when the rule above applies."""
    if median is None:
        return ""
    return f"{median:.2f}" + (f" ({best:.2f})" if best is not None else "") + _mark(mark)


def _mark(mark: str) -> str:
    return f" {mark}" if mark else ""


def ratio_marks(row: dict[str, Any]) -> dict[str, str]:
    """``{"vs_torch_train": "noisy", "limit_fraction": "disturbed", ...}``: the word to print
    after each ratio of a row ("" when it is sound). Disturbed outranks noisy."""
    limit = ""
    if row.get("limit_fraction_disturbed"):
        limit = "disturbed"
    elif row.get("limit_fraction_noisy"):
        limit = "noisy"
    return {
        "vs_torch_train": "noisy" if row.get("vs_torch_train_noisy") else "",
        "vs_torch_infer": "noisy" if row.get("vs_torch_infer_noisy") else "",
        "limit_fraction": limit,
    }


def _mib(x: int | None, digits: int = 0) -> str:
    return "" if x is None else f"{x / 2**20:,.{digits}f}"


def table_cells(row: dict[str, Any]) -> list[str]:
    """The cells of one row of the human-readable table, in :data:`TABLE_COLUMNS` order."""
    batch = row["batch"]
    low = batch / row["train_max_s"] if row.get("train_max_s") else None
    high = batch / row["train_min_s"] if row.get("train_min_s") else None
    span = f" ({_fmt_rate(low)}-{_fmt_rate(high)})" if low and high else ""
    marks = ratio_marks(row)
    infer = _fmt_ratio(row.get("vs_torch_infer"))
    return [
        row["model"],
        str(batch),
        row["engine"],
        row["device"],
        _fmt_rate(row.get("train_samples_per_s")) + span,
        _with_best(
            row.get("vs_torch_train"), row.get("vs_torch_train_best"), marks["vs_torch_train"]
        ),
        _with_best(
            row.get("limit_fraction"), row.get("limit_fraction_best"), marks["limit_fraction"]
        ),
        _fmt_rate(row.get("infer_samples_per_s")),
        infer + (_mark(marks["vs_torch_infer"]) if infer else ""),
        _mib(row.get("rss_peak_bytes")),
        _mib(row.get("gpu_used_bytes")),
        _mib(row.get("im2col_bytes"), digits=1),
        "" if row.get("other_cpu") is None else f"{row['other_cpu']:.0%}",
    ]


def crossover_lines(report: dict[str, Any]) -> list[str]:
    """One sentence per crossover entry, or why there is none."""
    lines = []
    for c in report.get("crossovers", []):
        head = f"{c['model']}: {c['gpu']} vs {c['cpu']} ({c['cpu_source']})"
        if c["batch"] is None:
            lines.append(f"{head}: the GPU does not stay ahead at any measured batch size")
        elif c["gpu_always_faster"]:
            lines.append(f"{head}: the GPU is faster at every batch size >= {c['batch']}")
        else:
            lines.append(
                f"{head}: the GPU overtakes the CPU at batch {c['batch']} "
                f"(interpolated {c['estimate']:.0f})"
            )
    if not lines:
        lines.append("crossover: not computed (no GPU series was measured in this run)")
    return lines


NOTES = {
    "noisy": (
        "noisy: the repeats of one of the two timings behind this ratio are spread so widely "
        f"(interquartile range / median of the two summing above {NOISY_SPREAD_SUM}, or a "
        f"slowest repeat over {NOISY_RANGE:g}x the fastest) that the ratio means little; "
        "measure again on a quiet machine, or with a larger --budget"
    ),
    "disturbed": (
        "disturbed: a limit fraction above 1 cannot be measured on a steady machine (the bare "
        "GEMMs are part of the step); the machine's speed changed between the two timings"
    ),
}


def table_notes(rows: list[dict[str, Any]]) -> list[str]:
    """The explanation of each mark ("noisy", "disturbed") that appears in these rows."""
    used = {mark for row in rows for mark in ratio_marks(row).values() if mark}
    return [NOTES[mark] for mark in NOTES if mark in used]


def markdown_table(report: dict[str, Any]) -> str:
    """The results table in GitHub markdown, then what its marks mean and the crossovers."""
    head = "| " + " | ".join(TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---" if i < 4 else "---:" for i in range(len(TABLE_COLUMNS))) + "|"
    lines = [head, rule]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in report["rows"]]
    lines.append("")
    lines += [f"- {line}" for line in table_notes(report["rows"])]
    lines += [f"- {line}" for line in crossover_lines(report)]
    return "\n".join(lines) + "\n"


def write_markdown(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.write_text(markdown_table(report), encoding="utf-8")
    return path
