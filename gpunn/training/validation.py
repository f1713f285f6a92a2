"""Input checks at the boundary: bad data is refused with a clear message before any weight changes.

Every check says what was expected and what was found ("X has 4 features, the model expects 5").
The checks run once per call of ``fit``/``evaluate``/``predict`` on whole arrays (a few
vectorised reductions), never per batch.
"""

from __future__ import annotations

from typing import Any

from gpunn.backend import device_of, namespace
from gpunn.nn.layer import Array
from gpunn.nn.losses import BinaryCrossEntropy, Loss, MeanSquaredError, SoftmaxCrossEntropy


def check_x(
    X: Any,
    shape: int | tuple[int, ...] | None,
    *,
    name: str = "X",
    dtype: Any = None,
    rank: int | None = 1,
) -> Array:
    """X as a numeric array (N, *sample) with N >= 1, the model's sample shape, finite values.

    ``shape`` is one sample's shape, or an int for a vector of that many features (2-D X, as
    for an MLP); None when the model has yet to learn it, and then ``rank`` is how many axes a
    sample must have (None: any). With ``dtype`` (the model's), values too large for it (they
    would become inf) are refused. A device array is checked where it is (its device current),
    never moved.
    """
    if isinstance(shape, int):
        shape = (shape,)
    if shape is not None:
        rank = len(shape)
    with device_of(X):
        return _check_x(X, shape, rank, name, dtype)


def _check_x(
    X: Any, shape: tuple[int, ...] | None, rank: int | None, name: str, dtype: Any
) -> Array:
    xp = namespace(X)
    try:
        X = xp.asarray(X)
    except (TypeError, ValueError) as exc:
        kind = "2-D numeric array" if rank == 1 else "numeric array"
        raise ValueError(f"{name} must be a {kind}: {exc}") from None
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers, found dtype {X.dtype}")
    _check_rank(X, shape, rank, name)
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has no samples (shape {X.shape})")
    if shape is not None and tuple(X.shape[1:]) != tuple(shape):
        if rank == 1:
            raise ValueError(f"{name} has {X.shape[1]} features, the model expects {shape[0]}")
        raise ValueError(
            f"{name} has samples of shape {tuple(X.shape[1:])}, the model expects {tuple(shape)}"
        )
    if X.dtype.kind == "f":
        bad = int((~xp.isfinite(X)).sum())
        if bad:
            raise ValueError(f"{name} holds {bad} NaN or infinite value(s); all must be finite")
    if dtype is not None and X.dtype.kind == "f" and X.dtype.itemsize > xp.dtype(dtype).itemsize:
        limit = float(xp.finfo(dtype).max)
        if float(xp.abs(X).max()) > limit:
            kind = xp.dtype(dtype).name
            raise ValueError(
                f"{name} holds values beyond ±{limit:.3g}, the largest finite {kind} number; "
                "scale the data or use a float64 model"
            )
    return X


def _check_rank(X: Array, shape: tuple[int, ...] | None, rank: int | None, name: str) -> None:
    """X must have a batch axis plus ``rank`` axes per sample (any number >= 1 for None)."""
    if rank is None:
        if X.ndim < 2:
            raise ValueError(
                f"{name} must have a sample axis and at least one more, found shape {X.shape}"
            )
        return
    if X.ndim == rank + 1:
        return
    if rank == 1:
        raise ValueError(f"{name} must be 2-D (samples, features), found shape {X.shape}")
    axes = "(samples, channels, height, width)" if rank == 3 else f"(samples, {rank} axes)"
    text = f"{name} must be {rank + 1}-D {axes}, found shape {X.shape}"
    if shape is not None and X.ndim == 2 and X.shape[1] == _prod(shape):
        wanted = ", ".join(str(d) for d in shape)
        text += f": reshape it with X.reshape(-1, {wanted})"
    raise ValueError(text)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def check_y(y: Any, n: int, loss: Loss | None, n_outputs: int | None, *, name: str = "y") -> Array:
    """Targets for n samples that suit ``loss`` (class ids, 0/1 labels or regression targets).

    A device array is checked where it is (its device current), never moved.
    """
    with device_of(y):
        return _check_y(y, n, loss, n_outputs, name)


def _check_y(y: Any, n: int, loss: Loss | None, n_outputs: int | None, name: str) -> Array:
    xp = namespace(y)
    try:
        y = xp.asarray(y)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array: {exc}") from None
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers, found dtype {y.dtype}")
    if y.ndim == 0 or y.shape[0] != n:
        found = "a scalar" if y.ndim == 0 else f"{y.shape[0]} rows"
        raise ValueError(f"{name} must have one entry per sample of X ({n}), found {found}")
    if y.dtype.kind == "f":
        bad = int((~xp.isfinite(y)).sum())
        if bad:
            raise ValueError(f"{name} holds {bad} NaN or infinite value(s); all must be finite")
    if isinstance(loss, SoftmaxCrossEntropy):
        return _class_labels(y, n_outputs, name, xp)
    if isinstance(loss, BinaryCrossEntropy):
        return _binary_labels(y, n_outputs, name, xp)
    if isinstance(loss, MeanSquaredError) and n_outputs is not None and y.size != n * n_outputs:
        raise ValueError(
            f"{name} must have shape ({n}, {n_outputs}) to match the model's outputs, "
            f"found {y.shape}"
        )
    return y


def _class_labels(y: Array, classes: int | None, name: str, xp: Any) -> Array:
    """Integer class ids in [0, classes), as int64 of shape (N,)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise ValueError(f"{name} must be class ids of shape (N,), found shape {y.shape}")
    if y.dtype.kind == "f" and bool((y != xp.floor(y)).any()):
        raise ValueError(f"{name} must be whole-number class ids, found fractional values")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or (classes is not None and hi >= classes):
        raise ValueError(
            f"{name} class ids must be in [0, {classes}) for a model with {classes} outputs, "
            f"found values from {lo} to {hi}"
        )
    return y.astype(xp.int64, copy=False)


def _binary_labels(y: Array, outputs: int | None, name: str, xp: Any) -> Array:
    """0/1 labels of shape (N,) for a model with one output."""
    if outputs is not None and outputs != 1:
        raise ValueError(
            f"BinaryCrossEntropy needs a model with 1 output, this model has {outputs}"
        )
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise ValueError(f"{name} must be 0/1 labels of shape (N,), found shape {y.shape}")
    wrong = (y != 0) & (y != 1)
    if bool(wrong.any()):
        found = sorted({float(v) for v in y[wrong][:1000].tolist()})[:5]
        raise ValueError(
            f"{name} must hold only 0 and 1 for BinaryCrossEntropy, found {int(wrong.sum())} "
            f"other value(s) such as {', '.join(f'{v:g}' for v in found)}"
        )
    return y


def check_batch_size(batch_size: Any, *, name: str = "batch_size") -> int | None:
    """A positive integer, or None."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{name} must be a positive integer, found {batch_size!r}")
    return batch_size
