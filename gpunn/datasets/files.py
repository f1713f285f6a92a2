"""Load a user's own (X, y) data set from a .npz archive or a numeric .csv file."""

from __future__ import annotations

import csv
import math
import os
import zipfile
from pathlib import Path

import numpy as np


def load_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read X float32 (n, ...) and y (n,) from ``.npz`` (arrays "X", "y") or ``.csv``.

    A CSV file is comma-separated numbers, one sample per line, the label in the last column.
    A first line that holds no number at all is a header (see :func:`csv_header`); a first line
    mixing numbers and other text is an error. Labels that are all whole numbers come back as
    int64, otherwise as float32.
    """
    p = _existing(path)
    if p.suffix.lower() == ".npz":
        X, y = _read_npz(p, ("X", "y"))
    else:
        table, _ = _read_csv(p)
        if table.shape[1] < 2:
            raise ValueError(
                f"{p}: rows have 1 column; expected at least 2 comma-separated columns "
                "(features, then the label)"
            )
        X, y = table[:, :-1], table[:, -1]
    return _finish(p, X, y)


def csv_header(path: str | os.PathLike[str]) -> list[str] | None:
    """The header cells of a CSV data file, or None when its first line is data.

    The rule: the first non-blank line is a header when none of its cells is a number.
    """
    p = _existing(path)
    return _read_csv(p)[1] if p.suffix.lower() == ".csv" else None


def _existing(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, if it is an existing .npz or .csv file (else a clear error)."""
    p = Path(path)
    if p.suffix.lower() not in (".npz", ".csv"):
        raise ValueError(
            f"{p}: unsupported file type {p.suffix or '(no extension)'!r}; "
            "expected a .npz archive with arrays 'X' and 'y', or a .csv file"
        )
    if p.is_dir():
        raise IsADirectoryError(f"{p}: is a directory, not a data file")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    return p


def _read_npz(p: Path, names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """The arrays ``names`` of an .npz archive; never unpickles anything."""
    # np.load takes a file that is not a zip archive for a .npy or a pickle, and its error then
    # suggests allow_pickle=True, which would run code from the file: check the format first.
    if not zipfile.is_zipfile(p):
        raise ValueError(
            f"{p}: not an .npz archive (an .npz file is a zip archive of arrays, as written "
            "by numpy.savez)"
        )
    try:
        with np.load(p, allow_pickle=False) as archive:
            found = sorted(archive.files)
            missing = [key for key in names if key not in found]
            if missing:
                raise ValueError(
                    f"{p}: missing array(s) {missing}; expected arrays "
                    f"{' and '.join(repr(n) for n in names)}, found {found or 'no arrays'}"
                )
            arrays = []
            for name in names:
                try:
                    arrays.append(archive[name])
                except ValueError:  # numpy: "Object arrays cannot be loaded when allow_pickle..."
                    raise ValueError(
                        f"{p}: array {name!r} holds Python objects, not numbers; gpunn reads "
                        "only numeric arrays"
                    ) from None
            return tuple(arrays)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"{p}: not a readable .npz archive ({err})") from err


def _read_csv(p: Path) -> tuple[np.ndarray, list[str] | None]:
    """The numeric table (rows, columns) float64 of a CSV file, and its header (or None)."""
    # utf-8-sig drops the byte-order mark that spreadsheet programs like to write.
    with open(p, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            lines = [(reader.line_num, row) for row in reader if _has_cells(row)]
        except UnicodeDecodeError as err:
            raise ValueError(f"{p}: not a UTF-8 text file ({err.reason})") from err
        except csv.Error as err:
            raise ValueError(f"{p}: line {reader.line_num}: malformed CSV ({err})") from err
    if not lines:
        raise ValueError(f"{p}: the file is empty; expected comma-separated numbers")
    first_num, first_row = lines[0]
    header = None
    if all(_number(cell) is None for cell in first_row):
        header = [cell.strip() for cell in first_row]  # sets the column count, holds no data
        lines = lines[1:]
        if not lines:
            raise ValueError(f"{p}: only a header line, no data rows")
    width = len(first_row)
    table = np.empty((len(lines), width), dtype=np.float64)
    for i, (num, row) in enumerate(lines):
        if len(row) != width:
            raise ValueError(
                f"{p}: line {num} has {len(row)} columns, expected {width} like line {first_num}"
            )
        for col, cell in enumerate(row):
            value = _number(cell)
            if value is None:
                rule = (
                    " (a first line is a header only when none of its cells is a number)"
                    if num == first_num
                    else ""
                )
                raise ValueError(
                    f"{p}: line {num}, column {col + 1}: {cell.strip()!r} is not a finite "
                    f"number{rule}"
                )
            table[i, col] = value
    return table, header


def _has_cells(row: list[str]) -> bool:
    """False for blank lines, which are skipped."""
    return any(cell.strip() for cell in row)


def _number(cell: str) -> float | None:
    """The cell's value, or None if it is not a finite decimal number."""
    text = cell.strip()
    # float() also accepts "1_000", which is no CSV number anyone writes on purpose.
    if not text or "_" in text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    # "nan" and "inf" parse, but would only poison training later.
    return value if math.isfinite(value) else None


def _finish(p: Path, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and values, then give X float32 and y int64 (whole numbers) or float32."""
    if X.ndim < 1 or y.ndim != 1:
        raise ValueError(
            f"{p}: expected X with one row per sample and 1-D y, "
            f"found X shape {X.shape} and y shape {y.shape}"
        )
    if len(X) != len(y):
        raise ValueError(f"{p}: X has {len(X)} rows but y has {len(y)} labels")
    if len(y) == 0:
        raise ValueError(f"{p}: no samples (X has shape {X.shape})")
    for name, arr in (("X", X), ("y", y)):
        # kinds b, i, u, f: bool, signed, unsigned, float; no complex, strings or objects.
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{p}: {name} must hold real numbers, found dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
            raise ValueError(f"{p}: {name} holds a NaN or infinite value at index {bad}")
    whole = y.dtype.kind != "f" or np.array_equal(y, np.round(y))
    return X.astype(np.float32), y.astype(np.int64 if whole else np.float32)


def load_features(path: str | os.PathLike[str], n_features: int) -> np.ndarray:
    """Read inputs X float32 (n, n_features) for prediction; labels, if present, are ignored.

    ``.npz`` needs array "X" ("y" may be absent). A ``.csv`` may hold just the features, or
    the features followed by a label column (as for ``load_file``);
    :func:`has_label_column` tells which.
    """
    p = _existing(path)
    if p.suffix.lower() == ".npz":
        (X,) = _read_npz(p, ("X",))
        y = np.zeros(len(X)) if X.ndim >= 1 else np.zeros(0)
        return _finish(p, X, y)[0]
    table, _ = _read_csv(p)
    if table.shape[1] == n_features + 1:
        table = table[:, :-1]  # a label column: drop it
    elif table.shape[1] != n_features:
        raise ValueError(
            f"{p}: rows have {table.shape[1]} columns; the model expects {n_features} "
            f"features (optionally followed by a label column)"
        )
    return table.astype(np.float32)


def has_label_column(path: str | os.PathLike[str], n_features: int) -> bool:
    """Whether :func:`load_features` drops a last (label) column of this file."""
    p = _existing(path)
    return p.suffix.lower() == ".csv" and _read_csv(p)[0].shape[1] == n_features + 1
