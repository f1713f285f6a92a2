"""Tests for gpunn.sklearn: scikit-learn's MLP semantics, trained by gpunn.

* float64 runs reproduce scikit-learn's own MLPClassifier/MLPRegressor (same initial weights,
  batches, updates, stopping) to rounding, solver by solver, and float32 runs come close;
* the estimators work inside scikit-learn (Pipeline, GridSearchCV and cross_val_score with
  processes, clone), with warm starts, early stopping, partial_fit, sample weights, sparse and
  pandas input, and give scikit-learn's errors;
* pickles hold host NumPy arrays only, checkpoints round-trip, the network moves to and from
  ``gpunn.Sequential``;
* CuPy input runs on the device-rule emulation of CuPy (gpunn.testing.fake_cupy: NumPy
  underneath, CuPy's device rules and host reads counted on top), and on a real GPU in the
  tests marked ``gpu``.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import warnings

import joblib
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn import neural_network
from sklearn.base import clone
from sklearn.datasets import load_digits, load_iris, make_multilabel_classification
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import gpunn
from gpunn import backend as backend_module
from gpunn.sklearn import MLPClassifier, MLPRegressor
from gpunn.testing import fake_cupy as emulation

X_IRIS, Y_IRIS = load_iris(return_X_y=True)
X_IRIS = StandardScaler().fit_transform(X_IRIS)
_digits = load_digits(n_class=4)
X_DIGITS, Y_DIGITS = _digits.data[:240] / 16, _digits.target[:240]
_rng = np.random.RandomState(0)
X_REG = _rng.standard_normal((120, 6))
Y_REG = np.c_[X_REG @ _rng.standard_normal(6), np.sin(X_REG[:, 0]) + X_REG[:, 1] ** 2]
X_ML, Y_ML = make_multilabel_classification(n_samples=80, n_features=8, random_state=0)


@pytest.fixture(autouse=True)
def _quiet_and_single_threaded():
    """Tiny problems: one BLAS thread (threads only add overhead); no ConvergenceWarning noise."""
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def sk_twin(est):
    """scikit-learn's own estimator with the same parameters (minus gpunn's two)."""
    params = {k: v for k, v in est.get_params().items() if k not in ("backend", "dtype")}
    return getattr(neural_network, type(est).__name__)(**params)


def assert_same_fit(ours, theirs, rtol=1e-9, atol=1e-10):
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.t_ == theirs.t_
    assert ours.out_activation_ == theirs.out_activation_
    assert ours.n_layers_ == theirs.n_layers_ and ours.n_outputs_ == theirs.n_outputs_
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=rtol)
    for a, b in zip(
        ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    for name in ("loss_curve_", "validation_scores_", "best_loss_", "best_validation_score_"):
        if hasattr(theirs, name) and getattr(theirs, name) is not None:
            np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=rtol)
        else:
            assert getattr(ours, name, None) is None


# ------------------------------------------------------------------------------------------
# Same numbers as scikit-learn (float64)
# ------------------------------------------------------------------------------------------

CLASSIFIER_CASES = {
    "adam-multiclass": (X_DIGITS, Y_DIGITS, {}),
    "adam-binary-logistic": (X_DIGITS, Y_DIGITS % 2, {"activation": "logistic"}),
    "adam-multilabel-tanh": (X_ML, Y_ML, {"activation": "tanh"}),
    "adam-string-labels-early-stopping": (
        X_IRIS,
        np.array(["setosa", "versicolor", "virginica"])[Y_IRIS],
        {"early_stopping": True, "validation_fraction": 0.2},
    ),
    "adam-binary-early-stopping-stratified": (
        X_IRIS,
        Y_IRIS == 2,
        {"early_stopping": True, "n_iter_no_change": 3},
    ),
    "sgd-nesterov": (X_DIGITS, Y_DIGITS, {"solver": "sgd", "learning_rate_init": 0.05}),
    "sgd-momentum-invscaling": (
        X_DIGITS,
        Y_DIGITS,
        {
            "solver": "sgd",
            "nesterovs_momentum": False,
            "learning_rate": "invscaling",
            "learning_rate_init": 0.5,
            "power_t": 0.3,
        },
    ),
    "sgd-adaptive": (
        X_IRIS,
        Y_IRIS,
        {"solver": "sgd", "learning_rate": "adaptive", "tol": 0.05, "n_iter_no_change": 2},
    ),
    "sgd-no-momentum-no-shuffle": (
        X_IRIS,
        Y_IRIS,
        {"solver": "sgd", "momentum": 0.0, "shuffle": False, "batch_size": 7},
    ),
    "lbfgs-multiclass": (X_DIGITS, Y_DIGITS, {"solver": "lbfgs"}),
    "lbfgs-identity-two-hidden": (
        X_IRIS,
        Y_IRIS,
        {"solver": "lbfgs", "activation": "identity", "hidden_layer_sizes": (6, 5)},
    ),
}


@pytest.mark.parametrize("case", sorted(CLASSIFIER_CASES))
def test_classifier_float64_reproduces_scikit_learn(case):
    X, y, params = CLASSIFIER_CASES[case]
    params = {"hidden_layer_sizes": (12,), "max_iter": 25, "random_state": 3, **params}
    ours = MLPClassifier(backend="numpy", dtype="float64", **params).fit(X, y)
    theirs = sk_twin(ours).fit(X, y)
    assert_same_fit(ours, theirs, rtol=1e-6 if params.get("solver") == "lbfgs" else 1e-9)
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-7)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))


REGRESSOR_CASES = {
    "adam-two-outputs": (Y_REG, {}),
    "adam-one-output-batch-13": (Y_REG[:, 1], {"batch_size": 13}),
    "sgd-two-outputs": (Y_REG / 4, {"solver": "sgd", "learning_rate_init": 0.01}),
    "lbfgs-two-outputs": (Y_REG, {"solver": "lbfgs"}),
    "lbfgs-poisson": (np.exp(Y_REG[:, 0] / 4).round(), {"solver": "lbfgs", "loss": "poisson"}),
    "adam-poisson-early-stopping": (
        np.exp(Y_REG[:, 0] / 4).round(),
        {"loss": "poisson", "early_stopping": True},
    ),
}


@pytest.mark.parametrize("case", sorted(REGRESSOR_CASES))
def test_regressor_float64_reproduces_scikit_learn(case):
    y, params = REGRESSOR_CASES[case]
    params = {"hidden_layer_sizes": (10,), "max_iter": 25, "random_state": 1, **params}
    ours = MLPRegressor(backend="numpy", dtype="float64", **params).fit(X_REG, y)
    theirs = sk_twin(ours).fit(X_REG, y)
    assert_same_fit(ours, theirs, rtol=1e-6 if params.get("solver") == "lbfgs" else 1e-9)
    np.testing.assert_allclose(ours.predict(X_REG), theirs.predict(X_REG), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_sample_weights_reproduce_scikit_learn(solver):
    w = np.random.RandomState(2).uniform(0, 3, len(Y_DIGITS))
    params = {"hidden_layer_sizes": (8,), "max_iter": 15, "random_state": 0, "solver": solver}
    ours = MLPClassifier(backend="numpy", dtype="float64", **params)
    ours.fit(X_DIGITS, Y_DIGITS, sample_weight=w)
    theirs = sk_twin(ours).fit(X_DIGITS, Y_DIGITS, sample_weight=w)
    assert_same_fit(ours, theirs, rtol=1e-6 if solver == "lbfgs" else 1e-9)
    reg = MLPRegressor(backend="numpy", dtype="float64", **params)
    reg.fit(X_REG, Y_REG, sample_weight=w[:120])
    assert_same_fit(reg, sk_twin(reg).fit(X_REG, Y_REG, sample_weight=w[:120]), rtol=1e-6)


def test_partial_fit_and_warm_start_reproduce_scikit_learn():
    params = {"hidden_layer_sizes": (8,), "random_state": 0, "solver": "sgd", "max_iter": 5}
    ours = MLPClassifier(backend="numpy", dtype="float64", **params)
    theirs = sk_twin(ours)
    for est in (ours, theirs):
        est.partial_fit(X_DIGITS[:100], Y_DIGITS[:100], classes=np.arange(4))
        est.partial_fit(X_DIGITS[100:], Y_DIGITS[100:])
    assert_same_fit(ours, theirs)
    ours = MLPRegressor(backend="numpy", dtype="float64", warm_start=True, **params)
    theirs = sk_twin(ours)
    for est in (ours, theirs):
        est.fit(X_REG, Y_REG).set_params(max_iter=3).fit(X_REG, Y_REG)
    assert_same_fit(ours, theirs)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_float32_training_comes_close_to_scikit_learn(solver):
    params = {"hidden_layer_sizes": (16,), "max_iter": 30, "random_state": 0, "solver": solver}
    ours = MLPClassifier(backend="numpy", **params).fit(X_DIGITS, Y_DIGITS)
    theirs = sk_twin(ours).fit(X_DIGITS, Y_DIGITS)
    assert ours.coefs_[0].dtype == np.float32
    assert ours.predict_proba(X_DIGITS).dtype == np.float64  # the input's precision
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-3 if solver == "lbfgs" else 1e-4)
    agree = (ours.predict(X_DIGITS) == theirs.predict(X_DIGITS)).mean()
    assert agree >= 0.99


def lbfgs_objective(est, X, y, sample_weight=None):
    """f(theta) -> (loss, gradient): the function gpunn hands SciPy's L-BFGS for est, X, y."""
    from gpunn.sklearn._data import TrainingData

    X, Y = est._validate_input(X, y, incremental=False, reset=False)
    model = est._model
    data = TrainingData(
        model.backend,
        X,
        est._training_targets(Y, np),
        sample_weight,
        dtype=model.dtype,
        y_dtype=np.int64 if est._objective.integer_targets else model.dtype,
    )
    return lambda theta: est._loss_grad_lbfgs(theta, data, None)


