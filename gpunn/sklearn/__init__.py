"""scikit-learn estimators trained by gpunn: a GPU-capable drop-in for ``sklearn.neural_network``.

    from gpunn.sklearn import MLPClassifier, MLPRegressor   # was: from sklearn.neural_network

Same parameters, attributes and behaviour as scikit-learn 1.9's MLPClassifier / MLPRegressor
(they pass scikit-learn's own estimator checks), plus ``backend`` ("auto", "numpy", "cupy",
"cupy:N") and ``dtype`` ("float32" by default, or "float64"). Needs the ``sklearn`` extra
(``pip install "gpunn[sklearn]"``).
"""

from __future__ import annotations

import os

from gpunn.backend import Backend
from gpunn.sklearn._estimators import MLPClassifier, MLPRegressor
from gpunn.sklearn._persist import load as load_estimator

__all__ = ["MLPClassifier", "MLPRegressor", "load"]


def load(
    path: str | os.PathLike[str], backend: str | Backend | None = None
) -> MLPClassifier | MLPRegressor:
    """The estimator saved at ``path`` with ``est.save(path)`` (a gpunn checkpoint), on
    ``backend`` (None: the estimator's own ``backend`` parameter)."""
    classes = {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor}
    return load_estimator(path, classes, backend=backend)
