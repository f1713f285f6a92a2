"""The machinery MLPClassifier and MLPRegressor share: fit (stochastic and L-BFGS), prediction,
pickling, checkpoints and the bridge to :class:`gpunn.Sequential`.

It follows scikit-learn 1.9's ``sklearn/neural_network/_multilayer_perceptron.py`` step by step
(the same parameter checks, the same random draws from ``random_state`` in the same order, the
same stopping rules, attributes, warnings and error messages), with the arithmetic done by gpunn:
the network is a ``Sequential`` of ``Dense`` layers and activations on the chosen backend, the
losses are gpunn's (with per-sample weights), the L2 penalty is :mod:`gpunn.regularization`,
and the stochastic solvers are gpunn's SGD and Adam (:mod:`._optim`).

Training keeps the data on the device and reads one number per epoch (the epoch's loss; with
early stopping also the validation predictions). L-BFGS runs in SciPy on the host in float64:
each function evaluation copies the parameters to the device and the loss and gradient back,
one transfer each way, which is inherent to using SciPy's optimizer.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from itertools import pairwise
from numbers import Integral, Real
from typing import Any

import numpy as np
import scipy.optimize
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state, shuffle
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.fixes import _get_additional_lbfgs_options_dict
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import (
    _check_feature_names,
    _check_n_features,
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from gpunn.backend import Backend, get_backend, namespace
from gpunn.math.activations import relu_forward, sigmoid_forward, tanh_forward
from gpunn.math.dense import dense_forward
from gpunn.math.losses import l2_penalty_backward, l2_penalty_forward
from gpunn.model import Sequential
from gpunn.nn.activations import ReLU, Sigmoid, Tanh
from gpunn.nn.dense import Dense
from gpunn.nn.layer import Array, Layer
from gpunn.sklearn._data import (
    TrainingData,
    chunk_rows,
    device_scope,
    is_device_array,
    row_chunks,
)
from gpunn.sklearn._objective import OBJECTIVES
from gpunn.sklearn._optim import StochasticOptimizer
from gpunn.sklearn._persist import load as load_estimator
from gpunn.sklearn._persist import save as save_estimator

__all__ = ["ACTIVATIONS", "BaseMLP"]

_STOCHASTIC_SOLVERS = ("sgd", "adam")

#: scikit-learn's hidden activations -> gpunn layer classes ('identity': no layer at all)
ACTIVATIONS: dict[str, type[Layer] | None] = {
    "identity": None,
    "logistic": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
}
_ACTIVATION_NAMES = {cls: name for name, cls in ACTIVATIONS.items() if cls is not None}
_ACTIVATION_FORWARD = {"ReLU": relu_forward, "Sigmoid": sigmoid_forward, "Tanh": tanh_forward}

_NON_FINITE_WEIGHTS = (
    "Solver produced non-finite parameter weights. The input data may"
    " contain large values and need to be preprocessed."
)


class BaseMLP(BaseEstimator):
    """Base class of :class:`gpunn.sklearn.MLPClassifier` and :class:`MLPRegressor`."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "backend": [str, Backend],
        "dtype": [StrOptions({"float32", "float64"})],
    }

    # set by the subclasses' __init__ (scikit-learn needs explicit signatures there)
    loss: str
    hidden_layer_sizes: Any
    activation: str
    solver: str
    alpha: float
    batch_size: Any
    learning_rate: str
    learning_rate_init: float
    power_t: float
    max_iter: int
    shuffle: bool
    random_state: Any
    tol: float
    verbose: Any
    warm_start: bool
    momentum: float
    nesterovs_momentum: bool
    early_stopping: bool
    validation_fraction: float
    beta_1: float
    beta_2: float
    epsilon: float
    n_iter_no_change: Any
    max_fun: int
    backend: Any
    dtype: str

    # ------------------------------------------------------------------------------------------
    # Subclass hooks
    # ------------------------------------------------------------------------------------------
    def _validate_input(self, X: Any, y: Any, incremental: bool, reset: bool) -> tuple[Any, Any]:
        """(X, Y) checked, with Y (N,) or (N, K) as scikit-learn trains on it."""
        raise NotImplementedError

    def _out_activation(self) -> str:
        raise NotImplementedError

    def _training_targets(self, Y: Any, xp: Any) -> Any:
        """Y as the objective wants it: class indices (softmax) or numbers (N, K)."""
        return Y if Y.ndim == 2 else Y.reshape(-1, 1)

    def _score_validation(self, outputs: Any, y_val: Any, sample_weight: Any) -> float:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------
    # Fit
    # ------------------------------------------------------------------------------------------
    def _fit(self, X: Any, y: Any, sample_weight: Any = None, incremental: bool = False) -> Any:
        hidden_layer_sizes = self.hidden_layer_sizes
        if not hasattr(hidden_layer_sizes, "__iter__"):
            hidden_layer_sizes = [hidden_layer_sizes]
        hidden_layer_sizes = list(hidden_layer_sizes)
        if np.any(np.array(hidden_layer_sizes) <= 0):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {hidden_layer_sizes}.")
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)

        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        n_samples, n_features = X.shape
        if sample_weight is not None:
            sample_weight = self._check_sample_weight(sample_weight, X)
        n_outputs = 1 if Y.ndim == 1 else Y.shape[1]
        self.n_outputs_ = n_outputs
        layer_units = [n_features, *hidden_layer_sizes, n_outputs]

        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(layer_units, self._fit_backend(X))
        else:
            self._ensure_model()
        self._check_architecture(layer_units)

        model = self._model
        xp = model.xp
        with device_scope(model.backend):
            targets = self._training_targets(Y, namespace(Y))
            data = TrainingData(
                model.backend,
                X,
                targets,
                sample_weight,
                dtype=model.dtype,
                y_dtype=xp.int64 if self._objective.integer_targets else model.dtype,
            )
            if self.solver in _STOCHASTIC_SOLVERS:
                self._fit_stochastic(data, Y, incremental)
            else:
                self._fit_lbfgs(data)

        flat = self._publish_weights()  # the weights' one trip to the host (none on NumPy)
        if not np.isfinite(flat).all():
            raise ValueError(_NON_FINITE_WEIGHTS)
        return self

    def _check_sample_weight(self, sample_weight: Any, X: Any) -> Any:
        """Sample weights (N,) as scikit-learn checks them; CuPy weights stay on the device."""
        if not is_device_array(sample_weight) and not is_device_array(X):
            return _check_sample_weight(sample_weight, X)
        xp = namespace(sample_weight) if is_device_array(sample_weight) else namespace(X)
        w = xp.asarray(sample_weight)
        if w.ndim == 0:
            w = xp.full(X.shape[0], float(w))
        if w.ndim != 1 or w.shape[0] != X.shape[0]:
            raise ValueError(
                f"sample_weight.shape == {w.shape}, expected {(X.shape[0],)}!"
                if w.ndim == 1
                else "Sample weights must be 1D array or scalar"
            )
        w = w.astype(xp.float64 if w.dtype.kind != "f" else w.dtype, copy=False)
        if not bool(xp.isfinite(w).all()):
            raise ValueError("Input sample_weight contains NaN or infinity.")
        if not bool((w != 0).any()):
            raise ValueError("Sample weights must contain at least one non-zero number.")
        return w

    def _fit_backend(self, X: Any) -> Backend:
        """The backend for a first fit: ``backend``; "auto" with a CuPy X is X's device."""
        spec = self.backend
        if isinstance(spec, str) and spec.strip().lower() == "auto" and is_device_array(X):
            spec = f"cupy:{X.device.id}"
        return get_backend(spec)

    def _initialize(self, layer_units: list[int], backend: Backend) -> None:
        """First fit: attributes, scikit-learn's initial weights, the gpunn model."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._out_activation()
        self._objective = OBJECTIVES[self.out_activation_]()
        weights = []
        for fan_in, fan_out in pairwise(layer_units):  # the draws scikit-learn makes, in order
            weights.append(self._init_coef(fan_in, fan_out))
        with device_scope(backend):
            self._model = self._build_model(layer_units, backend, self.dtype)
            self._set_weights(weights)
            self._best_params = self._model.flat_params.copy()  # device copy (early stopping)
        # the coefs_ / intercepts_ of an earlier fit no longer describe the model; they are
        # published at the end of this fit (on a GPU that is a transfer, so not also here)
        self._published = None
        for name in ("coefs_", "intercepts_"):
            self.__dict__.pop(name, None)
        if self.solver in _STOCHASTIC_SOLVERS:
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _init_coef(self, fan_in: int, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
        """Glorot uniform (factor 6, or 2 for logistic) for W and b, from ``_random_state``."""
        factor = 2.0 if self.activation == "logistic" else 6.0
        bound = np.sqrt(factor / (fan_in + fan_out))
        coef = self._random_state.uniform(-bound, bound, (fan_in, fan_out))
        intercept = self._random_state.uniform(-bound, bound, fan_out)
        return coef, intercept

    def _build_model(self, layer_units: list[int], backend: Backend, dtype: str) -> Sequential:
        """Dense layers with the hidden activation between them; the last has no activation
        (the objective applies softmax / logistic / identity / exp to its logits)."""
        act = ACTIVATIONS[self.activation]
        layers: list[Layer] = []
        for i, (fan_in, fan_out) in enumerate(pairwise(layer_units)):
            layers.append(Dense(fan_in, fan_out))
            if act is not None and i < len(layer_units) - 2:
                layers.append(act())
        return Sequential(layers, backend=backend, dtype=dtype, seed=0)

    def _dense_keys(self, model: Sequential | None = None) -> list[int]:
        model = self._model if model is None else model
        return [i for i, layer in enumerate(model.layers) if isinstance(layer, Dense)]

    def _set_weights(self, weights: list[tuple[Any, Any]]) -> None:
        """Copy (W, b) pairs (host or device arrays) into the model's parameters."""
        model = self._model
        keys = self._dense_keys()
        if len(weights) != len(keys):
            raise ValueError(f"the network has {len(keys)} layers, got {len(weights)} (W, b)")
        for i, (W, b) in zip(keys, weights, strict=True):
            for name, value in (("W", W), ("b", b)):
                target = model.params[f"{i}.{name}"]
                value = model.backend.asarray(value, dtype=model.dtype)
                if value.shape != target.shape:
                    kind = "coefs_" if name == "W" else "intercepts_"
                    raise ValueError(
                        f"{kind}[{keys.index(i)}] has shape {value.shape}, the network's is "
                        f"{target.shape}"
                    )
                target[...] = value

    def _check_architecture(self, layer_units: list[int]) -> None:
        """A warm start / partial_fit must see the widths the model was built with."""
        have = [self._model.layers[i].in_features for i in self._dense_keys()]
        have.append(self._model.out_features)
        if have != layer_units:
            raise ValueError(
                f"the network has layer sizes {have}; this data and hidden_layer_sizes need "
                f"{layer_units} (warm_start and partial_fit keep the first fit's network)"
            )

    def _weights(self) -> list[Array]:
        return [self._model.params[f"{i}.W"] for i in self._dense_keys()]

    def _weight_grads(self) -> list[Array]:
        return [self._model.grads[f"{i}.W"] for i in self._dense_keys()]

    # --- one mini-batch: loss (0-d, on the device) and gradients in model.flat_grads ----------
    def _loss_and_grads(self, xb: Array, yb: Array, wb: Array | None, sw: Any) -> Array:
        """scikit-learn's batch loss (data loss + L2 penalty) and its gradient, on the device.

        ``sw`` is the batch's number of samples, or its sum of weights.
        """
        model = self._model
        logits = model.forward(xb)  # (B, n_outputs)
        loss = self._objective.forward(logits, yb, wb)  # weighted mean over the batch
        model.backward(self._objective.backward())
        if self.alpha:
            weights, grads, work = self._l2_buffers()
            xp = model.xp
            l2_penalty_backward(weights, grads, alpha=self.alpha, n=sw, xp=xp, work=work)
            loss = loss + l2_penalty_forward(weights, alpha=self.alpha, n=sw, xp=xp)
        return loss

    def _l2_buffers(self) -> tuple[list[Array], list[Array], list[Array]]:
        """The model's weight matrices, their gradients and one workspace each, made once per
        model (the views stay valid: parameters live in the model's flat buffers)."""
        cached = getattr(self, "_l2_cache", None)
        if cached is None or cached[0] is not self._model:
            model = self._model
            with device_scope(model.backend):
                work = [model.xp.empty_like(W) for W in self._weights()]
            cached = (model, self._weights(), self._weight_grads(), work)
            self._l2_cache = cached
        return cached[1], cached[2], cached[3]

    # --- stochastic solvers -------------------------------------------------------------------
    def _fit_stochastic(self, data: TrainingData, Y: Any, incremental: bool) -> None:
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = StochasticOptimizer(
                self.solver,
                learning_rate_init=self.learning_rate_init,
                lr_schedule=self.learning_rate,
                momentum=self.momentum,
                nesterov=self.nesterovs_momentum,
                power_t=self.power_t,
                beta_1=self.beta_1,
                beta_2=self.beta_2,
                epsilon=self.epsilon,
            )
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        model, xp = self._model, self._model.xp
        early_stopping = self.early_stopping
        val = None
        if early_stopping:
            # don't stratify in multilabel classification; split row indices, as scikit-learn
            # splits X: the same draws from _random_state give the same rows
            Y_host = self._host_labels(Y)  # a transfer (once per fit) only for a CuPy y
            should_stratify = is_classifier(self) and self.n_outputs_ == 1
            stratify = Y_host if should_stratify else None
            train_rows, val_rows = train_test_split(
                np.arange(data.n),
                random_state=self._random_state,
                test_size=self.validation_fraction,
                stratify=stratify,
            )
            if len(val_rows) < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' "
                    "or the size of your dataset."
                )
            val = self._validation_set(data, Y_host, val_rows)
            data = data.subset(train_rows)

        n_samples = data.n
        sample_idx = np.arange(n_samples, dtype=int)
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than "
                    "sample size. It is going to be clipped",
                    stacklevel=3,
                )
            batch_size = int(np.clip(self.batch_size, 1, n_samples))

        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    # scikit-learn's draw: the order is reshuffled from the last epoch's order
                    sample_idx = shuffle(sample_idx, random_state=self._random_state)
                total = xp.zeros((), dtype=xp.float64)  # sum of batch loss * batch size
                order = sample_idx if self.shuffle else None
                for xb, yb, wb, nb in data.batches(order, batch_size):
                    sw = nb if wb is None else wb.sum()
                    total += self._loss_and_grads(xb, yb, wb, sw) * nb
                    self._optimizer.step(model)
                self.n_iter_ += 1
                self.loss_ = float(total) / n_samples  # the epoch's one host read
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")

                self._update_no_improvement_count(early_stopping, val)
                self._optimizer.iteration_ends(self.t_)

                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = (
                            f"Validation score did not improve more than tol={self.tol:f} "
                            f"for {self.n_iter_no_change} consecutive epochs."
                        )
                    else:
                        msg = (
                            f"Training loss did not improve more than tol={self.tol:f} "
                            f"for {self.n_iter_no_change} consecutive epochs."
                        )
                    if self._optimizer.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0

                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(
                        f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                        "reached and the optimization hasn't converged yet.",
                        ConvergenceWarning,
                        stacklevel=3,
                    )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)

        if early_stopping:  # restore the best weights (a device-to-device copy)
            model.flat_params[...] = self._best_params

    def _validation_set(
        self, data: TrainingData, Y_host: np.ndarray, rows: Any
    ) -> tuple[Any, Any, Any]:
        """(X_val on the device, y_val as score() takes it (host), w_val (host) or None)."""
        part = data.subset(rows)
        y_val = Y_host[rows]
        if is_classifier(self):
            y_val = self._label_binarizer.inverse_transform(y_val)
        w_val = None if data.w is None else data.backend.to_numpy(part.w)
        return part, y_val, w_val

    def _host_labels(self, Y: Any) -> np.ndarray:
        """Y as a host NumPy array (a transfer only when Y is a CuPy array)."""
        return Y.get() if is_device_array(Y) else np.asarray(Y)

    def _update_no_improvement_count(self, early_stopping: bool, val: Any) -> None:
        if early_stopping:
            part, y_val, w_val = val
            outputs = self._predict_outputs(part)  # host, in the model's dtype
            if np.issubdtype(outputs.dtype, np.floating) and not np.isfinite(outputs).all():
                val_score = np.nan
            else:
                val_score = self._score_validation(outputs, y_val, w_val)
            self.validation_scores_.append(val_score)
            if self.verbose:
                print(f"Validation score: {self.validation_scores_[-1]:f}")
            last_valid_score = self.validation_scores_[-1]
            if last_valid_score < (self.best_validation_score_ + self.tol):
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if last_valid_score > self.best_validation_score_:
                self.best_validation_score_ = last_valid_score
                self._best_params[...] = self._model.flat_params  # on the device
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    # --- L-BFGS ----------------------------------------------------------------------------------
    def _fit_lbfgs(self, data: TrainingData) -> None:
        model = self._model
        packed = model.backend.to_numpy(model.flat_params).astype(np.float64)
        iprint = 1 if (self.verbose is True or self.verbose >= 1) else -1
        one_pass = data.on_device and data.n <= chunk_rows(data.X.shape[1])
        accumulate = None if one_pass else model.xp.zeros_like(model.flat_grads)
        opt_res = scipy.optimize.minimize(
            self._loss_grad_lbfgs,
            packed,
            method="L-BFGS-B",
            jac=True,
            options={
                "maxfun": self.max_fun,
                "maxiter": self.max_iter,
                "gtol": self.tol,
                **_get_additional_lbfgs_options_dict("iprint", iprint),
            },
            args=(data, accumulate),
        )
        self.n_iter_ = _check_optimize_result("lbfgs", opt_res, self.max_iter)
        self.loss_ = float(opt_res.fun)
        model.flat_params[...] = model.backend.asarray(opt_res.x, dtype=model.dtype)

    def _loss_grad_lbfgs(
        self, packed: np.ndarray, data: TrainingData, accumulate: Array | None
    ) -> tuple[float, np.ndarray]:
        """Full-batch loss and gradient at ``packed`` (host float64), for SciPy.

        The flat buffer's alignment padding stays 0 and its gradient is 0, so L-BFGS (whose
        steps are combinations of gradients) never moves it. One transfer each way.
        """
        model = self._model
        xp = model.xp
        model.flat_params[...] = model.backend.asarray(packed, dtype=model.dtype)
        total_sw = data.weight_sum()
        if accumulate is None:  # all rows at once, on the device
            loss = self._loss_and_grads(data.X, data.Y, data.w, total_sw)
            grads = model.flat_grads
        else:  # a chunk of rows at a time (host-resident X is densified chunk by chunk)
            accumulate[...] = 0
            loss = xp.zeros((), dtype=xp.float64)
            for s in row_chunks(data.n, chunk_rows(data.X.shape[1])):
                wb = None if data.w is None else data.w[s]
                part = (s.stop - s.start) if wb is None else wb.sum()
                share = part / total_sw  # the chunk's share of the weighted mean
                logits = model.forward(data.X[s] if data.on_device else data.host_rows(s))
                loss = loss + self._objective.forward(logits, data.Y[s], wb) * share
                model.backward(self._objective.backward())
                accumulate += model.flat_grads * share
            if self.alpha:
                weights = self._weights()
                views = [accumulate[self._offset(i)] for i in self._dense_keys()]
                views = [v.reshape(W.shape) for v, W in zip(views, weights, strict=True)]
                l2_penalty_backward(weights, views, alpha=self.alpha, n=total_sw, xp=xp)
                loss = loss + l2_penalty_forward(weights, alpha=self.alpha, n=total_sw, xp=xp)
            grads = accumulate
        loss = xp.asarray(loss, dtype=xp.float64).reshape(1)
        both = xp.concatenate([loss, grads.astype(xp.float64)])  # float64, as SciPy needs
        host = model.backend.to_numpy(both).astype(np.float64)  # one transfer back
        return float(host[0]), host[1:]

    def _offset(self, i: int) -> slice:
        start, shape = self._model.layout[f"{i}.W"]
        return slice(start, start + int(np.prod(shape)))

    # ------------------------------------------------------------------------------------------
    # Prediction
    # ------------------------------------------------------------------------------------------
    def _validate_predict_X(self, X: Any) -> Any:
        """X checked against the fit (features, names, finiteness); CuPy X stays on the device."""
        if is_device_array(X):
            return self._check_device_X(X, reset=False)
        return validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)

    def _check_device_X(self, X: Any, *, reset: bool) -> Any:
        """scikit-learn's checks of X (validate_data's, with its messages) for a CuPy array."""
        xp = namespace(X)
        if X.ndim != 2:
            raise ValueError(
                f"Expected 2D array, got {X.ndim}D array instead:\narray={X}.\n"
                "Reshape your data either using array.reshape(-1, 1) if "
                "your data has a single feature or array.reshape(1, -1) "
                "if it contains a single sample."
            )
        if X.dtype.kind not in "biuf":
            raise ValueError(f"dtype='numeric' is not compatible with arrays of dtype {X.dtype}")
        if X.shape[0] < 1:
            raise ValueError(
                f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is "
                f"required by {type(self).__name__}."
            )
        if X.shape[1] < 1:
            raise ValueError(
                f"Found array with 0 feature(s) (shape={X.shape}) while a minimum of 1 is "
                f"required by {type(self).__name__}."
            )
        if X.dtype.kind == "f":
            if not bool(xp.isfinite(X).all()):  # one read when X is finite
                if bool(xp.isnan(X).any()):
                    raise ValueError(
                        f"Input X contains NaN.\n{type(self).__name__} does not accept "
                        "missing values encoded as NaN natively."
                    )
                raise ValueError(f"Input X contains infinity or a value too large for {X.dtype!r}.")
        else:
            X = X.astype(xp.float64)
        _check_n_features(self, X, reset=reset)
        _check_feature_names(self, X, reset=reset)
        return X

    def _forward_outputs(self, X: Any) -> Array:
        """Output activations (N, n_outputs) for checked X, on the model's backend.

        Computed in X's floating precision (float64 for integer X), as scikit-learn computes
        its predictions: in the model's dtype through the model itself, in another one through
        the same forward functions over the weights converted once per call.
        """
        self._ensure_model()
        model = self._model
        xp, backend = model.xp, model.backend
        kind = X.dtype.kind if hasattr(X, "dtype") else "f"
        dtype = xp.dtype(X.dtype.name if kind == "f" else "float64")
        with device_scope(backend):
            forward = model.forward if dtype == model.dtype else self._converted_forward(dtype)
            sparse = hasattr(X, "toarray")
            out = xp.empty((X.shape[0], self.n_outputs_), dtype=dtype)
            for s in row_chunks(X.shape[0], chunk_rows(X.shape[1])):
                block = X[s].toarray() if sparse else X[s]
                logits = forward(backend.asarray(block, dtype=dtype), training=False)
                out[s] = self._objective.activate(logits, xp=xp)
        return out

    def _converted_forward(self, dtype: Any) -> Any:
        """``forward(x)`` of the network with its weights converted to ``dtype``."""
        model = self._model
        xp = model.xp
        params = {key: value.astype(dtype) for key, value in model.params.items()}
        steps: list[tuple[Any, tuple[Any, ...]]] = []
        for i, layer in enumerate(model.layers):
            if isinstance(layer, Dense):
                steps.append((dense_forward, (params[f"{i}.W"], params[f"{i}.b"])))
            else:
                steps.append((_ACTIVATION_FORWARD[layer.kind], ()))

        def forward(x: Array, training: bool = False) -> Array:
            for function, args in steps:
                x = function(x, *args, xp=xp)  # dense_forward(x, W, b) or act_forward(x)
            return x

        return forward

    def _predict_outputs(self, part: TrainingData) -> np.ndarray:
        """Host output activations for the (device) validation rows of early stopping."""
        return self._model.backend.to_numpy(self._forward_outputs(part.X))

    def _to_input_library(self, a: Array, X: Any) -> Any:
        """``a`` in X's array library: CuPy for a CuPy X, else a host NumPy array."""
        if is_device_array(X):
            return namespace(X).asarray(a)
        return self._model.backend.to_numpy(a)

    # ------------------------------------------------------------------------------------------
    # Attributes scikit-learn documents, kept in step with the model
    # ------------------------------------------------------------------------------------------
    def _publish_weights(self) -> np.ndarray:
        """Set coefs_ / intercepts_ (NumPy arrays) from the model; return the host flat buffer.

        On the NumPy backend they are views of the model's parameters (always current, in-place
        edits included). On a GPU they are views of one host copy of the flat buffer, made once
        per fit (one transfer); in-place edits of those do not reach the GPU, arrays assigned
        into the lists do (see :meth:`_ensure_model`).
        """
        model = self._model
        flat = model.backend.to_numpy(model.flat_params)  # the model's own buffer on NumPy
        views = {}
        for key, (start, shape) in model.layout.items():
            views[key] = flat[start : start + int(np.prod(shape))].reshape(shape)
        keys = self._dense_keys()
        self.coefs_ = [views[f"{i}.W"] for i in keys]
        self.intercepts_ = [views[f"{i}.b"] for i in keys]
        self._published = (self.coefs_, self.intercepts_, [*self.coefs_, *self.intercepts_])
        return flat

    def _ensure_model(self) -> None:
        """Make sure the gpunn model exists and holds the weights ``coefs_`` / ``intercepts_``
        show: rebuilt after unpickling (on the backend the rules give now), built from weights
        assigned to an unfitted estimator (as scikit-learn allows), or updated when arrays
        were assigned into ``coefs_`` / ``intercepts_``."""
        if getattr(self, "_model", None) is None:
            saved = getattr(self, "_saved_model", None)
            if saved is not None:
                backend = get_backend(saved["backend"])  # BackendUnavailableError without GPU
                with device_scope(backend):
                    model = self._build_model(saved["layer_units"], backend, saved["dtype"])
                    model.load_state_dict(saved["params"])
                    best = saved.get("best_params")
                    self._best_params = (
                        model.flat_params.copy() if best is None else backend.asarray(best)
                    )
                self._model = model
                del self._saved_model
            elif hasattr(self, "coefs_") and hasattr(self, "intercepts_"):
                layer_units = [np.shape(c)[0] for c in self.coefs_]
                layer_units.append(np.shape(self.coefs_[-1])[1])
                backend = get_backend(self.backend)
                with device_scope(backend):
                    self._model = self._build_model(layer_units, backend, self.dtype)
                    self._set_weights(list(zip(self.coefs_, self.intercepts_, strict=True)))
                    self._best_params = self._model.flat_params.copy()
            else:
                check_is_fitted(self)  # NotFittedError
            self._objective = OBJECTIVES[self.out_activation_]()
            self._publish_weights()
            return
        published = getattr(self, "_published", None)
        if published is None:  # in the middle of a first fit: nothing published yet
            return
        arrays = [*self.coefs_, *self.intercepts_]
        if (
            self.coefs_ is not published[0]
            or self.intercepts_ is not published[1]
            or len(arrays) != len(published[2])
            or any(a is not b for a, b in zip(arrays, published[2], strict=True))
        ):  # arrays were assigned: copy them into the model
            self._set_weights(list(zip(self.coefs_, self.intercepts_, strict=True)))
            self._publish_weights()

    # ------------------------------------------------------------------------------------------
    # Pickling: host NumPy arrays only, no backend objects
    # ------------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        if getattr(self, "_model", None) is not None:
            self._ensure_model()  # weights assigned into coefs_ are part of the state
        state = dict(super().__getstate__())  # object.__getstate__ gives the live __dict__
        model = state.pop("_model", None)
        for name in ("_objective", "_published", "_l2_cache"):
            state.pop(name, None)  # rebuilt; they hold device arrays (and the model)
        best = state.pop("_best_params", None)
        if model is not None:
            layer_units = [model.layers[i].in_features for i in self._dense_keys(model)]
            state["_saved_model"] = {
                "layer_units": [*layer_units, model.out_features],
                "dtype": model.dtype.name,
                "backend": self._unpickle_backend_spec(),
                "params": model.state_dict(),  # host copies
                "best_params": None if best is None else model.backend.to_numpy(best).copy(),
            }
            state.pop("coefs_", None)  # rebuilt from the parameters
            state.pop("intercepts_", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._model = None
        if "_saved_model" in state:
            try:
                self._ensure_model()
            except Exception as exc:  # e.g. backend="cupy" on a machine without a GPU
                self._unpickle_error = f"{type(exc).__name__}: {exc}"
                # coefs_ / intercepts_ from the host copies, so the attributes still exist
                saved = self._saved_model
                keys = sorted({k.split(".")[0] for k in saved["params"]}, key=int)
                self.coefs_ = [saved["params"][f"{k}.W"] for k in keys]
                self.intercepts_ = [saved["params"][f"{k}.b"] for k in keys]

    def _unpickle_backend_spec(self) -> Any:
        """What an unpickled copy asks for: the ``backend`` parameter ("auto" falls back to
        NumPy with gpunn's one warning; an explicit "cupy" raises when used without a GPU)."""
        spec = self.backend
        return spec.spec if isinstance(spec, Backend) else spec

    # ------------------------------------------------------------------------------------------
    # gpunn checkpoints and the bridge to Sequential
    # ------------------------------------------------------------------------------------------
    def to_sequential(self, backend: str | Backend | None = None) -> Sequential:
        """A copy of the trained network as a :class:`gpunn.Sequential` (outputs are logits:
        apply softmax / sigmoid / exp, or train it further with gpunn's losses)."""
        check_is_fitted(self)
        self._ensure_model()
        return self._model.to(backend if backend is not None else self._model.backend)

    def save(self, path: str | os.PathLike[str]) -> pathlib.Path:
        """Write the fitted estimator to a gpunn checkpoint (safetensors, no pickle).

        ``gpunn.sklearn.load(path)`` gives the estimator back; ``gpunn.load(path)`` gives the
        network as a ``Sequential``.
        """
        return save_estimator(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], backend: str | Backend | None = None) -> Any:
        """The estimator saved at ``path`` by :meth:`save` (on ``backend``; None: its own)."""
        return load_estimator(path, {cls.__name__: cls}, backend=backend)

    def _adopt_sequential(self, model: Sequential, n_outputs: int) -> None:
        """Take ``model`` (Dense/activation layers) as this estimator's fitted network."""
        dense = [layer for layer in model.layers if isinstance(layer, Dense)]
        acts = {type(layer) for layer in model.layers if not isinstance(layer, Dense)}
        if not dense or not isinstance(model.layers[-1], Dense) or len(acts) > 1:
            raise ValueError(
                "from_sequential needs Dense layers with one kind of activation (ReLU, Tanh, "
                "Sigmoid) between them, or none, ending with a Dense layer; got "
                f"{model!r}"
            )
        act = next(iter(acts), None)
        if act is not None and act not in _ACTIVATION_NAMES:
            raise ValueError(f"activation {act.__name__} has no scikit-learn counterpart")
        expected = []
        for i, layer in enumerate(dense):
            expected.append(layer)
            if act is not None and i < len(dense) - 1:
                expected.append(None)
        if len(expected) != len(model.layers):
            raise ValueError(
                f"from_sequential needs one activation after each hidden Dense layer: {model!r}"
            )
        if model.out_features != n_outputs:
            raise ValueError(
                f"the network has {model.out_features} outputs; {n_outputs} are needed here"
            )
        self.activation = "identity" if act is None else _ACTIVATION_NAMES[act]
        self.hidden_layer_sizes = tuple(layer.out_features for layer in dense[:-1])
        self.dtype = model.dtype.name
        self._model = model.to(model.backend)
        self.n_features_in_ = dense[0].in_features
        self.n_layers_ = len(dense) + 1
        self.n_outputs_ = n_outputs
        self.n_iter_ = 0
        self.t_ = 0
        self.out_activation_ = self._out_activation()
        self._objective = OBJECTIVES[self.out_activation_]()
        self._best_params = self._model.flat_params.copy()
        if self.solver in _STOCHASTIC_SOLVERS:
            self.loss_curve_ = []
            self._no_improvement_count = 0
            self.best_loss_ = None if self.early_stopping else np.inf
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_validation_score_ = -np.inf if self.early_stopping else None
        self._publish_weights()

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