def padding(model):
    """Mask of the flat buffer's alignment padding (entries that belong to no parameter)."""
    mask = np.ones(model.flat_params.shape, dtype=bool)
    for start, shape in model.layout.values():
        mask[start : start + int(np.prod(shape))] = False
    return mask


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("n_labels", [2, 3])
def test_lbfgs_objective_gradient_check(activation, n_labels):
    """scikit-learn's test_gradient, for the function gpunn gives L-BFGS: central differences
    over every entry of the flat buffer, padding included (its gradient must be 0)."""
    rng = np.random.RandomState(42)
    X, y = rng.rand(5, 10), 1 + np.mod(np.arange(5) + 1, n_labels)
    w = rng.uniform(0.5, 2, 5)
    est = MLPClassifier(
        hidden_layer_sizes=10,
        activation=activation,
        solver="lbfgs",
        alpha=1e-5,
        max_iter=1,
        random_state=1,
        backend="numpy",
        dtype="float64",
    ).fit(X, y)
    assert not est._model.flat_params[padding(est._model)].any()  # L-BFGS never moved padding
    theta = est._model.flat_params.copy()
    for weights in (None, w):
        f = lbfgs_objective(est, X, y, weights)
        value, grad = f(theta)
        numeric = np.empty_like(theta)
        for i in range(theta.size):
            step = np.zeros_like(theta)
            step[i] = 1e-5
            numeric[i] = (f(theta + step)[0] - f(theta - step)[0]) / 2e-5
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
        assert not grad[padding(est._model)].any()


