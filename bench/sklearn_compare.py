"""gpunn.sklearn against scikit-learn: test scores on scikit-learn's bundled data, and fit time.

    python bench/sklearn_compare.py --out DIR [--quick] [--backends numpy,cupy] [--threads 2,1]

Accuracy: on iris, wine, breast cancer and digits (classification; accuracy) and diabetes
(regression; R^2), for each solver (adam, sgd, lbfgs) and 5 seeds, gpunn's MLPClassifier /
MLPRegressor and scikit-learn's are trained with the same hyperparameters (scikit-learn's
defaults, hidden_layer_sizes=(100,)) on the same standardised 75/25 split; the mean test score
over the seeds is compared. gpunn runs in its default float32 and also in float64 (where it
reproduces scikit-learn's weights; the two columns show what float32 costs).

Speed: make_classification(70000, 100, n_informative=60, n_classes=10) in float32, 60000 rows to
train on and 10000 held out; hidden_layer_sizes=(256, 256), adam, batch_size=256, 10 epochs;
fit time of each library in the same run, interleaved (gpunn, scikit-learn, gpunn, ...), with
the same BLAS thread limit for both (threadpoolctl; each thread count in --threads is a separate
measurement), and the held-out accuracy of each. The repeats' minimum is the headline (the
machine is shared: the minimum is the least disturbed run), the median is reported too, and so
is the process CPU time. The sweep over training-set sizes gives the plot.

Writes DIR/sklearn_compare.json, DIR/sklearn_compare.md and DIR/sklearn_compare.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import time
import warnings
from typing import Any

import numpy as np
from sklearn import datasets, neural_network
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import gpunn
from gpunn.bench.env import environment
from gpunn.sklearn import MLPClassifier, MLPRegressor

DATASETS = {
    "iris": (datasets.load_iris, "classification"),
    "wine": (datasets.load_wine, "classification"),
    "breast_cancer": (datasets.load_breast_cancer, "classification"),
    "digits": (datasets.load_digits, "classification"),
    "diabetes": (datasets.load_diabetes, "regression"),
}
SOLVERS = ("adam", "sgd", "lbfgs")
ACCURACY_PARAMS = {"hidden_layer_sizes": (100,)}  # everything else: scikit-learn's defaults
SPEED_PARAMS = {"hidden_layer_sizes": (256, 256), "solver": "adam", "batch_size": 256}
SPEED_PARAMS |= {"max_iter": 10, "random_state": 0}


def split(name: str, seed: int) -> tuple[np.ndarray, ...]:
    """The seed's standardised 75/25 split (targets standardised too for regression: R^2 does
    not change, and the network trains on a well-scaled target)."""
    loader, task = DATASETS[name]
    X, y = loader(return_X_y=True)
    stratify = y if task == "classification" else None
    Xtr, Xte, ytr, yte = train_test_split(
        X, y, test_size=0.25, random_state=seed, stratify=stratify
    )
    scaler = StandardScaler().fit(Xtr)
    Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)
    if task == "regression":
        mean, std = ytr.mean(), ytr.std()
        ytr, yte = (ytr - mean) / std, (yte - mean) / std
    return Xtr, Xte, ytr, yte


def accuracy_table(seeds: int, backend: str, quick: bool) -> list[dict[str, Any]]:
    rows = []
    names = ["iris", "diabetes"] if quick else list(DATASETS)
    for name in names:
        task = DATASETS[name][1]
        ours_cls = MLPClassifier if task == "classification" else MLPRegressor
        theirs_cls = getattr(neural_network, ours_cls.__name__)
        for solver in SOLVERS:
            scores: dict[str, list[float]] = {
                "sklearn": [],
                "gpunn_float32": [],
                "gpunn_float64": [],
            }
            for seed in range(seeds):
                Xtr, Xte, ytr, yte = split(name, seed)
                params = {**ACCURACY_PARAMS, "solver": solver, "random_state": seed}
                theirs = theirs_cls(**params).fit(Xtr, ytr)
                scores["sklearn"].append(float(theirs.score(Xte, yte)))
                for dtype in ("float32", "float64"):
                    ours = ours_cls(**params, backend=backend, dtype=dtype).fit(Xtr, ytr)
                    scores[f"gpunn_{dtype}"].append(float(ours.score(Xte, yte)))
            row = {
                "dataset": name,
                "task": task,
                "metric": "accuracy" if task == "classification" else "r2",
                "solver": solver,
                "seeds": seeds,
            }
            for key, values in scores.items():
                row[key] = statistics.fmean(values)
                row[f"{key}_per_seed"] = values
            row["diff_float32"] = row["gpunn_float32"] - row["sklearn"]
            row["diff_float64"] = row["gpunn_float64"] - row["sklearn"]
            limit = 0.01 if task == "classification" else 0.02
            row["within_target"] = abs(row["diff_float32"]) <= limit
            rows.append(row)
            print(
                f"{name:14s} {solver:6s} sklearn {row['sklearn']:.4f}  gpunn f32 "
                f"{row['gpunn_float32']:.4f} ({row['diff_float32']:+.4f})  f64 "
                f"{row['gpunn_float64']:.4f} ({row['diff_float64']:+.4f})",
                flush=True,
            )
    return rows


def speed_data(n_train: int) -> tuple[np.ndarray, ...]:
    X, y = datasets.make_classification(
        n_samples=n_train + 10000,
        n_features=100,
        n_informative=60,
        n_classes=10,
        random_state=0,
    )
    X = X.astype(np.float32)
    return X[:n_train], X[n_train:], y[:n_train], y[n_train:]


class PlainGpunn:
    """The same network trained by gpunn's own loop (``Sequential.fit``): Adam at 1e-3, batches
    of 256, 10 epochs, no L2 penalty. Not scikit-learn's initial weights, batch order or loss
    bookkeeping; it is here to show what the estimator adds to the training steps."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def fit(self, X: np.ndarray, y: np.ndarray) -> PlainGpunn:
        widths = [X.shape[1], *SPEED_PARAMS["hidden_layer_sizes"], 10]
        layers: list[Any] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:], strict=False)):
            layers += [gpunn.Dense(fan_in, fan_out)] + (
                [gpunn.ReLU()] if i < len(widths) - 2 else []
            )
        self.model = gpunn.Sequential(layers, backend=self.backend, seed=0)
        self.model.fit(
            X, y, loss=gpunn.SoftmaxCrossEntropy(), optimizer=gpunn.Adam(lr=1e-3),
            epochs=SPEED_PARAMS["max_iter"], batch_size=SPEED_PARAMS["batch_size"], verbose=0,
        )  # fmt: skip
        self.model.backend.synchronize()
        self.n_iter_ = SPEED_PARAMS["max_iter"]
        return self

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        return float(self.model.evaluate(X, y)["accuracy"])


