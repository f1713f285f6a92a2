"""Save and load a fitted estimator as a gpunn checkpoint (safetensors: nothing is unpickled).

The network and the optimizer state are the checkpoint's tensors, exactly as
``Sequential.save`` writes them (so ``gpunn.load(path)`` gives the network as a ``Sequential``);
the estimator's class name, constructor parameters and fitted attributes go into the
checkpoint's ``extra`` JSON. Loading rebuilds the estimator from the allow-list of classes it is
given (never from a name in the file) and checks the network against the parameters; a
checkpoint of anything else is refused with ``ValueError``.

JSON has no NaN or infinity: such floats are stored as ``{"float": "nan"}`` and restored. A
``random_state`` that is a ``RandomState`` instance is stored as None (it cannot be written
without pickle); integers and None are kept.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

from gpunn.backend import Backend
from gpunn.checkpoint import load_with_optimizer
from gpunn.checkpoint import save as save_checkpoint
from gpunn.sklearn._optim import StochasticOptimizer

__all__ = ["load", "save"]

FORMAT = "gpunn.sklearn/1"

#: fitted attributes written to the checkpoint when the estimator has them
ATTRIBUTES = (
    "n_features_in_",
    "feature_names_in_",
    "classes_",
    "n_iter_",
    "t_",
    "n_layers_",
    "n_outputs_",
    "out_activation_",
    "loss_",
    "best_loss_",
    "loss_curve_",
    "validation_scores_",
    "best_validation_score_",
    "_no_improvement_count",
)


def _encode(value: Any) -> Any:
    """``value`` as JSON data: NumPy scalars and arrays to Python, non-finite floats tagged."""
    if isinstance(value, np.ndarray):
        return [_encode(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"cannot write {type(value).__name__} {value!r} to a gpunn checkpoint")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"float"}:
            return float(value["float"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _params(est: Any) -> dict[str, Any]:
    params = est.get_params(deep=False)
    hidden = params["hidden_layer_sizes"]
    params["hidden_layer_sizes"] = (
        [int(h) for h in hidden] if hasattr(hidden, "__iter__") else int(hidden)
    )
    if not (params["random_state"] is None or isinstance(params["random_state"], int)):
        params["random_state"] = None
    if isinstance(params["backend"], Backend):
        params["backend"] = params["backend"].spec
    return _encode(params)


def save(est: Any, path: str | os.PathLike[str]) -> pathlib.Path:
    """Write fitted ``est`` to ``path`` (see the module docstring)."""
    check_is_fitted(est)
    est._ensure_model()
    attributes = {name: _encode(getattr(est, name)) for name in ATTRIBUTES if hasattr(est, name)}
    if hasattr(est, "_label_binarizer"):
        attributes["label_type"] = est._label_binarizer.y_type_
    schedule = getattr(est, "_optimizer", None)
    extra = {
        "format": FORMAT,
        "estimator": type(est).__name__,
        "params": _params(est),
        "attributes": attributes,
    }
    optimizer = None if schedule is None else schedule.optimizer
    return save_checkpoint(est._model, path, optimizer, extra=extra)


def load(
    path: str | os.PathLike[str],
    classes: dict[str, type],
    backend: str | Backend | None = None,
) -> Any:
    """The estimator written by :func:`save`, on ``backend`` (None: its ``backend``).

    ``classes`` maps the class names that may be loaded to the classes (the allow-list).
    """
    path = pathlib.Path(path)
    # read once on the host to learn the estimator's own backend, then build there
    model, optimizer, info = load_with_optimizer(path, "numpy")
    extra = info.get("extra")
    if not isinstance(extra, dict) or extra.get("format") != FORMAT:
        raise ValueError(f"{path}: not a gpunn.sklearn estimator checkpoint")
    name = extra.get("estimator")
    cls = classes.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"{path} holds a {name!r}, not one of {sorted(classes)}")
    params = _decode(extra["params"])
    if isinstance(params.get("hidden_layer_sizes"), list):
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    try:
        est = cls(**params)
    except TypeError as exc:
        raise ValueError(f"{path}: invalid estimator parameters: {exc}") from None
    attributes = _decode(extra["attributes"])
    target = backend if backend is not None else params.get("backend", "auto")
    model = model.to(target)
    if "classes_" in attributes:  # a classifier
        labels = np.asarray(attributes["classes_"])
        multilabel = attributes.get("label_type") == "multilabel-indicator"
        est = cls.from_sequential(model, labels, multilabel=multilabel, **params)
    else:
        est = cls.from_sequential(model, **params)
    if [int(h) for h in np.atleast_1d(params["hidden_layer_sizes"])] != list(
        est.hidden_layer_sizes
    ):
        raise ValueError(f"{path}: the network does not match hidden_layer_sizes")
    for name, value in attributes.items():
        if name in ("label_type", "classes_"):
            continue
        if name == "feature_names_in_":
            value = np.asarray(value, dtype=object)
        setattr(est, name, value)
    est.hidden_layer_sizes = params["hidden_layer_sizes"]
    if optimizer is not None:
        schedule = StochasticOptimizer(
            est.solver,
            learning_rate_init=est.learning_rate_init,
            lr_schedule=est.learning_rate,
            momentum=est.momentum,
            nesterov=est.nesterovs_momentum,
            power_t=est.power_t,
            beta_1=est.beta_1,
            beta_2=est.beta_2,
            epsilon=est.epsilon,
        )
        schedule.optimizer = optimizer  # its state moves to the model's device on next step
        est._optimizer = schedule
    return est