def test_lbfgs_objective_of_multioutput_regression_is_scikit_learns():
    """For K outputs scikit-learn reports 0.5 * the mean over outputs but follows the gradient
    of 0.5 * their sum (module docstring of gpunn.sklearn._objective): gpunn does the same."""
    est = MLPRegressor(
        hidden_layer_sizes=(4,), solver="lbfgs", alpha=0.0, max_iter=1, random_state=0
    )
    est.set_params(backend="numpy", dtype="float64").fit(X_REG[:20], Y_REG[:20])
    f = lbfgs_objective(est, X_REG[:20], Y_REG[:20])
    theta = est._model.flat_params.copy()
    _, grad = f(theta)
    numeric = np.empty_like(theta)
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = 1e-6
        numeric[i] = (f(theta + step)[0] - f(theta - step)[0]) / 2e-6
    np.testing.assert_allclose(grad, 2 * numeric, rtol=1e-5, atol=1e-9)  # K = 2 outputs
    theirs = sk_twin(est).fit(X_REG[:20], Y_REG[:20])
    assert est.loss_ == pytest.approx(theirs.loss_, rel=1e-9)


def test_readme_from_scikit_learn_runs_as_written(capsys):
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## From scikit-learn", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # gpunn's NumPy fallback notice
        exec(compile(code, "README.md", "exec"), {})
    printed = float(capsys.readouterr().out.strip())
    promised = float(code.rsplit("# ", 1)[1])
    assert printed == pytest.approx(promised, abs=0.01)


# ------------------------------------------------------------------------------------------
# Inside scikit-learn
# ------------------------------------------------------------------------------------------


def test_pipeline_in_grid_search_with_two_processes():
    pipe = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(6,), max_iter=60, random_state=0)
    )
    grid = {"mlpclassifier__alpha": [1e-4, 1e-1], "mlpclassifier__solver": ["adam", "lbfgs"]}
    search = GridSearchCV(pipe, grid, cv=3, n_jobs=2).fit(X_IRIS, Y_IRIS)
    assert search.best_score_ > 0.85
    assert set(search.cv_results_["params"][0]) == set(grid)
    assert search.score(X_IRIS, Y_IRIS) > 0.85


def test_cross_val_score_with_two_processes_equals_one_process():
    est = MLPRegressor(hidden_layer_sizes=(8,), max_iter=40, random_state=0, backend="numpy")
    parallel = cross_val_score(est, X_REG, Y_REG, cv=3, n_jobs=2)
    serial = cross_val_score(est, X_REG, Y_REG, cv=3, n_jobs=1)
    np.testing.assert_allclose(parallel, serial, rtol=1e-12)


def test_clone_gives_an_unfitted_copy_with_the_same_parameters():
    est = MLPClassifier((7, 3), solver="sgd", backend="numpy", dtype="float64", random_state=2)
    est.fit(X_IRIS, Y_IRIS)
    copy = clone(est)
    assert copy.get_params() == est.get_params()
    assert not hasattr(copy, "coefs_")
    with pytest.raises(NotFittedError):
        copy.predict(X_IRIS)


def test_fixed_random_state_is_deterministic_and_none_is_not():
    def fit(random_state):
        return MLPRegressor(
            hidden_layer_sizes=(8,), max_iter=5, random_state=random_state, backend="numpy"
        ).fit(X_REG, Y_REG)

    a, b = fit(7), fit(7)
    for x, y in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(fit(None).coefs_[0], fit(None).coefs_[0])


def test_warm_start_continues_and_cold_start_restarts():
    params = {"hidden_layer_sizes": (8,), "max_iter": 5, "random_state": 0, "backend": "numpy"}
    warm = MLPClassifier(warm_start=True, **params).fit(X_IRIS, Y_IRIS)
    first = [c.copy() for c in warm.coefs_]
    warm.fit(X_IRIS, Y_IRIS)
    assert warm.n_iter_ == 5 and len(warm.loss_curve_) == 10
    cold = MLPClassifier(**params).fit(X_IRIS, Y_IRIS)
    np.testing.assert_array_equal(cold.coefs_[0], first[0])  # same start as the first fit
    cold.fit(X_IRIS, Y_IRIS)
    np.testing.assert_array_equal(cold.coefs_[0], first[0])  # started over
    assert not np.array_equal(warm.coefs_[0], first[0])
    with pytest.raises(ValueError, match="warm_start can only be used where `y` has the same"):
        warm.fit(X_IRIS, Y_IRIS % 2)


