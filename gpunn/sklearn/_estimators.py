"""``MLPClassifier`` and ``MLPRegressor``: scikit-learn's estimators, trained by gpunn.

Constructor parameters, defaults, fitted attributes, warnings and errors are scikit-learn 1.9's
(``sklearn.neural_network``); two parameters are gpunn's own:

* ``backend``: ``"auto"`` (a GPU when CuPy can use one, else NumPy with one warning; a CuPy
  input selects its own device), ``"numpy"``, ``"cupy"`` or ``"cupy:N"`` (see gpunn's rules).
* ``dtype``: the precision the network is trained in, ``"float32"`` (default: fast on CPUs and
  GPUs) or ``"float64"`` (scikit-learn's precision for float64 data). Predictions are computed
  in the input's precision, as scikit-learn computes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin, _fit_context
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from gpunn.backend import Backend, namespace
from gpunn.model import Sequential
from gpunn.sklearn._base import _STOCHASTIC_SOLVERS, BaseMLP
from gpunn.sklearn._data import is_device_array

__all__ = ["MLPClassifier", "MLPRegressor"]


def _stochastic(est: BaseMLP) -> bool:
    """partial_fit exists for the stochastic solvers only (scikit-learn's ``_check_solver``)."""
    if est.solver not in _STOCHASTIC_SOLVERS:
        raise AttributeError(
            f"partial_fit is only available for stochastic optimizers. {est.solver} is not "
            "stochastic."
        )
    return True


class MLPClassifier(ClassifierMixin, BaseMLP):
    """Multi-layer perceptron classifier (log-loss), trained by gpunn on NumPy or CuPy.

    A drop-in for ``sklearn.neural_network.MLPClassifier`` with the same parameters, plus
    ``backend`` and ``dtype`` (module docstring). Binary, multiclass (softmax) and multilabel
    (one sigmoid per label) targets; ``classes_``, ``coefs_``, ``intercepts_`` (NumPy arrays),
    ``loss_``, ``best_loss_``, ``loss_curve_``, ``validation_scores_``,
    ``best_validation_score_``, ``n_iter_``, ``t_``, ``n_layers_``, ``n_outputs_``,
    ``out_activation_``, ``n_features_in_``, ``feature_names_in_`` as scikit-learn documents them.
    """

    def __init__(
        self,
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: Any = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        verbose: Any = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: Any = 10,
        max_fun: int = 15000,
        backend: str | Backend = "auto",
        dtype: str = "float32",
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.dtype = dtype

    @property
    def loss(self) -> str:
        """scikit-learn's MLPClassifier always minimises the log-loss."""
        return "log_loss"

    # --- fit ----------------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPClassifier:
        """Fit the model to X (N, D) and class labels y (N,) or a label indicator (N, K)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @available_if(_stochastic)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(
        self, X: Any, y: Any, sample_weight: Any = None, classes: Any = None
    ) -> MLPClassifier:
        """One epoch over X, y; ``classes`` (all labels) is required on the first call."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if is_device_array(y):
                if y.ndim == 2 and y.shape[1] > 1:
                    self._label_binarizer.fit(np.eye(y.shape[1], dtype=int))
                else:
                    self._label_binarizer.fit(classes)
            elif type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def _validate_input(self, X: Any, y: Any, incremental: bool, reset: bool) -> tuple[Any, Any]:
        if is_device_array(X) or is_device_array(y):
            return self._validate_device_input(X, y, incremental, reset)
        X, y = validate_data(
            self,
            X,
            y,
            accept_sparse=["csr", "csc"],
            multi_output=True,
            dtype=(np.float64, np.float32),
            reset=reset,
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        self._check_classes(unique_labels(y), y, incremental)
        # (N, K) 0/1 indicator, bool as in scikit-learn (no upcast for float32 data)
        Y = self._label_binarizer.transform(y).astype(bool)
        return X, Y

    def _check_classes(self, classes: Any, y: Any, incremental: bool) -> None:
        """Fit the label binarizer (first fit) or check y's classes against it."""
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same "
                        "classes as in the previous call to fit. Previously "
                        f"got {self.classes_}, `y` has {classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    "`y` has classes not in `self.classes_`. "
                    f"`self.classes_` has {self.classes_}. 'y' has {classes}."
                )

    def _validate_device_input(
        self, X: Any, y: Any, incremental: bool, reset: bool
    ) -> tuple[Any, Any]:
        """The CuPy path: X and y stay on the device; only the K class labels are read."""
        xp = namespace(X) if is_device_array(X) else namespace(y)
        X = self._check_device_X(xp.asarray(X), reset=reset)
        y = xp.asarray(y)
        if y.shape[0] != X.shape[0]:
            raise ValueError(
                "Found input variables with inconsistent numbers of samples: "
                f"[{X.shape[0]}, {y.shape[0]}]"
            )
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.reshape(-1)
        if y.dtype.kind == "f" and not bool(xp.isfinite(y).all()):
            raise ValueError("Input y contains NaN or infinity.")
        if y.ndim == 2:  # label indicator (N, K)
            if not bool(((y == 0) | (y == 1)).all()):
                raise ValueError("Unknown label type: a 2-D y must be a 0/1 label indicator")
            classes = np.arange(y.shape[1])
            self._check_classes(classes, np.eye(y.shape[1], dtype=int), incremental)
            return X, y.astype(bool)
        if y.dtype.kind == "f" and bool((y != xp.floor(y)).any()):
            raise ValueError(
                "Unknown label type: continuous. Maybe you are trying to fit a "
                "classifier, which expects discrete classes on a regression target "
                "with continuous values."
            )
        classes = xp.unique(y).get()  # the K labels: the one read
        self._check_classes(classes, classes, incremental)
        known = xp.asarray(self.classes_)
        index = xp.searchsorted(known, y)  # (N,) class ids, on the device
        if len(self.classes_) <= 2:  # binary: one 0/1 column for the positive class
            Y = (index == len(self.classes_) - 1).reshape(-1, 1)
            if len(self.classes_) == 1:
                Y = xp.zeros((X.shape[0], 1), dtype=bool)
        else:
            Y = xp.zeros((X.shape[0], len(self.classes_)), dtype=bool)
            Y[xp.arange(X.shape[0]), index] = True
        return X, Y

    def _out_activation(self) -> str:
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _training_targets(self, Y: Any, xp: Any) -> Any:
        if self.out_activation_ == "softmax":
            return Y.argmax(axis=1)  # one-hot (N, K) -> class ids (N,)
        return Y if Y.ndim == 2 else Y.reshape(-1, 1)

    def _score_validation(self, outputs: Any, y_val: Any, sample_weight: Any) -> float:
        return accuracy_score(y_val, self._labels(outputs), sample_weight=sample_weight)

    # --- predict --------------------------------------------------------------------------------
    def _labels(self, outputs: Any) -> Any:
        """Labels from output activations (host), exactly as scikit-learn's inverse_transform."""
        if self.n_outputs_ == 1:
            outputs = outputs.ravel()
        return self._label_binarizer.inverse_transform(outputs)

    def _device_labels(self, outputs: Any, xp: Any) -> Any:
        """The same rule on the device: argmax (multiclass), > 0.5 (binary, multilabel)."""
        lb = self._label_binarizer
        if lb.y_type_ == "multilabel-indicator":
            return (outputs > 0.5).astype(xp.int64)
        if lb.y_type_ == "multiclass":
            ids = outputs.argmax(axis=1)
        else:
            ids = (outputs.ravel() > 0.5).astype(xp.int64)
        if self.classes_.dtype.kind not in "biuf":
            return self.classes_[ids.get()]  # labels CuPy cannot hold: a host array
        return xp.asarray(self.classes_).take(ids)

    def predict(self, X: Any) -> Any:
        """Class labels (N,) (or a label indicator (N, K) for multilabel)."""
        check_is_fitted(self)
        X = self._validate_predict_X(X)
        outputs = self._forward_outputs(X)
        if is_device_array(X):
            return self._device_labels(namespace(X).asarray(outputs), namespace(X))
        return self._labels(self._model.backend.to_numpy(outputs))

    def predict_proba(self, X: Any) -> Any:
        """Probabilities (N, n_classes), ordered as ``classes_``."""
        check_is_fitted(self)
        X = self._validate_predict_X(X)
        outputs = self._forward_outputs(X)
        xp = self._model.xp
        if self.n_outputs_ == 1:
            p = outputs.ravel()
            outputs = xp.stack([1 - p, p], axis=1)
        return self._to_input_library(outputs, X)

    def predict_log_proba(self, X: Any) -> Any:
        """log(predict_proba(X))."""
        y_prob = self.predict_proba(X)
        xp = namespace(y_prob)
        return xp.log(y_prob, out=y_prob)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy (exact match for multilabel); computed on the device for CuPy X."""
        if not is_device_array(X):
            return super().score(X, y, sample_weight=sample_weight)
        xp = namespace(X)
        pred, y = self.predict(X), xp.asarray(y)
        hit = (pred == y).all(axis=1) if pred.ndim == 2 else pred == y.reshape(pred.shape)
        hit = hit.astype(xp.float64)
        if sample_weight is None:
            return float(hit.mean())
        w = xp.asarray(sample_weight, dtype=xp.float64)
        return float((hit * w).sum() / w.sum())

    # --- gpunn bridge -----------------------------------------------------------------------------
    @classmethod
    def from_sequential(
        cls, model: Sequential, classes: Any, *, multilabel: bool = False, **params: Any
    ) -> MLPClassifier:
        """A fitted classifier around a copy of ``model`` (logits out): ``classes`` are the
        labels (K outputs for K > 2 classes, 1 output for 2), or with ``multilabel`` K labels
        for K outputs. ``params`` are constructor parameters (for further training)."""
        est = cls(**params)
        lb = LabelBinarizer()
        classes = np.asarray(classes)
        if multilabel:
            lb.fit(np.eye(len(classes), dtype=int))
        else:
            lb.fit(classes)
        est._label_binarizer = lb
        est.classes_ = lb.classes_
        n_outputs = 1 if lb.y_type_ == "binary" else len(lb.classes_)
        est._adopt_sequential(model, n_outputs)
        return est

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, BaseMLP):
    """Multi-layer perceptron regressor (half squared error, or half Poisson deviance), trained
    by gpunn on NumPy or CuPy.

    A drop-in for ``sklearn.neural_network.MLPRegressor`` with the same parameters, plus
    ``backend`` and ``dtype`` (module docstring). Single- and multi-output targets.
    """

    _parameter_constraints: dict = {
        **BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(
        self,
        loss: str = "squared_error",
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: Any = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        verbose: Any = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: Any = 10,
        max_fun: int = 15000,
        backend: str | Backend = "auto",
        dtype: str = "float32",
    ) -> None:
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.dtype = dtype

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """Fit the model to X (N, D) and targets y (N,) or (N, K)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @available_if(_stochastic)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over X, y (continuing from the current weights and optimizer state)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def _validate_input(self, X: Any, y: Any, incremental: bool, reset: bool) -> tuple[Any, Any]:
        if is_device_array(X) or is_device_array(y):
            xp = namespace(X) if is_device_array(X) else namespace(y)
            X = self._check_device_X(xp.asarray(X), reset=reset)
            y = xp.asarray(y)
            if y.shape[0] != X.shape[0]:
                raise ValueError(
                    "Found input variables with inconsistent numbers of samples: "
                    f"[{X.shape[0]}, {y.shape[0]}]"
                )
            if y.ndim == 2 and y.shape[1] == 1:
                y = y.reshape(-1)
            y = y.astype(X.dtype if X.dtype.kind == "f" else xp.float64, copy=False)
            if not bool(xp.isfinite(y).all()):
                raise ValueError("Input y contains NaN.")
        else:
            X, y = validate_data(
                self,
                X,
                y,
                accept_sparse=["csr", "csc"],
                multi_output=True,
                y_numeric=True,
                dtype=(np.float64, np.float32),
                reset=reset,
            )
            if y.ndim == 2 and y.shape[1] == 1:
                y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and bool((namespace(y).asarray(y) < 0).any()):
            raise ValueError(
                "Some value(s) of y are negative which is not allowed for Poisson regression."
            )
        return X, y

    def _out_activation(self) -> str:
        return "exp" if self.loss == "poisson" else "identity"

    def _score_validation(self, outputs: Any, y_val: Any, sample_weight: Any) -> float:
        y_pred = outputs.ravel() if outputs.shape[1] == 1 else outputs
        return r2_score(y_val, y_pred, sample_weight=sample_weight)

    def predict(self, X: Any) -> Any:
        """Predicted values (N,) for one output, else (N, n_outputs)."""
        check_is_fitted(self)
        X = self._validate_predict_X(X)
        outputs = self._forward_outputs(X)
        if outputs.shape[1] == 1:
            outputs = outputs.ravel()
        return self._to_input_library(outputs, X)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """R^2 (uniform average over outputs); computed on the device for CuPy X."""
        if not is_device_array(X):
            return super().score(X, y, sample_weight=sample_weight)
        xp = namespace(X)
        pred = self.predict(X).astype(xp.float64)
        y = xp.asarray(y, dtype=xp.float64).reshape(pred.shape)
        pred, y = pred.reshape(pred.shape[0], -1), y.reshape(y.shape[0], -1)
        w = (
            xp.ones(y.shape[0])
            if sample_weight is None
            else xp.asarray(sample_weight, dtype=xp.float64)
        )
        w = w.reshape(-1, 1)
        mean = (w * y).sum(axis=0) / w.sum()
        num = (w * (y - pred) ** 2).sum(axis=0)
        den = (w * (y - mean) ** 2).sum(axis=0)
        # scikit-learn's force_finite: a constant target scores 1 if predicted exactly, else 0
        r2 = xp.where(den != 0, 1 - num / xp.where(den != 0, den, 1), xp.where(num == 0, 1.0, 0.0))
        return float(r2.mean())

    @classmethod
    def from_sequential(cls, model: Sequential, **params: Any) -> MLPRegressor:
        """A fitted regressor around a copy of ``model`` (its outputs are the predictions, or
        log-rates for ``loss="poisson"``). ``params`` are constructor parameters."""
        est = cls(**params)
        est._adopt_sequential(model, model.out_features)
        return est
