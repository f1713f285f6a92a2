"""bench.png: samples/s against batch size, log-log, one line per backend and PyTorch device.

One column per model; the top row is training throughput, the bottom row inference. Rows from a
CPU baseline file are drawn dashed. Where a GPU series overtakes a CPU series, the crossover
batch size is marked with a vertical line and labelled. matplotlib is imported lazily with the
non-interactive Agg backend, so this works on a headless machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["write_plot"]

METRICS = (("train_samples_per_s", "training"), ("infer_samples_per_s", "inference"))


def _series(rows: list[dict[str, Any]], model: str, metric: str) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["model"] == model and r.get(metric):
            out.setdefault(f"{r['engine']} {r['device']}", []).append((r["batch"], r[metric]))
    return {name: sorted(points) for name, points in out.items()}


def write_plot(
    report: dict[str, Any],
    path: str | os.PathLike[str],
    baseline_rows: list[dict[str, Any]] | None = None,
) -> Path:
    """Draw the report (and optional baseline rows) into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    rows = report["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(
        len(METRICS), max(1, len(models)), figsize=(5.2 * max(1, len(models)), 8), squeeze=False
    )
    for col, model in enumerate(models):
        for row_i, (metric, title) in enumerate(METRICS):
            ax = axes[row_i][col]
            for name, points in _series(rows, model, metric).items():
                b, v = zip(*points, strict=True)
                ax.plot(b, v, marker="o", label=name)
            for name, points in _series(baseline_rows or [], model, metric).items():
                b, v = zip(*points, strict=True)
                ax.plot(b, v, marker="x", linestyle="--", label=f"{name} (CPU baseline)")
            if metric == "train_samples_per_s":
                _draw_gemm_limits(ax, rows, model)
                _mark_crossovers(ax, report, model)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            batches = sorted({r["batch"] for r in rows if r["model"] == model})
            ax.set_xticks(batches, [str(b) for b in batches], fontsize=7)
            ax.xaxis.set_minor_locator(NullLocator())  # only the measured batch sizes
            ax.set_title(f"{model}: {title}")
            ax.set_xlabel("batch size")
            ax.set_ylabel("samples/s")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    env = report.get("environment", {})
    settings = report.get("settings", {})
    machine = [env.get("cpu_model", "")] + [g.get("name", "") for g in env.get("gpus", [])]
    cores = (env.get("cpu_cores") or {}).get("usable")
    fig.suptitle(
        f"gpunn ReLU MLPs, {settings.get('dtype', '')} {settings.get('optimizer', '').upper()}"
        f" - {', '.join(m for m in machine if m)}"
        + (f" ({cores} cores)" if cores else "")
        + " - dotted: bare GEMM limit",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_gemm_limits(ax: Any, rows: list[dict[str, Any]], model: str) -> None:
    """The samples/s the bare GEMMs alone would allow (batch / gemm_s), per gpunn series."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["model"] == model and r.get("gemm_s"):
            series.setdefault(r["device"], []).append((r["batch"], r["batch"] / r["gemm_s"]))
    for device, points in series.items():
        b, v = zip(*sorted(points), strict=True)
        ax.plot(b, v, linestyle=":", color="grey", linewidth=1, label=f"GEMM limit {device}")


def _mark_crossovers(ax: Any, report: dict[str, Any], model: str) -> None:
    for c in report.get("crossovers", []):
        if c["model"] == model and c["batch"] is not None:
            x = c["estimate"] or c["batch"]
            ax.axvline(x, color="grey", linestyle=":", linewidth=1.2)
            ax.annotate(
                f"{c['gpu']} > {c['cpu']}\nfrom batch {c['batch']}",
                xy=(x, 0.05),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                rotation=90,
                va="bottom",
            )