def test_early_stopping_keeps_the_best_validation_weights():
    params = {"hidden_layer_sizes": (10,), "learning_rate_init": 0.01, "random_state": 0}
    params |= {"early_stopping": True, "n_iter_no_change": 4, "max_iter": 200}
    est = MLPClassifier(backend="numpy", dtype="float64", **params).fit(X_DIGITS, Y_DIGITS)
    assert est.best_loss_ is None
    assert len(est.validation_scores_) == est.n_iter_ < 200
    assert est.best_validation_score_ == max(est.validation_scores_)
    best = int(np.argmax(est.validation_scores_))
    assert best < est.n_iter_ - 1  # it went on past the best epoch ...
    # ... and kept the best epoch's weights: those scikit-learn keeps, and the same as
    # training the same way for exactly best + 1 epochs
    theirs = sk_twin(est).fit(X_DIGITS, Y_DIGITS)
    np.testing.assert_allclose(est.coefs_[0], theirs.coefs_[0], rtol=1e-9)
    shorter = clone(est).set_params(max_iter=best + 1, n_iter_no_change=1000)
    shorter.fit(X_DIGITS, Y_DIGITS)
    np.testing.assert_allclose(est.coefs_[0], shorter.coefs_[0], rtol=1e-12)


def test_partial_fit_streaming_equals_fit_with_full_batches():
    """scikit-learn's rule: with batch_size = n the batch order cannot matter, so 50
    partial_fit calls train exactly as fit(max_iter=50) (up to summation order)."""
    params = {"solver": "sgd", "learning_rate_init": 0.01, "random_state": 1}
    params |= {"batch_size": len(X_REG), "hidden_layer_sizes": (10,), "tol": 0.0}
    fitted = MLPRegressor(max_iter=50, backend="numpy", dtype="float64", **params)
    fitted.fit(X_REG, Y_REG)
    streamed = MLPRegressor(backend="numpy", dtype="float64", **params)
    for _ in range(50):
        streamed.partial_fit(X_REG, Y_REG)
    np.testing.assert_allclose(streamed.predict(X_REG), fitted.predict(X_REG), rtol=1e-9)
    assert streamed.t_ == fitted.t_ == 50 * len(X_REG)


def test_multilabel_probabilities_are_independent():
    est = MLPClassifier((20,), solver="lbfgs", max_iter=100, random_state=0).fit(X_ML, Y_ML)
    proba = est.predict_proba(X_ML)
    assert proba.shape == Y_ML.shape and est.out_activation_ == "logistic"
    assert not np.allclose(proba.sum(axis=1), 1)
    np.testing.assert_array_equal(est.predict(X_ML), (proba > 0.5).astype(int))
    np.testing.assert_allclose(est.predict_log_proba(X_ML), np.log(proba))


def test_sparse_input_matches_dense_and_is_densified_a_batch_at_a_time(monkeypatch):
    X = X_DIGITS.copy()
    X[X < 0.5] = 0
    shapes = []
    real = sp.csr_matrix.toarray

    def spy(self, *args, **kwargs):
        shapes.append(self.shape)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", spy)
    for solver in ("adam", "lbfgs"):
        params = {"hidden_layer_sizes": (8,), "max_iter": 10, "random_state": 0}
        params |= {"batch_size": 32, "solver": solver, "dtype": "float64", "backend": "numpy"}
        dense = MLPClassifier(**params).fit(X, Y_DIGITS)
        shapes.clear()
        sparse = MLPClassifier(**params).fit(sp.csr_matrix(X), Y_DIGITS)
        assert shapes and max(s[0] for s in shapes) <= (32 if solver == "adam" else 240)
        np.testing.assert_allclose(sparse.coefs_[0], dense.coefs_[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            sparse.predict_proba(sp.csr_matrix(X)), dense.predict_proba(X), rtol=1e-9
        )


def test_lbfgs_evaluates_large_data_in_chunks(monkeypatch):
    """X larger than one chunk (sparse or dense) is evaluated chunk by chunk, with the same
    result as in one pass."""
    from gpunn.sklearn import _data

    monkeypatch.setattr(_data, "MAX_CHUNK_ROWS", 50)
    X = sp.random(180, 12, density=0.3, random_state=0, format="csr")
    y = np.arange(180) % 3
    params = {"hidden_layer_sizes": (5,), "max_iter": 20, "solver": "lbfgs", "random_state": 0}
    w = np.linspace(0.5, 2, 180)
    sparse = MLPClassifier(backend="numpy", dtype="float64", **params).fit(X, y, sample_weight=w)
    dense = MLPClassifier(backend="numpy", dtype="float64", **params)
    dense.fit(X.toarray(), y, sample_weight=w)  # dense, but still in chunks of 50 rows
    monkeypatch.setattr(_data, "MAX_CHUNK_ROWS", 65536)
    one_pass = MLPClassifier(backend="numpy", dtype="float64", **params)
    one_pass.fit(X.toarray(), y, sample_weight=w)
    for est in (sparse, dense):
        np.testing.assert_allclose(est.coefs_[0], one_pass.coefs_[0], rtol=1e-7, atol=1e-10)
        assert est.loss_ == pytest.approx(one_pass.loss_, rel=1e-9)


def test_pandas_input_records_feature_names():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X_IRIS, columns=[f"f{i}" for i in range(4)])
    est = MLPClassifier((5,), max_iter=5, random_state=0).fit(frame, pd.Series(Y_IRIS))
    np.testing.assert_array_equal(est.feature_names_in_, frame.columns)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        est.predict(X_IRIS)
    with pytest.raises(ValueError, match="feature names"):
        est.predict(frame.rename(columns={"f0": "other"}))


