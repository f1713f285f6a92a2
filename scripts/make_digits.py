"""Regenerate gpunn/datasets/data/digits.npz from scikit-learn's copy of the UCI digits.

scikit-learn is NOT a gpunn dependency: run this once, in a throwaway environment,
and commit only the resulting .npz:

    python -m venv /tmp/skvenv && /tmp/skvenv/bin/pip install scikit-learn
    /tmp/skvenv/bin/python scripts/make_digits.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parent.parent / "gpunn" / "datasets" / "data" / "digits.npz"


def main() -> None:
    """Write the 1797 8x8 images as uint8 pixels (0..16) and uint8 labels (0..9)."""
    bunch = load_digits()
    pixels, labels = bunch.data, bunch.target
    # The source data are integer counts 0..16 stored as floats; check before narrowing.
    if not np.array_equal(pixels, np.round(pixels)) or pixels.min() < 0 or pixels.max() > 16:
        raise SystemExit("unexpected pixel values in sklearn digits")
    if pixels.shape != (1797, 64) or labels.shape != (1797,):
        raise SystemExit(f"unexpected shapes {pixels.shape}, {labels.shape}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, pixels=pixels.astype(np.uint8), labels=labels.astype(np.uint8))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
