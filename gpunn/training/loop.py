"""The training loop: fit, evaluate and predict over whole datasets kept on the device.

The dataset moves to the device once (or in large chunks when it does not fit), mini-batches are
gathered there, and the batch order comes from a host generator seeded by ``seed``, so NumPy and
CuPy see the same batches in the same order. The epoch's loss, correct-prediction count and
first non-finite batch are accumulated on the device and read back once per epoch: a GPU is never
made to wait for the host inside an epoch.

Host reads (each one waits for the GPU), counted by tests/test_device_rules.py: ``fit`` reads
once per epoch, plus once per epoch for ``validation_data`` (its evaluation); ``evaluate``
reads once; ``predict`` never (it returns a device array). Checking inputs that are already on
the device reads a few scalars once per call, before the first epoch. A data-parallel run over
MPI without CUDA-aware transfers also copies each step's gradients through the host (see
docs/distributed.md). The first use of each fused kernel in a process runs its self-check,
which reads a few values once. Everything runs with the model's device current
(``backend.activate()``), whatever device the caller has current.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpunn.backend import namespace
from gpunn.errors import NonFiniteLossError
from gpunn.math.activations import sigmoid_forward, softmax_forward
from gpunn.model import Sequential
from gpunn.nn.layer import Array
from gpunn.nn.losses import BinaryCrossEntropy, Loss, SoftmaxCrossEntropy
from gpunn.nn.optim import Optimizer
from gpunn.training.callbacks import Callback
from gpunn.training.distributed import Communicator, DataParallel
from gpunn.training.progress import Progress, count
from gpunn.training.validation import check_batch_size, check_x, check_y

#: the share of free device memory a dataset may take before it is streamed in chunks
DEVICE_MEMORY_SHARE = 0.5


@dataclass(repr=False)
class History:
    """Per-epoch metrics of one ``fit``: ``history["loss"][e]`` is the mean loss of the e-th
    epoch run, ``history.epoch[e]`` that epoch's number, ``history.keys()`` the metric names."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: list[int] = field(default_factory=list)

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def keys(self) -> Any:
        """The metric names, in the order fit logs them (``loss``, ``accuracy``, ...)."""
        return self.history.keys()

    def __contains__(self, key: object) -> bool:
        return key in self.history

    def __iter__(self) -> Iterator[str]:
        return iter(self.history)

    def __repr__(self) -> str:
        """``History(3 epochs [1-3], last: loss 0.1234, accuracy 0.9700)``: how many epochs,
        their numbers and the last one's main metrics, not every list (``history.history``)."""
        if not self.epoch:
            return "History(0 epochs)"
        span = f"{self.epoch[0]}-{self.epoch[-1]}" if len(self.epoch) > 1 else f"{self.epoch[0]}"
        last = [
            f"{key} {self.history[key][-1]:.4f}"
            for key in ("loss", "accuracy", "val_loss", "val_accuracy")
            if key in self.history
        ]
        return f"History({count(len(self.epoch), 'epoch')} [{span}], last: {', '.join(last)})"