# ------------------------------------------------------------------------------------------
# scikit-learn's errors
# ------------------------------------------------------------------------------------------


def test_bad_input_gets_scikit_learns_errors():
    est = MLPClassifier((4,), max_iter=3)
    with pytest.raises(NotFittedError):
        est.predict(X_IRIS)
    bad = X_IRIS.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        est.fit(bad, Y_IRIS)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        est.fit(bad, Y_IRIS)
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        est.fit(X_IRIS[:, 0], Y_IRIS)
    est.fit(X_IRIS, Y_IRIS)
    with pytest.raises(ValueError, match="X has 3 features, but MLPClassifier is expecting 4"):
        est.predict(X_IRIS[:, :3])
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        est.predict(X_IRIS[0])
    with pytest.raises(ValueError, match="hidden_layer_sizes must be > 0"):
        MLPClassifier(hidden_layer_sizes=(3, 0)).fit(X_IRIS, Y_IRIS)
    with pytest.raises(ValueError, match="The 'solver' parameter"):
        MLPClassifier(solver="newton").fit(X_IRIS, Y_IRIS)
    with pytest.raises(ValueError, match="unknown backend"):
        MLPClassifier(backend="tpu").fit(X_IRIS, Y_IRIS)


def test_partial_fit_errors_are_scikit_learns():
    est = MLPClassifier(solver="sgd", backend="numpy")
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        est.partial_fit(X_IRIS, Y_IRIS)
    est.partial_fit(X_IRIS[Y_IRIS < 2], Y_IRIS[Y_IRIS < 2], classes=[0, 1])
    with pytest.raises(ValueError, match="`y` has classes not in `self.classes_`"):
        est.partial_fit(X_IRIS, Y_IRIS)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        MLPRegressor(early_stopping=True).fit(X_REG, Y_REG).partial_fit(X_REG, Y_REG)
    for cls in (MLPClassifier, MLPRegressor):  # scikit-learn's rule (its regressor misses it)
        assert not hasattr(cls(solver="lbfgs"), "partial_fit")
        assert hasattr(cls(solver="adam"), "partial_fit")


