"""Safe checkpoints: save and load a model (and optimizer) as one checksummed safetensors file.

File format (``format_version`` 1)
----------------------------------
A standard `safetensors <https://github.com/huggingface/safetensors>`_ file, so nothing is ever
unpickled and loading never runs code from the file. Tensors are host arrays:

* ``model/<key>``: each parameter, keyed like ``Sequential.params`` (``model/0.W``, ...), in the
  model's dtype and shape.
* ``state/<key>``: each state array that is not trained, keyed like ``Sequential.state``
  (``state/1.running_mean``, ``state/1.running_var`` for a BatchNorm layer 1), in the model's
  dtype and shape. Absent for models without such state (and in files written before it
  existed, which held no layer with state).
* ``optim/<name>``: each optimizer state array (``momentum_buffer``, ``exp_avg``,
  ``exp_avg_sq``), flat, of the length of ``Sequential.flat_params``.

The metadata (safetensors allows str -> str only) holds, each value JSON-encoded unless noted:

* ``format``: the plain string ``gpunn-checkpoint``; ``format_version``: the plain string ``1``.
* ``gpunn_version``: the version that wrote the file (a JSON string).
* ``architecture``: ``[{"kind": "Dense", "config": {...}}, ...]``, one entry per layer. Kinds are
  looked up in the fixed allow-list :data:`LAYER_KINDS`, never resolved as Python names, and the
  layer is rebuilt as ``LAYER_KINDS[kind](**config)``.
* ``dtype`` (``"float32"``/``"float64"``), ``seed`` (int), ``epoch``, ``step`` (int or null),
  ``extra`` (any JSON value the caller passed).
* ``input_shape`` (optional; absent in files written before it existed): the shape of one
  input sample as a list of ints (``[1, 28, 28]``), or null when the model never learnt it. A
  file without it rebuilds the model from its first Dense layer's width, as it always did.
* ``optimizer``: null, or ``{"kind", "hyperparams", "step"}``; kinds come from the allow-list
  :data:`OPTIMIZER_KINDS`.
* ``rng``: ``{"<layer index>": <NumPy bit-generator state>}`` for each Dropout layer of a model on
  the NumPy backend (so a resumed run draws the same masks); ``{}`` otherwise.
* ``data`` (optional; absent in files written before it existed, or null): where the training
  data came from, so that the same split can be rebuilt (``gpunn evaluate``, ``gpunn train
  --resume``). A JSON object with exactly these keys (:data:`DATA_FIELDS`):

  - ``dataset``: a built-in data set's name, or null for a file; ``file``: the data file's
    absolute path, or null; exactly one of the two is set.
  - ``sha256``: hex SHA-256 of the data file's bytes (null for a built-in data set).
  - ``samples``: how many samples a synthetic data set generated (null otherwise).
  - ``val``, ``test``: the validation and test fractions of the split; ``test`` null when the
    data set has its own test set (MNIST). ``seed``: the seed of the split (and of a synthetic
    data set's generator).
  - ``task``: ``"classification"`` or ``"regression"``; ``classes``: the number of classes
    (null for regression).

  Like every entry it is covered by ``metadata_sha256``; it is checked key by key on loading.
* ``sha256``: hex SHA-256 over the tensors. For each tensor name in sorted (code point) order
  the digest is fed the UTF-8 bytes of ``f"{name}\\n{dtype}\\n{shape}\\n{nbytes}\\n"`` (dtype a
  NumPy name such as ``float32``, shape the comma-separated dimensions, e.g. ``784,128`` or
  empty for a scalar, nbytes the data length) followed by the tensor's raw little-endian
  C-order bytes.
* ``metadata_sha256``: hex SHA-256 of ``json.dumps(m, sort_keys=True, separators=(",", ":"))``,
  UTF-8, where ``m`` is the metadata dict without ``sha256`` and ``metadata_sha256``.

Writing is atomic: the bytes go to a temporary file ``.<name>.tmp-<random>`` in the target's
directory, which is flushed, fsync'ed and then ``os.replace``'d onto the target (and the
directory fsync'ed where the OS allows). A crash or kill at any point leaves either the previous
checkpoint or the new one, never a mix; a leftover ``.<name>.tmp-*`` file is garbage from an
interrupted save and is never read. Non-finite weights are refused, so a diverged model never
overwrites a good checkpoint.

Loading refuses (``ValueError`` naming the file and the problem, ``OSError`` when the file
cannot be read) anything that is not an intact checkpoint this gpunn understands.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pathlib
import struct
import tempfile
from typing import Any

import numpy as np
import safetensors.numpy

from gpunn._version import __version__
from gpunn.backend import Backend
from gpunn.model import DTYPES, Sequential
from gpunn.nn import (
    SGD,
    Adam,
    AdamW,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    LeakyReLU,
    MaxPool2D,
    Optimizer,
    ReLU,
    Sigmoid,
    Tanh,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LAYER_KINDS",
    "OPTIMIZER_KINDS",
    "load",
    "check_data",
    "load_with_optimizer",
    "metadata_digest",
    "read_info",
    "save",
    "tensor_digest",
]

FORMAT = "gpunn-checkpoint"
FORMAT_VERSION = 1

#: The only layer classes a checkpoint may name (kind -> class).
LAYER_KINDS: dict[str, type[Layer]] = {
    "Dense": Dense,
    "ReLU": ReLU,
    "LeakyReLU": LeakyReLU,
    "Sigmoid": Sigmoid,
    "Tanh": Tanh,
    "Dropout": Dropout,
    "Conv2D": Conv2D,
    "MaxPool2D": MaxPool2D,
    "AvgPool2D": AvgPool2D,
    "Flatten": Flatten,
    "BatchNorm1D": BatchNorm1D,
    "BatchNorm2D": BatchNorm2D,
}

#: The only optimizer classes a checkpoint may name (kind -> class).
OPTIMIZER_KINDS: dict[str, type[Optimizer]] = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}

MODEL_PREFIX = "model/"
STATE_PREFIX = "state/"
OPTIM_PREFIX = "optim/"
DIGEST_KEYS = ("sha256", "metadata_sha256")
#: Optional metadata entries: a file without them (written by an older gpunn) still loads.
OPTIONAL_JSON_KEYS = ("data", "input_shape")
#: The keys of the ``data`` entry and the JSON types each may hold (None: null).
DATA_FIELDS: dict[str, tuple[type | None, ...]] = {
    "dataset": (str, None),
    "file": (str, None),
    "sha256": (str, None),
    "samples": (int, None),
    "val": (float,),
    "test": (float, None),
    "seed": (int,),
    "task": (str,),
    "classes": (int, None),
}
TASKS = ("classification", "regression")
HEX = frozenset("0123456789abcdef")
JSON_KEYS = (
    "gpunn_version",
    "architecture",
    "dtype",
    "seed",
    "epoch",
    "step",
    "extra",
    "optimizer",
    "rng",
)
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header, in bytes


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------


def tensor_digest(tensors: dict[str, np.ndarray]) -> str:
    """Hex SHA-256 over named host arrays, as defined in the module docstring."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        data = a.tobytes()
        shape = ",".join(str(d) for d in a.shape)
        h.update(f"{name}\n{a.dtype.name}\n{shape}\n{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def metadata_digest(metadata: dict[str, str]) -> str:
    """Hex SHA-256 of the canonical JSON of every metadata entry except the two digests."""
    body = {k: v for k, v in metadata.items() if k not in DIGEST_KEYS}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save(
    model: Sequential,
    path: str | os.PathLike[str],
    optimizer: Optimizer | None = None,
    *,
    epoch: int | None = None,
    step: int | None = None,
    extra: Any = None,
    data: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Write ``model`` (and ``optimizer``'s state) to ``path`` atomically; returns the path.

    ``extra`` is any JSON-serialisable value (e.g. a dict of metrics) returned by
    :func:`load_with_optimizer`; ``data`` says where the training data came from (the ``data``
    entry of the module docstring, checked by :func:`check_data`). Raises ValueError, leaving
    any existing file untouched, when a weight or optimizer state is not finite or the model
    holds a layer kind outside :data:`LAYER_KINDS`; OSError naming ``path`` when it cannot be
    written.
    """
    path = pathlib.Path(path)
    tensors, metadata = _encode(model, optimizer, epoch=epoch, step=step, extra=extra, data=data)
    blob = safetensors.numpy.save(tensors, metadata=metadata)
    _atomic_write(path, blob)
    return path


def check_data(value: Any) -> dict[str, Any] | None:
    """``value`` if it is a valid ``data`` entry (see the module docstring) or None; else
    ValueError saying which key is wrong."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(DATA_FIELDS):
        keys = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ValueError(f"data must be an object with the keys {sorted(DATA_FIELDS)}, got {keys}")
    for key, types in DATA_FIELDS.items():
        v = value[key]
        if v is None and None in types:
            continue
        if not _is_json_type(v, types[0]):
            kinds = " or ".join("null" if t is None else t.__name__ for t in types)
            raise ValueError(f"data {key!r} must be {kinds}, got {v!r}")
    if (value["dataset"] is None) == (value["file"] is None):
        raise ValueError("data must name exactly one of 'dataset' and 'file'")
    digest = value["sha256"]
    if value["file"] is not None and not (
        isinstance(digest, str) and len(digest) == 64 and all(c in HEX for c in digest)
    ):
        raise ValueError(f"data 'sha256' must be 64 hex digits for a file, got {digest!r}")
    for key in ("val", "test"):
        if value[key] is not None and not 0 <= value[key] < 1:
            raise ValueError(f"data {key!r} must be a fraction in [0, 1), got {value[key]!r}")
    if value["task"] not in TASKS:
        raise ValueError(f"data 'task' must be one of {TASKS}, got {value['task']!r}")
    for key in ("samples", "classes"):
        if value[key] is not None and value[key] < 1:
            raise ValueError(f"data {key!r} must be a positive integer, got {value[key]!r}")
    return value


def _encode(
    model: Sequential,
    optimizer: Optimizer | None,
    *,
    epoch: Any,
    step: Any,
    extra: Any,
    data: Any = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and metadata of a checkpoint (checks everything before any file is touched)."""
    architecture = []
    for i, layer in enumerate(model.layers):
        kind = getattr(layer, "kind", None)
        if LAYER_KINDS.get(kind) is not type(layer):
            raise ValueError(
                f"cannot save layer {i} ({type(layer).__name__}): checkpoints hold only the "
                f"layer kinds {sorted(LAYER_KINDS)}"
            )
        architecture.append({"kind": kind, "config": layer.config()})

    tensors: dict[str, np.ndarray] = {}
    for key, value in model.params.items():
        tensors[MODEL_PREFIX + key] = _finite_host(value, f"parameter {key}")
    for key, value in model.state.items():
        tensors[STATE_PREFIX + key] = _finite_host(value, f"state {key}")

    opt_meta = None
    if optimizer is not None:
        if OPTIMIZER_KINDS.get(optimizer.kind) is not type(optimizer):
            raise ValueError(
                f"cannot save optimizer {type(optimizer).__name__}: checkpoints hold only "
                f"{sorted(OPTIMIZER_KINDS)}"
            )
        state = optimizer.state_dict()
        for name, value in state["state"].items():
            tensors[OPTIM_PREFIX + name] = _finite_host(value, f"optimizer state {name}")
        opt_meta = {
            "kind": state["kind"],
            "hyperparams": state["hyperparams"],
            "step": int(state["step"]),
        }

    for name, value in (("epoch", epoch), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be an int or None, got {value!r}")

    values = {
        "gpunn_version": __version__,
        "architecture": architecture,
        "dtype": model.dtype.name,
        "seed": model.seed,
        "epoch": epoch,
        "step": step,
        "extra": extra,
        "optimizer": opt_meta,
        "rng": _rng_states(model),
        "input_shape": None if model.input_shape is None else list(model.input_shape),
    }
    if data is not None:
        values["data"] = check_data(data)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    for key, value in values.items():
        try:
            metadata[key] = json.dumps(value, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint {key} must be finite JSON data: {exc}") from None
    metadata["sha256"] = tensor_digest(tensors)
    metadata["metadata_sha256"] = metadata_digest(metadata)
    return tensors, metadata


def _finite_host(value: Any, what: str) -> np.ndarray:
    """A C-contiguous host copy of ``value``; ValueError if any element is NaN or infinite."""
    a = np.ascontiguousarray(value.get() if hasattr(value, "get") else value)
    if not np.isfinite(a).all():
        bad = int(a.size - np.isfinite(a).sum())
        raise ValueError(f"refusing to save: {what} has {bad} non-finite value(s) (NaN or inf)")
    return a


def _rng_states(model: Sequential) -> dict[str, Any]:
    """NumPy bit-generator states of the Dropout layers (empty on CuPy: not portable)."""
    if model.backend.name != "numpy":
        return {}
    states = {}
    for i, layer in enumerate(model.layers):
        rng = getattr(layer, "rng", None)
        if isinstance(layer, Dropout) and isinstance(rng, np.random.Generator):
            states[str(i)] = rng.bit_generator.state
    return states


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsync'ed temporary file and ``os.replace``."""
    directory = path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=directory)
    except OSError as exc:  # name the user's path, not the temporary file's
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    tmp = pathlib.Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the file the usual mode
                os.fchmod(f.fileno(), _file_mode(path))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno is not None:
            raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
        raise
    _fsync_dir(directory)


def _file_mode(path: pathlib.Path) -> int:
    """The mode of the file being replaced, else 0o666 minus the process umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _fsync_dir(directory: pathlib.Path) -> None:
    """Make the rename durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load(path: str | os.PathLike[str], backend: str | Backend | None = None) -> Sequential:
    """The model stored at ``path``, on ``backend`` (None: gpunn's automatic choice)."""
    model, _, _ = load_with_optimizer(path, backend)
    return model


def load_with_optimizer(
    path: str | os.PathLike[str], backend: str | Backend | None = None
) -> tuple[Sequential, Optimizer | None, dict[str, Any]]:
    """``(model, optimizer or None, info)`` from ``path``; info has epoch, step, extra.

    The optimizer continues exactly where the saved one stopped (state arrays stay on the host
    until its next ``step`` moves them to the model's device). Raises ValueError naming the file
    for anything but an intact gpunn checkpoint, OSError when it cannot be read.
    """
    path = pathlib.Path(path)
    return _Reader(path).read(backend)


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a checkpoint says about itself, without building the model: ``architecture``
    (``[{"kind", "config"}, ...]``), ``dtype``, ``seed``, ``optimizer`` (``{"kind",
    "hyperparams", "step"}`` or None), ``data`` (or None), ``input_shape`` (a list, or None),
    ``epoch``, ``step``, ``extra``.

    The header and its checksum are checked (the tensors are checked by :func:`load`); raises
    like :func:`load_with_optimizer`.
    """
    reader = _Reader(pathlib.Path(path))
    metadata = reader.header_metadata(reader.read_bytes())
    meta = reader.decode(metadata)
    reader.layers(meta["architecture"])
    reader.optimizer_meta(meta["optimizer"])
    if metadata_digest(metadata) != metadata["metadata_sha256"]:
        raise reader.fail("metadata checksum mismatch: the header was modified or corrupted")
    keys = (
        "architecture",
        "dtype",
        "seed",
        "optimizer",
        "data",
        "input_shape",
        "epoch",
        "step",
        "extra",
    )
    return {key: meta[key] for key in keys}


class _Reader:
    """Validates one checkpoint file step by step; every failure names the file."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def fail(self, problem: str) -> ValueError:
        return ValueError(f"{self.path}: {problem}")

    def read_bytes(self) -> bytes:
        """The file's bytes; a missing file or a folder is an OSError of one plain line."""
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path}: is a folder, not a checkpoint file")
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file")
        return self.path.read_bytes()  # other OSErrors (permissions) name the file themselves

    def read(self, backend: str | Backend | None) -> tuple[Sequential, Optimizer | None, dict]:
        data = self.read_bytes()
        metadata = self.header_metadata(data)
        try:
            tensors = safetensors.numpy.load(data)
        except Exception as exc:  # SafetensorError and friends
            raise self.fail(f"not a valid safetensors file ({exc})") from None
        meta = self.decode(metadata)
        layers = self.layers(meta["architecture"])
        dtype = meta["dtype"]
        seed = meta["seed"]
        opt_meta = self.optimizer_meta(meta["optimizer"])
        if metadata_digest(metadata) != metadata["metadata_sha256"]:
            raise self.fail("metadata checksum mismatch: the header was modified or corrupted")
        if tensor_digest(tensors) != metadata["sha256"]:
            raise self.fail("tensor checksum mismatch: the file was modified or corrupted")
        params = self.model_tensors(tensors, layers, dtype)
        try:
            model = Sequential(
                layers, backend=backend, dtype=dtype, seed=seed, input_shape=meta["input_shape"]
            )
        except ValueError as exc:
            raise self.fail(f"cannot build the model: {exc}") from None
        model.load_state_dict(params)
        self.restore_rng(model, meta["rng"])
        optimizer = self.optimizer(opt_meta, tensors, model)
        info = {
            "epoch": meta["epoch"],
            "step": meta["step"],
            "extra": meta["extra"],
            "gpunn_version": meta["gpunn_version"],
            "format_version": FORMAT_VERSION,
            "data": meta["data"],
        }
        return model, optimizer, info

    # --- header --------------------------------------------------------------------------
    def header_metadata(self, data: bytes) -> dict[str, str]:
        """The ``__metadata__`` of the safetensors header, checked to be a gpunn checkpoint."""
        if not data:
            raise self.fail("the file is empty")
        if len(data) < 8:
            raise self.fail(f"truncated: {len(data)} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", data[:8])
        if n > MAX_HEADER or 8 + n > len(data):
            raise self.fail(
                f"not a safetensors file or truncated: header length {n}, file size {len(data)}"
            )
        try:
            header = json.loads(data[8 : 8 + n].decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise self.fail(f"not a safetensors file: unreadable header ({exc})") from None
        if not isinstance(header, dict):
            raise self.fail("not a safetensors file: the header is not a JSON object")
        metadata = header.get("__metadata__")
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            raise self.fail(f"not a gpunn checkpoint (no metadata format={FORMAT!r})")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise self.fail("metadata values must be strings")
        version = metadata.get("format_version", "")
        if not version.isdigit() or not version.isascii():
            raise self.fail(f"invalid format_version {version!r}")
        if int(version) > FORMAT_VERSION:
            raise self.fail(
                f"format_version {version} is newer than this gpunn reads ({FORMAT_VERSION}); "
                "upgrade gpunn to load it"
            )
        if int(version) < 1:
            raise self.fail(f"invalid format_version {version!r}")
        missing = [k for k in (*JSON_KEYS, *DIGEST_KEYS) if k not in metadata]
        if missing:
            raise self.fail(f"metadata is missing {missing}")
        return metadata

    def decode(self, metadata: dict[str, str]) -> dict[str, Any]:
        """JSON-decode each metadata value and check the simple ones."""
        meta: dict[str, Any] = {}
        for key in JSON_KEYS:
            try:
                meta[key] = json.loads(metadata[key])
            except (ValueError, RecursionError) as exc:
                raise self.fail(f"metadata {key!r} is not valid JSON ({exc})") from None
        if meta["dtype"] not in DTYPES:
            raise self.fail(f"dtype must be one of {DTYPES}, got {meta['dtype']!r}")
        if not _is_int(meta["seed"]):
            raise self.fail(f"seed must be an integer, got {meta['seed']!r}")
        for key in ("epoch", "step"):
            if meta[key] is not None and not _is_int(meta[key]):
                raise self.fail(f"{key} must be an integer or null, got {meta[key]!r}")
        if not isinstance(meta["rng"], dict):
            raise self.fail("metadata 'rng' must be a JSON object")
        for key in OPTIONAL_JSON_KEYS:
            try:
                meta[key] = json.loads(metadata[key]) if key in metadata else None
            except (ValueError, RecursionError) as exc:
                raise self.fail(f"metadata {key!r} is not valid JSON ({exc})") from None
        try:
            check_data(meta["data"])
        except ValueError as exc:
            raise self.fail(f"metadata 'data' is invalid: {exc}") from None
        shape = meta["input_shape"]
        if shape is not None and not (
            isinstance(shape, list) and shape and all(_is_int(d) and d > 0 for d in shape)
        ):
            raise self.fail(f"metadata 'input_shape' must be null or positive sizes, got {shape!r}")
        return meta

    # --- model ---------------------------------------------------------------------------
    def layers(self, architecture: Any) -> list[Layer]:
        """Rebuild each layer from the allow-list; anything else is refused."""
        if not isinstance(architecture, list) or not architecture:
            raise self.fail("architecture must be a non-empty list of layers")
        layers = []
        for i, entry in enumerate(architecture):
            if not isinstance(entry, dict) or set(entry) != {"kind", "config"}:
                raise self.fail(f"architecture entry {i} must be {{'kind': ..., 'config': ...}}")
            kind, config = entry["kind"], entry["config"]
            if not isinstance(kind, str) or kind not in LAYER_KINDS:
                raise self.fail(
                    f"unknown layer kind {kind!r} at layer {i} (known: {sorted(LAYER_KINDS)})"
                )
            if not isinstance(config, dict):
                raise self.fail(f"layer {i} ({kind}) config must be a JSON object")
            try:
                layers.append(LAYER_KINDS[kind](**config))
            except (TypeError, ValueError) as exc:
                raise self.fail(f"layer {i} ({kind}) has an invalid config: {exc}") from None
        return layers

    def model_tensors(
        self, tensors: dict[str, np.ndarray], layers: list[Layer], dtype: str
    ) -> dict[str, np.ndarray]:
        """The parameters and state, checked against the architecture's names, shapes, dtype."""
        prefixes = (MODEL_PREFIX, STATE_PREFIX, OPTIM_PREFIX)
        unexpected = [n for n in tensors if not n.startswith(prefixes)]
        if unexpected:
            raise self.fail(f"unexpected tensors {sorted(unexpected)}")
        shapes = {}
        for i, layer in enumerate(layers):
            for name, shape in layer.param_shapes().items():
                shapes[MODEL_PREFIX + f"{i}.{name}"] = shape
            for name, shape in layer.state_shapes().items():
                shapes[STATE_PREFIX + f"{i}.{name}"] = shape
        stored = {n for n in tensors if n.startswith((MODEL_PREFIX, STATE_PREFIX))}
        missing, extra = set(shapes) - stored, stored - set(shapes)
        if missing or extra:
            raise self.fail(
                f"tensors do not match the architecture: missing {sorted(missing)}, "
                f"unexpected {sorted(extra)}"
            )
        params = {}
        for name, shape in shapes.items():
            a = tensors[name]
            if tuple(a.shape) != tuple(shape):
                raise self.fail(
                    f"tensor {name} has shape {tuple(a.shape)}, the architecture needs "
                    f"{tuple(shape)}"
                )
            if a.dtype != np.dtype(dtype):
                raise self.fail(f"tensor {name} is {a.dtype}, expected {dtype}")
            params[name.split("/", 1)[1]] = a
        return params

    def restore_rng(self, model: Sequential, states: dict[str, Any]) -> None:
        """Put the saved Dropout generator states back (NumPy models only)."""
        for index, state in states.items():
            i = int(index) if isinstance(index, str) and index.isdigit() else -1
            if not 0 <= i < len(model.layers) or not isinstance(model.layers[i], Dropout):
                raise self.fail(f"rng state for layer {index!r}, which is not a Dropout layer")
            rng = model.layers[i].rng
            if not isinstance(rng, np.random.Generator):
                continue  # saved on NumPy, loaded on CuPy: masks are not portable anyway
            if not isinstance(state, dict):
                raise self.fail(f"rng state for layer {i} must be a JSON object")
            try:
                rng.bit_generator.state = state
            except (TypeError, ValueError, KeyError, OverflowError) as exc:
                raise self.fail(f"invalid rng state for layer {i}: {exc}") from None

    # --- optimizer -----------------------------------------------------------------------
    def optimizer_meta(self, opt: Any) -> dict[str, Any] | None:
        """Check the optimizer entry: null or {kind (allow-listed), hyperparams, step}."""
        if opt is None:
            return None
        if not isinstance(opt, dict) or set(opt) != {"kind", "hyperparams", "step"}:
            raise self.fail("metadata 'optimizer' must be null or {kind, hyperparams, step}")
        kind = opt["kind"]
        if not isinstance(kind, str) or kind not in OPTIMIZER_KINDS:
            raise self.fail(f"unknown optimizer kind {kind!r} (known: {sorted(OPTIMIZER_KINDS)})")
        if not isinstance(opt["hyperparams"], dict):
            raise self.fail("optimizer hyperparams must be a JSON object")
        if not _is_int(opt["step"]) or opt["step"] < 0:
            raise self.fail(f"optimizer step must be an integer >= 0, got {opt['step']!r}")
        return opt

    def optimizer(
        self, opt: dict[str, Any] | None, tensors: dict[str, np.ndarray], model: Sequential
    ) -> Optimizer | None:
        """Rebuild the optimizer and its state for ``model``."""
        prefix = len(OPTIM_PREFIX)
        stored = {n[prefix:]: a for n, a in tensors.items() if n.startswith(OPTIM_PREFIX)}
        if opt is None:
            if stored:
                raise self.fail(f"optimizer tensors {sorted(stored)} but no optimizer metadata")
            return None
        kind = opt["kind"]
        try:
            optimizer = OPTIMIZER_KINDS[kind](**opt["hyperparams"])
        except (TypeError, ValueError) as exc:
            raise self.fail(f"invalid {kind} hyperparameters: {exc}") from None
        names = set(optimizer.state_names)
        if set(stored) - names or (opt["step"] > 0 and set(stored) != names):
            raise self.fail(
                f"{kind} state tensors {sorted(stored)} do not match the expected "
                f"{sorted(names)} after {opt['step']} steps"
            )
        size = model.flat_params.shape
        state = {}
        for name, a in stored.items():
            if a.shape != size or a.dtype != np.dtype(model.dtype.name):
                raise self.fail(
                    f"tensor {OPTIM_PREFIX + name} is {a.dtype} {a.shape}, the model needs "
                    f"{model.dtype.name} {size}"
                )
            state[name] = a.copy()  # owned and writable: the optimizer updates it in place
        optimizer.load_state_dict(  # the constructor's checked values, not the raw JSON
            {
                "kind": kind,
                "hyperparams": optimizer.hyperparams(),
                "step": opt["step"],
                "state": state,
            }
        )
        return optimizer


def _is_json_type(value: Any, kind: type | None) -> bool:
    """Whether a decoded JSON value is of ``kind`` (a float may be written as a whole number)."""
    if kind is int:
        return _is_int(value)
    if kind is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and math.isfinite(value)
    return kind is not None and isinstance(value, kind)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