def time_fit(make: Any, X: np.ndarray, y: np.ndarray) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, fitted estimator) of one fit."""
    est = make()
    t0, c0 = time.perf_counter(), time.process_time()
    est.fit(X, y)  # gpunn's fit ends with the weights on the host: the GPU is synchronised
    return time.perf_counter() - t0, time.process_time() - c0, est


def speed(sizes: list[int], repeats: int, backends: list[str]) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    libraries = {"sklearn": lambda: neural_network.MLPClassifier(**SPEED_PARAMS)}
    for spec in backends:
        libraries[f"gpunn_{spec}"] = lambda spec=spec: MLPClassifier(**SPEED_PARAMS, backend=spec)
        libraries[f"gpunn_{spec}_Sequential.fit"] = lambda spec=spec: PlainGpunn(spec)
    for spec in backends:  # warm-up: imports, the backend's probe, first-call kernels
        MLPClassifier(**{**SPEED_PARAMS, "max_iter": 1}, backend=spec).fit(*speed_data(2000)[::2])
    for n in sizes:
        Xtr, Xte, ytr, yte = speed_data(n)
        reps = repeats if n == max(sizes) else 1
        entry: dict[str, Any] = {name: {"wall": [], "cpu": []} for name in libraries}
        for _ in range(reps):
            for name, make in libraries.items():  # interleaved: drift hits all alike
                wall, cpu, est = time_fit(make, Xtr, ytr)
                entry[name]["wall"].append(wall)
                entry[name]["cpu"].append(cpu)
                entry[name]["test_accuracy"] = float(est.score(Xte, yte))
                entry[name]["n_iter"] = int(est.n_iter_)
                time.sleep(0.25)  # let the other library's BLAS threads stop spinning
        for name in libraries:
            walls = entry[name]["wall"]
            entry[name]["min"] = min(walls)
            entry[name]["median"] = statistics.median(walls)
        for name in libraries:
            if name != "sklearn":
                entry[name]["speedup_min"] = entry["sklearn"]["min"] / entry[name]["min"]
                entry[name]["speedup_median"] = entry["sklearn"]["median"] / entry[name]["median"]
                entry[name]["accuracy_diff"] = (
                    entry[name]["test_accuracy"] - entry["sklearn"]["test_accuracy"]
                )
        runs[str(n)] = entry
        summary = "  ".join(
            f"{name} {entry[name]['min']:.2f}s (acc {entry[name]['test_accuracy']:.4f})"
            for name in libraries
        )
        print(f"n={n:6d}  {summary}", flush=True)
    return runs


def plot(result: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    for (threads, runs), style in zip(result["speed"].items(), ("o-", "s--", "^:"), strict=False):
        sizes = sorted(int(n) for n in runs)
        for name in runs[str(sizes[0])]:
            label = {"sklearn": "scikit-learn"}.get(name, name.replace("_", " "))
            times = [runs[str(n)][name]["min"] for n in sizes]
            ax.plot(sizes, times, style, label=f"{label}, {threads} BLAS thread(s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training samples (100 features, 10 classes)")
    ax.set_ylabel("fit time, 10 epochs (s, fastest repeat)")
    ax.set_title("MLP (256, 256), adam, batch 256, float32 input")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    lines = []
    if result["accuracy"]:
        lines += accuracy_markdown(result["accuracy"])
    if result["speed"]:
        lines += speed_markdown(result["speed"])
    return "\n".join(lines) + "\n"


def accuracy_markdown(rows: list[dict[str, Any]]) -> list[str]:
    seeds = rows[0]["seeds"]
    lines = [f"## Accuracy (mean test score over {seeds} seeds)", ""]
    lines.append(
        "| data set | metric | solver | scikit-learn | gpunn float32 | diff "
        "| gpunn float64 | diff |"
    )
    lines.append("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['metric']} | {r['solver']} | {r['sklearn']:.4f} | "
            f"{r['gpunn_float32']:.4f} | {r['diff_float32']:+.4f} | {r['gpunn_float64']:.4f} | "
            f"{r['diff_float64']:+.4f} |"
        )
    return lines + [""]


def speed_markdown(speed: dict[str, Any]) -> list[str]:
    lines = []
    for threads, runs in speed.items():
        lines += speed_table(threads, runs)
    return lines


def speed_table(threads: str, runs: dict[str, Any]) -> list[str]:
    title = "## Fit time (make_classification, 100 features, 10 classes, float32)"
    lines = [f"{title}, {threads} BLAS thread(s)", ""]
    names = [n for n in runs[next(iter(runs))] if n != "sklearn"]
    header = "| training rows | scikit-learn s (min / median; CPU s) | "
    header += " | ".join(
        f"{n} s (min / median; CPU s) | speed-up min (median; CPU) | acc diff" for n in names
    )
    lines.append(header + " |")
    lines.append("|---:|---:|" + "---:|---:|---:|" * len(names))
    for n in sorted(runs, key=int):
        e = runs[n]
        sk = e["sklearn"]
        cells = [f"{int(n):,}", f"{sk['min']:.2f} / {sk['median']:.2f}; {min(sk['cpu']):.2f}"]
        for name in names:
            cpu_ratio = min(sk["cpu"]) / min(e[name]["cpu"])
            cells += [
                f"{e[name]['min']:.2f} / {e[name]['median']:.2f}; {min(e[name]['cpu']):.2f}",
                f"{e[name]['speedup_min']:.2f} ({e[name]['speedup_median']:.2f}; {cpu_ratio:.2f})",
                f"{e[name]['accuracy_diff']:+.4f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="sklearn_compare_out", help="output directory")
    parser.add_argument("--backends", default="numpy", help="gpunn backends, e.g. numpy,cupy")
    parser.add_argument(
        "--threads", default="2", help="BLAS threads for both libraries; several: 2,1"
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="fits per library, largest size")
    parser.add_argument("--sizes", default="7500,15000,30000,60000")
    parser.add_argument("--quick", action="store_true", help="2 data sets, 2 seeds, small sizes")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.seeds, args.repeats = [2000, 4000], 2, 1
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])]),
        "threads": [int(t) for t in args.threads.split(",")],
        "accuracy_params": {
            k: list(v) if isinstance(v, tuple) else v for k, v in ACCURACY_PARAMS.items()
        },
        "speed_params": {
            k: list(v) if isinstance(v, tuple) else v for k, v in SPEED_PARAMS.items()
        },
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # gpunn's NumPy fallback notice
        result["environment"] = environment([gpunn.get_backend(b) for b in backends])
        with threadpool_limits(limits=1):  # small data sets: scores only, threads only add overhead
            result["accuracy"] = (
                [] if args.skip_accuracy else accuracy_table(args.seeds, backends[0], args.quick)
            )
        result["speed"] = {}
        for threads in [] if args.skip_speed else result["threads"]:
            with threadpool_limits(limits=threads):
                print(f"{threads} BLAS thread(s):", flush=True)
                result["speed"][str(threads)] = speed(sizes, args.repeats, backends)
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    (out / "sklearn_compare.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "sklearn_compare.md").write_text(markdown(result))
    if result["speed"]:
        plot(result, out / "sklearn_compare.png")
    print(f"wrote {out}/sklearn_compare.*")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