def test_non_finite_weights_are_refused():
    X = np.finfo(np.float32).max * np.random.RandomState(0).uniform(size=(10, 2))
    with (
        pytest.raises(ValueError, match="Solver produced non-finite parameter weights"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", RuntimeWarning)
        MLPRegressor(backend="numpy").fit(X, np.arange(10.0))


def test_poisson_refuses_negative_targets():
    with pytest.raises(ValueError, match="negative"):
        MLPRegressor(loss="poisson").fit(X_REG, Y_REG[:, 0])


# ------------------------------------------------------------------------------------------
# Weights assigned by hand, pickling, checkpoints, Sequential
# ------------------------------------------------------------------------------------------


def test_weights_assigned_into_coefs_are_used():
    est = MLPRegressor(hidden_layer_sizes=(4,), max_iter=5, random_state=0, backend="numpy").fit(
        X_REG, Y_REG
    )
    before = est.predict(X_REG)
    est.coefs_[1] = np.zeros_like(est.coefs_[1])  # a new array in the list
    np.testing.assert_allclose(est.predict(X_REG), np.broadcast_to(est.intercepts_[1], (120, 2)))
    est.intercepts_[1][...] = 0  # an in-place edit
    np.testing.assert_array_equal(est.predict(X_REG), 0)
    assert not np.allclose(before, 0)
    with pytest.raises(ValueError, match=r"coefs_\[0\] has shape"):
        est.coefs_[0] = np.zeros((3, 3))
        est.predict(X_REG)


def test_an_unfitted_estimator_with_assigned_weights_trains_on(monkeypatch):
    """scikit-learn's worked example (its test_fit): weights set by hand, then partial_fit."""
    mlp = MLPClassifier(
        solver="sgd",
        learning_rate_init=0.1,
        alpha=0.1,
        activation="logistic",
        random_state=1,
        max_iter=1,
        hidden_layer_sizes=2,
        momentum=0,
        backend="numpy",
        dtype="float64",
    )
    mlp.coefs_ = [np.array([[0.1, 0.2], [0.3, 0.1], [0.5, 0]]), np.array([[0.1], [0.2]])]
    mlp.intercepts_ = [np.array([0.1, 0.1]), np.array([1.0])]
    mlp.n_outputs_, mlp.n_features_in_, mlp.n_layers_, mlp.out_activation_ = 1, 3, 3, "logistic"
    mlp.n_iter_, mlp.t_, mlp.best_loss_, mlp.loss_curve_ = 0, 0, np.inf, []
    mlp._no_improvement_count = 0
    mlp.partial_fit(np.array([[0.6, 0.8, 0.7]]), np.array([0]), classes=[0, 1])
    expected = [[0.098, 0.195756], [0.2956664, 0.096008], [0.4939998, -0.002244]]
    np.testing.assert_allclose(mlp.coefs_[0], expected, atol=1e-3)
    np.testing.assert_allclose(mlp.intercepts_[1], [0.9235], atol=1e-3)
    assert mlp.predict_proba(np.array([[0.6, 0.8, 0.7]]))[0, 1] == pytest.approx(0.739, abs=1e-3)


def host_only(obj, seen=None):
    """Every leaf of a pickled state: Python data, NumPy arrays, scikit-learn objects."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    assert not isinstance(obj, (gpunn.Backend, gpunn.Sequential, gpunn.Loss)), type(obj)
    assert type(obj).__module__.split(".")[0] != "cupy", type(obj)
    if isinstance(obj, dict):
        for v in obj.values():
            host_only(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            host_only(v, seen)
    elif hasattr(obj, "__getstate__") and not isinstance(obj, (np.ndarray, type)):
        state = obj.__getstate__()
        if isinstance(state, dict):
            host_only(state, seen)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_pickles_hold_host_arrays_and_predict_the_same(solver):
    est = MLPClassifier((6,), solver=solver, max_iter=8, random_state=0, backend="numpy")
    est.fit(X_IRIS, Y_IRIS)
    host_only(est.__getstate__())
    for dumped in (pickle.loads(pickle.dumps(est)), joblib_roundtrip(est)):
        np.testing.assert_array_equal(dumped.predict_proba(X_IRIS), est.predict_proba(X_IRIS))
        np.testing.assert_array_equal(dumped.coefs_[0], est.coefs_[0])
        assert dumped.coefs_[0].base is not None  # a view of the rebuilt model again
    if solver != "lbfgs":  # the optimizer state survives: training continues identically
        a, b = pickle.loads(pickle.dumps(est)), est
        a.partial_fit(X_IRIS, Y_IRIS)
        b.partial_fit(X_IRIS, Y_IRIS)
        np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])


def joblib_roundtrip(est):
    buf = io.BytesIO()
    joblib.dump(est, buf)
    buf.seek(0)
    return joblib.load(buf)


def test_a_gpu_estimator_unpickles_without_a_gpu(monkeypatch):
    """Trained on (emulated) CuPy, unpickled where CuPy does not work: "auto" falls back to
    NumPy with gpunn's warning; an explicit "cupy" unpickles and raises only when used."""
    monkeypatch.setenv("GPUNN_FUSED", "0")  # the emulation runs no CUDA code
    with emulation.installed():
        auto = MLPClassifier((5,), max_iter=5, random_state=0).fit(X_IRIS, Y_IRIS)
        assert auto._model.backend.name == "cupy"
        explicit = clone(auto).set_params(backend="cupy", early_stopping=True)
        explicit.fit(X_IRIS, Y_IRIS)
        for est in (auto, explicit):
            host_only(est.__getstate__())  # no (emulated) CuPy array in the pickled state
        auto_bytes, explicit_bytes = pickle.dumps(auto), pickle.dumps(explicit)
        expected = auto.predict_proba(X_IRIS)
    backend_module._clear_probe_cache()
    with pytest.warns(RuntimeWarning, match="using the NumPy"):
        restored = pickle.loads(auto_bytes)
    assert restored._model.backend.name == "numpy"
    np.testing.assert_allclose(restored.predict_proba(X_IRIS), expected, rtol=1e-6)
    restored = pickle.loads(explicit_bytes)
    assert restored.coefs_[0].shape == (4, 5)  # the attributes are there ...
    with pytest.raises(gpunn.BackendUnavailableError):  # ... the backend is not
        restored.predict(X_IRIS)


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_checkpoint_round_trip_and_continued_training(tmp_path, cls):
    if cls is MLPClassifier:
        X, y = X_IRIS, np.array(["a", "b", "c"])[Y_IRIS]
    else:
        X, y = X_REG, Y_REG
    est = cls(hidden_layer_sizes=(6,), solver="sgd", max_iter=5, random_state=0, alpha=1e-3)
    est.set_params(backend="numpy")
    est.fit(X, y)
    path = est.save(tmp_path / "est.safetensors")
    loaded = cls.load(path)
    assert loaded.get_params() == est.get_params()
    for name in ("n_iter_", "t_", "loss_", "loss_curve_", "n_features_in_", "out_activation_"):
        assert getattr(loaded, name) == getattr(est, name), name
    method = "predict_proba" if cls is MLPClassifier else "predict"
    np.testing.assert_array_equal(getattr(loaded, method)(X), getattr(est, method)(X))
    loaded.partial_fit(X, y)
    est.partial_fit(X, y)  # the momentum buffer came back too: the same next epoch
    np.testing.assert_array_equal(loaded.coefs_[0], est.coefs_[0])
    assert type(gpunn.sklearn.load(path)) is cls
    network = gpunn.load(path)  # an ordinary gpunn checkpoint of the network
    assert isinstance(network, gpunn.Sequential)
    other = MLPRegressor if cls is MLPClassifier else MLPClassifier
    with pytest.raises(ValueError, match=f"not one of \\['{other.__name__}'\\]"):
        other.load(path)
    network.save(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not a gpunn.sklearn estimator checkpoint"):
        cls.load(tmp_path / "plain.safetensors")


def test_sequential_round_trip():
    est = MLPClassifier((9, 7), activation="tanh", max_iter=10, random_state=0)
    est.fit(X_DIGITS, Y_DIGITS)
    model = est.to_sequential()
    assert [layer.kind for layer in model.layers] == ["Dense", "Tanh", "Dense", "Tanh", "Dense"]
    logits = model.backend.to_numpy(model.predict(X_DIGITS)).astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), est.predict_proba(X_DIGITS), 1e-5)
    # train the network further with gpunn's own API, then bring it back
    model.fit(
        X_DIGITS,
        Y_DIGITS,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.Adam(1e-3),
        epochs=3,
        verbose=0,
    )
    back = MLPClassifier.from_sequential(model, classes=est.classes_, max_iter=5)
    assert back.hidden_layer_sizes == (9, 7) and back.activation == "tanh"
    logits = model.backend.to_numpy(model.predict(X_DIGITS))
    np.testing.assert_array_equal(back.predict(X_DIGITS), logits.argmax(axis=1))
    back.partial_fit(X_DIGITS, Y_DIGITS)  # and it trains on as an estimator
    assert back.n_iter_ == 1
    reg = MLPRegressor.from_sequential(
        gpunn.Sequential([gpunn.Dense(6, 3), gpunn.Dense(3, 2)], seed=0), random_state=0
    )
    assert reg.activation == "identity" and reg.predict(X_REG).shape == (120, 2)
    with pytest.raises(ValueError, match="outputs"):
        MLPClassifier.from_sequential(model, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="one kind of activation"):
        MLPRegressor.from_sequential(
            gpunn.Sequential(
                [
                    gpunn.Dense(2, 3),
                    gpunn.ReLU(),
                    gpunn.Dense(3, 3),
                    gpunn.Tanh(),
                    gpunn.Dense(3, 1),
                ]
            )
        )


# ------------------------------------------------------------------------------------------
# CuPy input: on the device-rule emulation (always) and on a real GPU (tests marked gpu)
# ------------------------------------------------------------------------------------------


@pytest.fixture
def fake_cupy(monkeypatch):
    monkeypatch.setenv("GPUNN_FUSED", "0")  # the emulation runs no CUDA code
    with emulation.installed() as fake:
        yield fake


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_cupy_input_stays_on_the_device(fake_cupy, solver):
    xp = fake_cupy
    X, y = xp.asarray(X_DIGITS), xp.asarray(Y_DIGITS)
    w = xp.asarray(np.linspace(0.5, 1.5, len(Y_DIGITS)))
    params = {"hidden_layer_sizes": (8,), "max_iter": 6, "random_state": 0, "solver": solver}
    est = MLPClassifier(**params).fit(X, y, sample_weight=w)
    assert est._model.backend.name == "cupy"
    assert isinstance(est.predict(X), emulation.ndarray)
    proba = est.predict_proba(X)
    assert isinstance(proba, emulation.ndarray) and proba.shape == (240, 4)
    assert isinstance(est.coefs_[0], np.ndarray)  # documented attributes are NumPy
    # the same numbers as the NumPy backend on host data (same weights, batches, math)
    host = MLPClassifier(backend="numpy", **params).fit(X_DIGITS, Y_DIGITS, sample_weight=w.get())
    np.testing.assert_allclose(est.coefs_[0], host.coefs_[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(proba.get(), host.predict_proba(X_DIGITS), rtol=1e-5, atol=1e-6)
    assert est.score(X, y) == pytest.approx(host.score(X_DIGITS, Y_DIGITS))
    reg = MLPRegressor(**params).fit(xp.asarray(X_REG), xp.asarray(Y_REG))
    assert isinstance(reg.predict(xp.asarray(X_REG)), emulation.ndarray)
    assert reg.score(xp.asarray(X_REG), xp.asarray(Y_REG)) == pytest.approx(
        MLPRegressor(backend="numpy", **params).fit(X_REG, Y_REG).score(X_REG, Y_REG)
    )


def test_cupy_training_reads_the_device_once_per_epoch(fake_cupy):
    xp = fake_cupy
    X, y = xp.asarray(X_DIGITS), xp.asarray(Y_DIGITS)
    gpunn.get_backend("cupy")  # the backend's probe (one read per process) is not counted
    est = MLPClassifier((8,), batch_size=10, max_iter=7, tol=0, random_state=0)
    fake_cupy.emulation.reset_counts()
    est.fit(X, y)  # 24 batches per epoch, 7 epochs
    reads = fake_cupy.emulation.counts["host_read"]
    # per epoch: the loss; per fit: X's finiteness, the class labels, the weights (coefs_ /
    # intercepts_: one transfer, checked for finiteness on the host)
    assert reads <= 7 + 3, reads
    est = MLPClassifier((8,), batch_size=10, max_iter=7, tol=0, random_state=0)
    est.set_params(early_stopping=True, n_iter_no_change=100)
    fake_cupy.emulation.reset_counts()
    est.fit(X, y)
    # and the validation predictions, once per epoch
    assert fake_cupy.emulation.counts["host_read"] <= 2 * 7 + 4


def test_cupy_partial_fit_multilabel_and_errors(fake_cupy):
    xp = fake_cupy
    est = MLPClassifier((6,), solver="sgd", random_state=0)
    est.partial_fit(xp.asarray(X_ML), xp.asarray(Y_ML), classes=np.arange(5))
    est.partial_fit(xp.asarray(X_ML), xp.asarray(Y_ML))
    pred = est.predict(xp.asarray(X_ML))
    assert isinstance(pred, emulation.ndarray) and pred.shape == Y_ML.shape
    clf = MLPClassifier((4,), solver="sgd").partial_fit(
        xp.asarray(X_IRIS[:50]), xp.asarray(Y_IRIS[:50]), classes=[0, 1, 2]
    )
    with pytest.raises(ValueError, match="`y` has classes not in"):
        clf.partial_fit(xp.asarray(X_IRIS), xp.asarray(Y_IRIS + 1))
    bad = X_IRIS.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        clf.predict(xp.asarray(bad))
    with pytest.raises(ValueError, match="X has 2 features, but MLPClassifier is expecting 4"):
        clf.predict(xp.asarray(X_IRIS[:, :2]))
    with pytest.raises(ValueError, match="Expected 2D array"):
        clf.predict(xp.asarray(X_IRIS[0]))


def test_second_gpu_allocates_on_its_own_device(fake_cupy):
    """backend="cupy:1": every array is made with device 1 current (the emulation raises when
    an array of one device is used while another is current, as a GPU does)."""
    params = {"hidden_layer_sizes": (6,), "max_iter": 3, "random_state": 0}
    for solver in ("adam", "lbfgs"):
        kw = {**params, "solver": solver, "early_stopping": solver == "adam"}
        est = MLPClassifier(backend="cupy:1", **kw).fit(X_IRIS, Y_IRIS, sample_weight=np.ones(150))
        assert est._model.backend.spec == "cupy:1"
        host = MLPClassifier(backend="numpy", **kw).fit(X_IRIS, Y_IRIS)
        np.testing.assert_allclose(est.predict_proba(X_IRIS), host.predict_proba(X_IRIS), 1e-5)
        again = pickle.loads(pickle.dumps(est))
        np.testing.assert_array_equal(again.predict(X_IRIS), est.predict(X_IRIS))
    reg = MLPRegressor(backend="cupy:1", **params).fit(X_REG, Y_REG)
    reg.partial_fit(X_REG, Y_REG)
    assert reg.predict(X_REG).shape == (120, 2)


def test_same_random_state_same_initial_weights_on_numpy_and_cupy(fake_cupy):
    params = {"hidden_layer_sizes": (5,), "random_state": 4, "dtype": "float64"}
    a = MLPRegressor(backend="numpy", **params)
    b = MLPRegressor(backend="cupy", **params)
    for est in (a, b):
        est._random_state = np.random.RandomState(4)
        est._initialize([6, 5, 2], gpunn.get_backend(est.backend))
        est._publish_weights()
    assert b._model.backend.name == "cupy"
    for x, y in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True):
        np.testing.assert_array_equal(x, y)


def _real_cupy_or_skip():
    usable, reason, _ = backend_module._probe_cupy(0)
    if not usable:
        pytest.skip(f"CuPy backend unavailable: {reason}")
    return gpunn.get_backend("cupy").xp


@pytest.mark.gpu
@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_gpu_matches_numpy(solver):
    _real_cupy_or_skip()
    params = {"hidden_layer_sizes": (16,), "max_iter": 10, "random_state": 0, "solver": solver}
    gpu = MLPClassifier(backend="cupy", **params).fit(X_DIGITS, Y_DIGITS)
    cpu = MLPClassifier(backend="numpy", **params).fit(X_DIGITS, Y_DIGITS)
    np.testing.assert_allclose(gpu.coefs_[0], cpu.coefs_[0], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(gpu.predict_proba(X_DIGITS), cpu.predict_proba(X_DIGITS), atol=1e-3)
    assert isinstance(gpu.coefs_[0], np.ndarray)


@pytest.mark.gpu
def test_gpu_cupy_input_gives_cupy_output_and_pickles_to_host():
    cp = _real_cupy_or_skip()
    X, y = cp.asarray(X_DIGITS, dtype=cp.float32), cp.asarray(Y_DIGITS)
    est = MLPClassifier((16,), max_iter=5, random_state=0).fit(X, y)
    assert est._model.backend.is_gpu
    assert type(est.predict(X)) is cp.ndarray and type(est.predict_proba(X)) is cp.ndarray
    assert (
        type(MLPRegressor(hidden_layer_sizes=(4,), max_iter=3).fit(X, y * 1.0).predict(X))
        is cp.ndarray
    )
    host_only(est.__getstate__())
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_allclose(again.predict_proba(X).get(), est.predict_proba(X).get())


@pytest.mark.gpu
def test_gpu_same_random_state_same_initial_weights():
    _real_cupy_or_skip()
    kw = {"hidden_layer_sizes": (8,), "max_iter": 1, "random_state": 5, "solver": "sgd"}
    kw["learning_rate_init"] = 1e-12  # one step of ~0: the weights are the initial ones
    gpu = MLPClassifier(backend="cupy", **kw).fit(X_IRIS, Y_IRIS)
    cpu = MLPClassifier(backend="numpy", **kw).fit(X_IRIS, Y_IRIS)
    for a, b in zip(gpu.coefs_ + gpu.intercepts_, cpu.coefs_ + cpu.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_gpu_fixed_random_state_is_deterministic(solver):
    _real_cupy_or_skip()
    params = {"hidden_layer_sizes": (16,), "max_iter": 5, "random_state": 3, "solver": solver}
    a = MLPClassifier(backend="cupy", **params).fit(X_DIGITS, Y_DIGITS)
    b = MLPClassifier(backend="cupy", **params).fit(X_DIGITS, Y_DIGITS)
    for x, y in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True):
        np.testing.assert_array_equal(x, y)