class DeviceData:
    """X and y on the model's backend, served as mini-batches in a given order.

    When the data fits (under half the free device memory) it is copied once and batches are
    gathered on the device with ``take``; otherwise the rows of each large chunk of the order
    are gathered on the host and moved together, one transfer per chunk.
    """

    def __init__(self, backend: Any, X: Array, y: Array, dtype: Any, y_dtype: Any) -> None:
        self.backend, self.xp = backend, backend.xp
        self.n = X.shape[0]
        self.dtype, self.y_dtype = dtype, y_dtype
        per_sample = 1
        for d in X.shape[1:]:
            per_sample *= d
        row_bytes = per_sample * dtype.itemsize + 8  # a sample of X plus its label
        free = backend.free_memory()  # None on the host: X is already in memory there
        fits = free is None or row_bytes * self.n <= DEVICE_MEMORY_SHARE * free
        self.on_device = fits
        self.chunk_rows = self.n if fits else max(1, int(DEVICE_MEMORY_SHARE * free // row_bytes))
        if fits:
            self.X = backend.asarray(X, dtype=dtype)  # (N, D) once, not per batch
            self.y = backend.asarray(y, dtype=y_dtype)  # (N,) or (N, K)
        else:
            self.X = backend.to_numpy(X)  # stays on the host; chunks are moved as needed
            self.y = backend.to_numpy(y)

    def batches(self, order: Any, batch_size: int) -> Iterator[tuple[Array, Array]]:
        """Yield (X_batch, y_batch) on the device for consecutive slices of ``order``."""
        # chunks hold whole batches, so the batches are the same as with all data on the device
        size = self.n if self.on_device else self.chunk_rows // batch_size * batch_size
        size = max(size, batch_size)
        for start in range(0, self.n, size):
            chunk = order[start : start + size]  # host indices
            if self.on_device:
                Xc, yc, idx = self.X, self.y, self.backend.asarray(chunk)
            else:
                Xc = self.backend.asarray(self.X[chunk], dtype=self.dtype)
                yc = self.backend.asarray(self.y[chunk], dtype=self.y_dtype)
                idx = None
            for b in range(0, len(chunk), batch_size):
                if idx is None:
                    yield Xc[b : b + batch_size], yc[b : b + batch_size]
                else:
                    picked = idx[b : b + batch_size]
                    yield self.xp.take(Xc, picked, axis=0), self.xp.take(yc, picked, axis=0)


def fit(
    model: Sequential,
    X: Any,
    y: Any,
    *,
    loss: Loss,
    optimizer: Optimizer,
    epochs: int = 10,
    batch_size: int = 64,
    shuffle: bool = True,
    validation_data: tuple[Any, Any] | None = None,
    validation_split: float | None = None,
    callbacks: Sequence[Callback] = (),
    seed: int | None = None,
    verbose: int = 1,
    initial_epoch: int = 0,
    comm: Communicator | None = None,
) -> History:
    """Train ``model`` on X (N, D), y (N,) / (N, K) with mini-batch gradient descent.

    Every input is checked before any weight changes. ``seed`` (default: the model's seed)
    fixes the batch order: epoch e is shuffled by a generator seeded with (seed, e), so a run
    resumed with ``initial_epoch`` (epochs already done) sees the batches an uninterrupted run
    would. Raises :class:`NonFiniteLossError` if the loss becomes NaN/inf.

    ``validation_split`` (a fraction in (0, 1), exclusive with ``validation_data``) holds out
    the *last* ``round(fraction * N)`` rows of X and y, as given and before any shuffling (as
    Keras does), and evaluates them after every epoch like ``validation_data``: the split is
    the same in every run and on every rank. Rows must not be ordered by class: labels sorted
    by class, or a split holding a class the training rows lack, are refused (shuffle first).

    With ``comm`` (a :mod:`gpunn.training.distributed` communicator of more than one rank) this
    is one rank of a data-parallel run: ``batch_size`` is the global batch, each rank trains on its
    shard of it, and only rank 0 prints and writes checkpoints (see docs/distributed.md).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, found {epochs!r}")
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int) or initial_epoch < 0:
        raise ValueError(f"initial_epoch must be a non-negative integer, found {initial_epoch!r}")
    if batch_size is None:
        raise ValueError("batch_size must be a positive integer, found None")
    batch_size = check_batch_size(batch_size)
    _check_loss(loss)
    if not isinstance(optimizer, Optimizer):
        raise ValueError(f"optimizer must be a gpunn optimizer (e.g. Adam()), found {optimizer!r}")
    X = check_input(model, X)
    _check_outputs(model)
    y = check_y(y, X.shape[0], loss, model.out_features)
    if validation_split is not None:
        if validation_data is not None:
            raise ValueError(
                "give either validation_data or validation_split, not both "
                f"(validation_split={validation_split!r})"
            )
        X, y, validation_data = _split_off_validation(X, y, validation_split, loss)
    val = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError(
                "validation_data must be a pair (X_val, y_val), found "
                f"{type(validation_data).__name__}"
                + (
                    f" of length {len(validation_data)}"
                    if isinstance(validation_data, (tuple, list))
                    else ""
                )
            )
        Xv = check_input(model, validation_data[0], name="validation X")
        yv = check_y(validation_data[1], Xv.shape[0], loss, model.out_features, name="validation y")
        val = _on_device(model, loss, Xv, yv)  # moved once, evaluated every epoch

    _check_batch_sizes(model, X.shape[0], batch_size)
    backend, xp = model.backend, model.xp
    with backend.activate():  # every array of the run is made, and every kernel runs, on its device
        data = DeviceData(backend, X, y, model.dtype, _label_dtype(loss, model))
        seed = model.seed if seed is None else seed
        dp = None
        if comm is not None and comm.size > 1:
            same = {
                "seed": seed,
                "shuffle": shuffle,
                "epochs": epochs,
                "initial_epoch": initial_epoch,
            }
            dp = DataParallel(comm, model, data.n, batch_size, same)  # broadcasts rank 0's weights
            callbacks = dp.wrap_callbacks(callbacks)
            verbose = verbose if comm.rank == 0 else 0
        history = History()
        steps = -(-data.n // batch_size)  # batches per epoch, the last one may be short
        progress = Progress(verbose, initial_epoch + epochs, steps=steps, samples=data.n)
        context = {
            "model": model,
            "optimizer": optimizer,
            "loss": loss,
            "history": history,
            "steps_per_epoch": steps,
        }
        for cb in callbacks:
            cb.set_context(context)
            cb.on_train_begin()
        model.stop_training = False
        with progress:
            for epoch in range(initial_epoch + 1, initial_epoch + epochs + 1):
                for cb in callbacks:
                    cb.on_epoch_begin(epoch)
                if shuffle:
                    order = backend.host_rng((seed, epoch)).permutation(data.n)
                else:
                    order = backend.host_arange(data.n)
                progress.start_epoch(epoch)
                t0 = time.perf_counter()
                stats = _epoch(
                    model, loss, optimizer, data, order, batch_size, callbacks, progress, dp
                )
                if dp is None:
                    # the one host read of the epoch: the (2, batches) stats and a weight checksum
                    checksum = model.flat_params.sum(dtype=xp.float64).reshape(1)
                    host = backend.to_numpy(xp.concatenate([stats.ravel(), checksum]))
                    stats, weight_sum = host[:-1].reshape(2, -1), float(host[-1])
                else:  # read together with the ranks' checksums, then summed over the ranks
                    stats, weight_sum = dp.end_epoch(model, stats), 0.0
                seconds = time.perf_counter() - t0
                sizes = [min(batch_size, data.n - start) for start in range(0, data.n, batch_size)]
                bad = [b for b, value in enumerate(stats[0]) if not math.isfinite(value)]
                if bad:
                    raise NonFiniteLossError(epoch, bad[0] + 1, float(stats[0][bad[0]]))
                if not math.isfinite(weight_sum):  # the epoch's last step broke the weights
                    raise NonFiniteLossError(epoch, steps, weight_sum, what="weights")
                loss_sum = sum(
                    float(value) * size for value, size in zip(stats[0], sizes, strict=False)
                )
                logs = {"loss": loss_sum / data.n}
                if loss.has_accuracy:
                    logs["accuracy"] = float(stats[1].sum()) / data.n
                if val is not None:
                    for key, value in _evaluate(model, *val, loss).items():
                        logs[f"val_{key}"] = value
                logs["lr"] = optimizer.lr
                logs["epoch_seconds"] = seconds
                logs["samples_per_second"] = data.n / seconds if seconds > 0 else float("inf")
                history.append(epoch, logs)
                progress.end_epoch(epoch, logs)
                for cb in callbacks:
                    cb.on_epoch_end(epoch, logs)
                if model.stop_training:
                    break
        for cb in callbacks:
            cb.on_train_end()
        return history


def check_input(model: Sequential, X: Any, *, name: str = "X") -> Array:
    """X checked against the model's input shape (see ``check_x``); a model that does not
    know its input shape yet learns it here, and checks that its layers fit together."""
    X = check_x(X, model.input_shape, name=name, dtype=model.dtype, rank=model.input_rank)
    if model.input_shape is None:
        model.set_input_shape(X.shape[1:])
    return X


def _check_outputs(model: Sequential) -> None:
    """A loss needs a vector of outputs per sample: refuse a model that ends in feature maps."""
    shape = model.output_shape
    if shape is not None and len(shape) != 1:
        raise ValueError(
            f"the model's output for one sample has shape {shape}, but a loss needs a vector "
            "of outputs: end the model with Flatten() and a Dense layer"
        )


def _check_batch_sizes(model: Sequential, n: int, batch_size: int) -> None:
    """Every training batch must be large enough for the model (BatchNorm needs 2 values per
    channel); the smallest is the last batch of an epoch."""
    need, who = model.min_train_batch()
    last = n % batch_size or batch_size
    smallest = min(last, batch_size, n)
    if smallest < need:
        raise ValueError(
            f"{who} needs batches of at least {need} samples to train, but with {n} samples "
            f"and batch size {batch_size} the last batch of each epoch holds {smallest}: "
            "choose another batch size"
        )


def _split_off_validation(
    X: Array, y: Array, fraction: Any, loss: Loss
) -> tuple[Array, Array, tuple[Array, Array]]:
    """(X_train, y_train, (X_val, y_val)): the last ``round(fraction * N)`` rows held out."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise ValueError(f"validation_split must be a fraction in (0, 1), found {fraction!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"validation_split must be a fraction in (0, 1), found {fraction!r}")
    n = X.shape[0]
    n_val = int(fraction * n + 0.5)  # round(fraction * N), a half rounded up
    if not 1 <= n_val <= n - 1:
        raise ValueError(
            f"validation_split={fraction!r} of {count(n, 'sample')} leaves "
            + ("no validation sample" if n_val < 1 else "no training sample")
        )
    cut = n - n_val
    if isinstance(loss, SoftmaxCrossEntropy):
        # Rows ordered by class would put whole classes in the held-out tail: the model could
        # not learn them and the validation accuracy would measure one class.
        xp = namespace(y)
        step = xp.diff(y)
        if y[0] != y[-1] and bool((step >= 0).all() or (step <= 0).all()):
            problem = "the rows are sorted by class"
        else:
            missing = xp.setdiff1d(xp.unique(y[cut:]), xp.unique(y[:cut]))
            listed = ", ".join(str(int(c)) for c in missing[:5].tolist())
            problem = f"it holds class(es) {listed} that the training rows lack" if listed else ""
        if problem:
            raise ValueError(
                f"validation_split takes the last {count(n_val, 'row')} as they are, and "
                f"{problem}: shuffle X and y first, or pass validation_data"
            )
    return X[:cut], y[:cut], (X[cut:], y[cut:])


def _epoch(
    model: Sequential,
    loss: Loss,
    optimizer: Optimizer,
    data: DeviceData,
    order: Any,
    batch_size: int,
    callbacks: Sequence[Callback],
    progress: Progress,
    dp: DataParallel | None = None,
) -> Array:
    """One pass over the data; returns a device array (2, batches): batch losses, correct counts.

    Each batch writes its mean loss and its number of correct predictions into this array on
    the device; nothing is read back until the epoch ends. With ``dp`` the batches are this
    rank's shards, and the gradients are averaged over the ranks before each step.
    """
    xp = model.xp
    stats = xp.zeros((2, -(-data.n // batch_size)), dtype=xp.float64)
    batches = data.batches(order, batch_size) if dp is None else dp.batches(data, order)
    for b, (xb, yb) in enumerate(batches):
        for cb in callbacks:
            cb.on_batch_begin(b)
        if xb.shape[0]:
            logits = model.forward(xb)  # (B, out)
            stats[0, b] = loss.forward(logits, yb)  # 0-d mean loss of the batch, on the device
            if loss.has_accuracy:
                stats[1, b] = loss.correct(logits, yb)
            model.backward(loss.backward())
        else:  # an empty shard (a short last batch of a data-parallel run) adds zero gradients
            model.zero_grad()
        if dp is not None:
            dp.average_gradients(model, b)
        optimizer.step(model)
        progress.advance(xb.shape[0] if dp is None else dp.global_batch_size(b))
    return stats


def evaluate(model: Sequential, X: Any, y: Any, loss: Loss | None = None) -> dict[str, float]:
    """Mean loss (and accuracy where it applies) of the model on X, y in inference mode."""
    loss = loss if loss is not None else _default_loss(model)
    _check_loss(loss)
    X = check_input(model, X)
    _check_outputs(model)
    y = check_y(y, X.shape[0], loss, model.out_features)
    return _evaluate(model, *_on_device(model, loss, X, y), loss)


def _on_device(model: Sequential, loss: Loss, X: Array, y: Array) -> tuple[Array, Array]:
    """Checked X and y moved to the model's backend in its dtypes (no copy if already there)."""
    backend = model.backend
    return backend.asarray(X, dtype=model.dtype), backend.asarray(y, _label_dtype(loss, model))


def _evaluate(model: Sequential, X: Array, y: Array, loss: Loss) -> dict[str, float]:
    """``evaluate`` on checked device arrays: batched forward passes, one host read."""
    backend, xp = model.backend, model.xp
    with backend.activate():
        totals = xp.zeros(2, dtype=xp.float64)
        for start, stop in _slices(X.shape[0], _predict_batch(model)):
            logits = model.forward(X[start:stop], training=False)
            yb = y[start:stop]
            totals[0] += loss.forward(logits, yb) * (stop - start)
            if loss.has_accuracy:
                totals[1] += loss.correct(logits, yb)
    sums = backend.to_numpy(totals)  # the one host read
    result = {"loss": float(sums[0]) / X.shape[0]}
    if loss.has_accuracy:
        result["accuracy"] = float(sums[1]) / X.shape[0]
    return result


def predict(model: Sequential, X: Any, batch_size: int | None = None) -> Array:
    """Model outputs (logits) for X (N, ...) -> (N, out) on the model's backend, in batches."""
    X = check_input(model, X)
    batch_size = check_batch_size(batch_size) or _predict_batch(model)
    backend, xp = model.backend, model.xp
    out = None
    with backend.activate():
        for start, stop in _slices(X.shape[0], batch_size):
            xb = backend.asarray(X[start:stop], dtype=model.dtype)
            yb = model.forward(xb, training=False)
            if out is None:  # the output width is known once the first batch has gone through
                out = xp.empty((X.shape[0],) + yb.shape[1:], dtype=model.dtype)
            out[start:stop] = yb
    return out


def predict_proba(
    model: Sequential, X: Any, loss: Loss | None = None, batch_size: int | None = None
) -> Array:
    """Class probabilities for X (N, D) on the model's backend, from the logits of ``predict``.

    ``loss`` is the loss the model was trained with; it decides what the outputs mean:

    * :class:`SoftmaxCrossEntropy`: softmax over the C outputs, (N, C), each row summing to 1;
    * :class:`BinaryCrossEntropy`: sigmoid of the single output, (N, 1), P(label 1);
    * any other loss (mean squared error) has no probabilities: ``ValueError``.

    ``loss=None`` assumes what :func:`evaluate` assumes: BinaryCrossEntropy for a model with one
    output, SoftmaxCrossEntropy for more. Pass the loss for a model trained with another.
    """
    loss = loss if loss is not None else _default_loss(model)
    _check_loss(loss)
    if isinstance(loss, SoftmaxCrossEntropy):
        probabilities = softmax_forward
    elif isinstance(loss, BinaryCrossEntropy):
        probabilities = sigmoid_forward
    else:
        raise ValueError(
            f"a model trained with {loss.kind} predicts values, not class probabilities: "
            "use predict()"
        )
    logits = predict(model, X, batch_size)  # (N, out), a new array: overwritten in place
    return probabilities(logits, xp=model.xp, out=logits)


def _slices(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _predict_batch(model: Sequential) -> int:
    """Rows per inference batch: large enough to keep a GPU busy, small enough for memory."""
    return 8192


def _check_loss(loss: Any) -> None:
    if not isinstance(loss, Loss):
        raise ValueError(f"loss must be a gpunn loss (e.g. SoftmaxCrossEntropy()), found {loss!r}")


def _label_dtype(loss: Loss, model: Sequential) -> Any:
    return model.xp.int64 if isinstance(loss, SoftmaxCrossEntropy) else model.dtype


def _default_loss(model: Sequential) -> Loss:
    return BinaryCrossEntropy() if model.out_features == 1 else SoftmaxCrossEntropy()
