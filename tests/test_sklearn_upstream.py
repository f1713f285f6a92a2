"""scikit-learn's own MLP test suite, run against gpunn.sklearn's estimators.

``sklearn/neural_network/tests/test_mlp.py`` ships with scikit-learn. Its functions are imported
here and run with the names ``MLPClassifier`` / ``MLPRegressor`` in that module bound to
gpunn's estimators in float64 (scikit-learn's precision for float64 data: several tests compare
two trainings at its default tolerances) on the NumPy backend. Two tests are left out, each for
a stated reason; everything else is scikit-learn's test, unchanged.
"""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_limits

from gpunn.sklearn import MLPClassifier, MLPRegressor

upstream = pytest.importorskip("sklearn.neural_network.tests.test_mlp")


class Float64Classifier(MLPClassifier):
    """gpunn's MLPClassifier with dtype="float64" and backend="numpy" as defaults."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", **params):
        params.setdefault("backend", "numpy")
        params.setdefault("dtype", "float64")
        super().__init__(hidden_layer_sizes, activation, **params)

    @classmethod
    def _get_param_names(cls):
        return MLPClassifier._get_param_names()


class Float64Regressor(MLPRegressor):
    """gpunn's MLPRegressor with dtype="float64" and backend="numpy" as defaults."""

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", **p):
        p.setdefault("backend", "numpy")
        p.setdefault("dtype", "float64")
        super().__init__(loss, hidden_layer_sizes, activation, **p)

    @classmethod
    def _get_param_names(cls):
        return MLPRegressor._get_param_names()


LEFT_OUT = {
    "test_gradient": "calls scikit-learn's private _loss_grad_lbfgs with its private buffers; "
    "gpunn's L-BFGS objective has its own gradient check in tests/test_sklearn.py",
    "test_mlp_param_dtypes": "expects coefs_ in the dtype of X; gpunn's follow the dtype "
    "parameter (float32 by default), tested in tests/test_sklearn.py",
}

TESTS = sorted(
    name
    for name in dir(upstream)
    if name.startswith("test_") and callable(getattr(upstream, name)) and name not in LEFT_OUT
)


@pytest.fixture
def global_random_seed():
    """scikit-learn's fixture, at its default seed."""
    return 42


@pytest.fixture(autouse=True)
def gpunn_estimators(monkeypatch):
    """The upstream module's estimator names bound to gpunn's, for the test's duration."""
    monkeypatch.setattr(upstream, "MLPClassifier", Float64Classifier)
    monkeypatch.setattr(upstream, "MLPRegressor", Float64Regressor)
    with threadpool_limits(limits=1):  # tiny problems: BLAS threads only add overhead
        yield


def _cases():
    """(test name, keyword arguments) for every upstream test and parametrisation."""
    for name in TESTS:
        function = getattr(upstream, name)
        marks = [m for m in getattr(function, "pytestmark", []) if m.name == "parametrize"]
        cases = [{}]
        for mark in marks:
            argnames, values = mark.args[0], mark.args[1]
            names = (
                [a.strip() for a in argnames.split(",")] if isinstance(argnames, str) else argnames
            )
            expanded = []
            for case in cases:
                for value in values:
                    value = value.values if hasattr(value, "values") else value
                    value = value if len(names) > 1 else (value,)
                    expanded.append({**case, **dict(zip(names, value, strict=True))})
            cases = expanded
        for i, kwargs in enumerate(cases):
            yield pytest.param(name, kwargs, id=f"{name}[{i}]" if len(cases) > 1 else name)


@pytest.mark.parametrize("name, kwargs", list(_cases()))
def test_scikit_learn_mlp_test(name, kwargs, request, capsys):
    function = getattr(upstream, name)
    args = {}
    for parameter in function.__code__.co_varnames[: function.__code__.co_argcount]:
        if parameter in kwargs:
            args[parameter] = kwargs[parameter]
        elif parameter == "capsys":
            args[parameter] = capsys
        elif parameter == "tmp_path":
            args[parameter] = request.getfixturevalue("tmp_path")
        elif parameter == "global_random_seed":
            args[parameter] = 42
    function(**args)


def test_the_left_out_tests_exist():
    """If scikit-learn renames them, this list must be looked at again."""
    assert set(LEFT_OUT) <= {n for n in dir(upstream) if n.startswith("test_")}
