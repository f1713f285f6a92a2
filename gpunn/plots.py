"""Training curves as a PNG (matplotlib, an optional extra: pip install "gpunn[plot]")."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_history(history: Any, path: str | Path) -> Path:
    """Loss and accuracy per epoch, training and validation, side by side; returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError(
            "writing a plot needs matplotlib: pip install 'gpunn[plot]' (in a clone: "
            ".venv/bin/pip install -e '.[plot]')"
        ) from None
    path = Path(path)
    metrics = [m for m in ("loss", "accuracy") if m in history.history]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=False):
        ax.plot(history.epoch, history[metric], label=f"train {metric}")
        if f"val_{metric}" in history.history:
            ax.plot(history.epoch, history[f"val_{metric}"], label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
