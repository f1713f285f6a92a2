"""Tests for the `gpunn` command, run as a subprocess: train, evaluate, predict, info, errors."""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import gpunn
import gpunn.datasets
from gpunn import backend as backend_module
from gpunn import cli
from gpunn.datasets import blobs, digits, train_val_test_split
from gpunn.training import loop

ACCURACY = re.compile(r"^test accuracy: (\d+\.\d\d)%", re.MULTILINE)


def run(
    *args: str, cwd: pathlib.Path, backend: str | None = "numpy"
) -> subprocess.CompletedProcess[str]:
    """`python -m gpunn ARGS` in `cwd`; GPUNN_BACKEND=backend (unset for None)."""
    env = dict(os.environ)
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "GPUNN_BACKEND"):
        env.pop(name, None)
    if backend is not None:
        env["GPUNN_BACKEND"] = backend
    env["GPUNN_DATA"] = str(cwd / "gpunn-cache")  # never touch the user's cache
    env["MPLBACKEND"] = "Agg"
    return subprocess.run(
        [sys.executable, "-m", "gpunn", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The run failed with `status` and exactly one readable line on stderr; returns it."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gpunn"), lines[0]
    return lines[0]


def reported_accuracy(stdout: str) -> float:
    match = ACCURACY.search(stdout)
    assert match, stdout
    return float(match.group(1))


# --------------------------------------------------------------------------------------------
# Data files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """Small data files: blobs as .npz and .csv (header, label last), a regression .csv,
    digits test inputs as .npz (X only), a data set with a NaN and a garbage checkpoint."""
    root = tmp_path_factory.mktemp("cli-data")
    X, y = blobs(300, centers=3, features=4, seed=1)
    np.savez(root / "blobs.npz", X=X, y=y)
    with open(root / "blobs.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["a", "b", "c", "d", "label"])
        for row, label in zip(X.tolist(), y.tolist(), strict=True):
            writer.writerow([*row, label])
    with open(root / "regression.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        for row in X[:200].tolist():
            writer.writerow([*row, 0.25 * row[0] - row[1] + 0.5])
    _, _, (X_test, _) = train_val_test_split(*digits(), val=0.1, test=0.2, seed=0)
    np.savez(root / "digits-test.npz", X=X_test)
    bad = X.copy()
    bad[7, 2] = np.nan
    np.savez(root / "nan.npz", X=bad, y=y)
    (root / "garbage.safetensors").write_bytes(np.random.default_rng(0).bytes(300))
    return {p.stem if p.suffix != ".csv" else p.name: p for p in root.iterdir()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, str]:
    """A digits model trained for 3 epochs and saved; (checkpoint, train's stdout)."""
    root = tmp_path_factory.mktemp("cli-model")
    stdout = ok(run("train", "--epochs", "3", "--save", "digits.safetensors", cwd=root))
    return root / "digits.safetensors", stdout


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


def test_train_with_defaults(tmp_path: pathlib.Path) -> None:
    out = ok(run("train", cwd=tmp_path))
    assert out.splitlines()[0] == "backend: numpy (CPU)"
    assert "1,797 samples x 64 features: 1,259 train, 179 validation, 359 test" in out
    assert "30 epochs, batch size 32" in out
    assert len(re.findall(r"^epoch +\d+/30 ", out, re.MULTILINE)) == 30  # " 1/30" .. "30/30"
    assert 90.0 <= reported_accuracy(out) <= 100.0
    assert re.search(r"^throughput: [\d,]+ samples/s on numpy", out, re.MULTILINE)
    assert list(tmp_path.iterdir()) == []  # writes nothing unless asked


def test_train_spirals_with_two_hidden_layers(tmp_path: pathlib.Path) -> None:
    out = ok(
        run("train", "--dataset", "spirals", "--hidden", "64,32", "--epochs", "2", cwd=tmp_path)
    )
    assert "3,000 samples x 2 features" in out
    rows = re.findall(r"^ +\d+  Dense +(\d+) +([\d,]+)$", out, re.MULTILINE)
    assert rows == [("64", "192"), ("32", "2,080"), ("3", "99")]  # widths and W + b counts
    assert reported_accuracy(out) > 33.4  # better than chance after 2 epochs


@pytest.mark.parametrize("name", ["blobs", "blobs.csv"])
def test_train_on_a_data_file(
    tmp_path: pathlib.Path, files: dict[str, pathlib.Path], name: str
) -> None:
    out = ok(run("train", "--data", str(files[name]), "--epochs", "5", cwd=tmp_path))
    assert f"data:    {files[name].resolve()}, 70% / 10% / 20% split (seed 0)" in out
    assert "300 samples x 4 features" in out
    assert "classification, 3 classes, softmax cross-entropy" in out
    assert reported_accuracy(out) >= 90.0  # well-separated blobs


def test_train_regression_from_csv(tmp_path: pathlib.Path, files: dict[str, pathlib.Path]) -> None:
    out = ok(run("train", "--data", str(files["regression.csv"]), "--epochs", "3", cwd=tmp_path))
    assert "test accuracy" not in out
    assert "task:    regression, mean squared error (labels are not all whole numbers" in out
    assert re.search(r"^test loss: \d+\.\d+", out, re.MULTILINE)


def test_quiet_prints_no_progress(tmp_path: pathlib.Path) -> None:
    out = ok(run("train", "--epochs", "3", "--quiet", cwd=tmp_path))
    assert not re.search(r"^epoch +\d", out, re.MULTILINE)
    assert "━" not in out
    reported_accuracy(out)
    assert "samples/s" in out


def test_plot_writes_a_png(tmp_path: pathlib.Path) -> None:
    (tmp_path / "curves").mkdir()
    out = ok(run("train", "--epochs", "2", "--plot", "curves/out.png", cwd=tmp_path))
    png = tmp_path / "curves" / "out.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 1000
    assert "out.png" in out


# --------------------------------------------------------------------------------------------
# save, evaluate, predict, resume
# --------------------------------------------------------------------------------------------


def test_evaluate_a_saved_checkpoint(trained: tuple[pathlib.Path, str]) -> None:
    checkpoint, train_out = trained
    assert f"saved: {checkpoint.name}" in train_out
    out = ok(run("evaluate", "--checkpoint", checkpoint.name, cwd=checkpoint.parent))
    match = re.search(r"^accuracy: (\d+\.\d\d)%", out, re.MULTILINE)
    assert match, out
    # the same test split (seed 0), the same weights: the accuracy train reported
    assert float(match.group(1)) == reported_accuracy(train_out)


@pytest.fixture(scope="module")
def blobs_model(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, pathlib.Path]
) -> pathlib.Path:
    """A model trained on blobs.npz (4 features, 3 classes) and saved."""
    root = tmp_path_factory.mktemp("cli-blobs")
    ok(run("train", "--data", str(files["blobs"]), "--epochs", "3", "--save", "m.st", cwd=root))
    return root / "m.st"


def test_evaluate_on_a_data_file(
    tmp_path: pathlib.Path, files: dict[str, pathlib.Path], blobs_model: pathlib.Path
) -> None:
    args = ["--checkpoint", str(blobs_model), "--data", str(files["blobs"])]
    out = ok(run("evaluate", *args, cwd=tmp_path))
    with np.load(files["blobs"]) as archive:
        X, y = archive["X"], archive["y"]
    expected = gpunn.load(blobs_model, backend="numpy").evaluate(X, y)
    assert f"accuracy: {100 * expected['accuracy']:.2f}%" in out
    assert "every row (300 samples)" in out


@pytest.mark.parametrize("out_name", ["preds.csv", "preds.npz", None])
def test_predict_writes_one_prediction_per_row(
    trained: tuple[pathlib.Path, str],
    files: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    out_name: str | None,
) -> None:
    checkpoint, _ = trained
    args = ["predict", "--checkpoint", str(checkpoint), "--data", str(files["digits-test"])]
    if out_name is not None:
        args += ["--out", out_name]
    result = run(*args, cwd=tmp_path)
    stdout = ok(result)
    with np.load(files["digits-test"]) as archive:
        X = archive["X"]
    model = gpunn.load(checkpoint, backend="numpy")
    expected = model.predict(X).argmax(axis=1)
    if out_name is None:
        labels = np.array([int(line) for line in stdout.splitlines()])
    elif out_name.endswith(".csv"):
        lines = (tmp_path / out_name).read_text().splitlines()
        labels = np.array([int(line) for line in lines])
        assert f"wrote {len(X)} predictions" in result.stderr
    else:
        with np.load(tmp_path / out_name) as archive:
            labels = archive["labels"]
            assert archive["logits"].shape == (len(X), 10)
    assert labels.shape == (len(X),)
    np.testing.assert_array_equal(labels, expected)


def test_predict_from_csv_drops_the_label_column(
    tmp_path: pathlib.Path, files: dict[str, pathlib.Path], blobs_model: pathlib.Path
) -> None:
    args = ["--checkpoint", str(blobs_model), "--data", str(files["blobs.csv"]), "--out", "p.csv"]
    ok(run("predict", *args, cwd=tmp_path))
    labels = np.loadtxt(tmp_path / "p.csv", dtype=np.int64)
    with np.load(files["blobs"]) as archive:
        X = archive["X"]
    expected = gpunn.load(blobs_model, backend="numpy").predict(X).argmax(axis=1)
    np.testing.assert_array_equal(labels, expected)


def test_resume_continues_training(
    trained: tuple[pathlib.Path, str], tmp_path: pathlib.Path
) -> None:
    checkpoint, _ = trained
    args = ["--resume", str(checkpoint), "--epochs", "2", "--save", "more.st"]
    out = ok(run("train", *args, cwd=tmp_path))
    assert f"resumed from {checkpoint} after 3 epochs" in out
    assert re.findall(r"^epoch +(\d+)/(\d+)", out, re.MULTILINE) == [("4", "5"), ("5", "5")]
    model, optimizer, info = gpunn.load_with_optimizer(tmp_path / "more.st", backend="numpy")
    assert info["epoch"] == 5
    assert (
        optimizer is not None and optimizer.step_count == 5 * 40
    )  # 1259 training samples, batches of 32
    before = gpunn.load(checkpoint, backend="numpy")
    assert not np.array_equal(before.flat_params, model.flat_params)
    reported_accuracy(out)


def test_lr_given_on_resume_replaces_the_saved_learning_rate(
    trained: tuple[pathlib.Path, str], tmp_path: pathlib.Path
) -> None:
    """train -> save -> train --resume --lr 0: the resumed optimizer uses the new lr (0: the
    weights come out exactly as they went in), and the next checkpoint records it."""
    checkpoint, _ = trained
    args = ["--resume", str(checkpoint), "--lr", "0", "--epochs", "1", "--quiet"]
    ok(run("train", *args, "--save", "same.st", cwd=tmp_path))
    before, _, _ = gpunn.load_with_optimizer(checkpoint, backend="numpy")
    after, optimizer, info = gpunn.load_with_optimizer(tmp_path / "same.st", backend="numpy")
    assert optimizer is not None and optimizer.lr == 0.0 and info["epoch"] == 4
    np.testing.assert_array_equal(after.flat_params, before.flat_params)


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------


def test_info_lists_every_backend(tmp_path: pathlib.Path) -> None:
    out = ok(run("info", cwd=tmp_path, backend=None))
    assert re.search(r"^  numpy +usable", out, re.MULTILINE)
    cupy = re.search(r"^  cupy(:\d+)? +(.*)$", out, re.MULTILINE)
    assert cupy, out
    state = cupy.group(2)
    assert state.startswith("usable") or re.match(r"not usable: \S", state), state


# --------------------------------------------------------------------------------------------
# Errors: usage (status 2) and runtime (status 1), one line each
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", "--bogus"], ["unrecognized arguments", "--bogus"]),
        (["train", "--backend", "tpu"], ["unknown backend 'tpu'", "numpy"]),
        (["train", "--epochs", "-3"], ["--epochs", "positive integer", "'-3'"]),
        (["train", "--epochs", "0"], ["--epochs", "positive integer"]),
        (["train", "--batch-size", "2.5"], ["--batch-size", "positive integer", "'2.5'"]),
        (["train", "--hidden", "64,x"], ["--hidden", "64,x"]),
        (["train", "--hidden", ""], ["--hidden", "''", "empty width"]),
        (["train", "--hidden", "64,,32"], ["--hidden", "64,,32", "empty width"]),
        (["train", "--momentum", "0.5"], ["--momentum", "sgd only"]),
        (["train", "--threads-per-rank", "2"], ["--threads-per-rank", "--distributed"]),
        (["train", "--distributed", "--threads-per-rank", "0"], ["--threads-per-rank", "'0'"]),
        (["train", "--plot", "out/curves"], ["--plot out/curves", ".png"]),
        (["train", "--plot", "c.xyz"], ["--plot c.xyz", ".png"]),
        (["predict", "--checkpoint", "m", "--data", "x.csv", "--out", "p.json"], [".npz"]),
        (["train", "--lr", "-1"], ["--lr", "'-1'"]),
        (["train", "--dataset", "imagenet"], ["--dataset", "imagenet"]),
        (["train", "--data", "a.npz", "--dataset", "digits"], ["--data", "--dataset"]),
        (["fly"], ["invalid choice", "fly"]),
        ([], ["required", "command"]),
        (["predict", "--data", "x.npz"], ["--checkpoint"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_usage_errors_exit_2_with_one_line(
    tmp_path: pathlib.Path, args: list[str], words: list[str]
) -> None:
    result = run(*args, cwd=tmp_path)
    line = one_line_error(result, 2)
    for word in words:
        assert word in line, line
    assert result.stdout == ""


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
def test_a_non_finite_learning_rate_is_a_usage_error(tmp_path: pathlib.Path, value: str) -> None:
    result = run("train", f"--lr={value}", cwd=tmp_path)
    line = one_line_error(result, 2)
    assert "--lr" in line and f"'{value}'" in line and "finite" in line


def test_ctrl_c_ends_training_with_status_130_and_one_line(tmp_path: pathlib.Path) -> None:
    """SIGINT during training: exit status 130 (128 + SIGINT, as shells report it) and one
    line saying that training was interrupted and what was saved, no traceback."""
    env = dict(os.environ, GPUNN_BACKEND="numpy", GPUNN_DATA=str(tmp_path / "cache"))
    env.update(PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpunn", "train", "--epochs", "100000", "--hidden", "8"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300  # a line per epoch: never wait for ever on a wrong match
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until training is under way
            if re.match(r"epoch +1/", line):
                break
            assert time.monotonic() < deadline, "no 'epoch 1/' line: " + line
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    lines = stderr.splitlines()  # one line: interrupted, and what was saved (here nothing)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gpunn: interrupted ") and "nothing saved" in lines[0]


def test_the_error_line_is_one_line_and_names_unexpected_error_types(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Expected errors (bad values, files, runtime failures) print their message; anything else
    is named by its type, so that a bug does not pass for a message. Line breaks and runs of
    spaces in a message collapse into one line."""
    from gpunn import cli

    cases = [
        (ValueError("bad value:\n  more   detail"), "gpunn: error: bad value: more detail"),
        (FileNotFoundError("x.npz: no such file"), "gpunn: error: x.npz: no such file"),
        (RuntimeError(""), "gpunn: error: RuntimeError"),
        (KeyError("W"), "gpunn: error: KeyError: 'W'"),
        (TypeError("unsupported operand"), "gpunn: error: TypeError: unsupported operand"),
    ]
    for exc, expected in cases:

        def fail(args: object, exc: Exception = exc) -> int:
            raise exc

        monkeypatch.setitem(cli.COMMANDS, "info", fail)
        assert cli.main(["info"]) == 1
        assert capsys.readouterr().err == expected + "\n"


def test_a_usage_error_is_reported_before_choosing_the_backend(tmp_path: pathlib.Path) -> None:
    """With the automatic backend (which may fall back to NumPy with a note), a usage error is
    still the only line on stderr: the command line is checked before any work starts."""
    result = run("train", "--data", "a.npz", "--dataset", "digits", cwd=tmp_path, backend=None)
    line = one_line_error(result, 2)
    assert "--data" in line and "--dataset" in line


def test_explicit_cupy_without_a_gpu_is_a_runtime_error(tmp_path: pathlib.Path) -> None:
    status = gpunn.available_backends()
    if any(s.name.startswith("cupy") and s.usable for s in status):
        pytest.skip("a CUDA GPU is usable here")
    result = run("train", "--backend", "cupy", "--epochs", "1", cwd=tmp_path)
    line = one_line_error(result, 1)
    assert "backend 'cupy' is not available" in line
    reason = next(s.reason for s in status if s.name == "cupy")
    assert " ".join(reason.split()) in line  # says why


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", "--data", "missing.npz"], ["missing.npz", "no such file"]),
        (["train", "--data", "{nan}"], ["nan.npz", "NaN"]),
        (["evaluate", "--checkpoint", "{garbage}"], ["garbage.safetensors", "not a safetensors"]),
        (["train", "--resume", "{garbage}", "--epochs", "1"], ["garbage.safetensors"]),
        (["evaluate", "--checkpoint", "missing.safetensors"], ["missing.safetensors"]),
        (["predict", "--checkpoint", "{garbage}", "--data", "{blobs}"], ["garbage.safetensors"]),
    ],
    ids=[
        "missing-data",
        "nan-data",
        "corrupt-evaluate",
        "corrupt-resume",
        "missing-ckpt",
        "corrupt-predict",
    ],
)
def test_runtime_errors_exit_1_with_one_readable_line(
    tmp_path: pathlib.Path, files: dict[str, pathlib.Path], args: list[str], words: list[str]
) -> None:
    args = [str(files[a[1:-1]]) if a.startswith("{") else a for a in args]
    line = one_line_error(run(*args, cwd=tmp_path), 1)
    assert line.startswith("gpunn: error: ")
    for word in words:
        assert word in line, line


def test_a_non_finite_loss_is_a_runtime_error(tmp_path: pathlib.Path) -> None:
    result = run("train", "--lr", "1e30", "--epochs", "2", "--save", "m.st", cwd=tmp_path)
    line = one_line_error(result, 1)
    assert re.search(r"the loss became (nan|inf|-inf) in epoch \d+, batch \d+", line), line
    assert not (tmp_path / "m.st").exists()


def test_debug_shows_the_traceback(tmp_path: pathlib.Path) -> None:
    result = run("train", "--data", "missing.npz", "--debug", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "FileNotFoundError" in result.stderr and "missing.npz" in result.stderr


# --------------------------------------------------------------------------------------------
# In-process runs of `gpunn` (no interpreter start-up): the workflows across commands
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    status: int
    out: str
    err: str


@pytest.fixture
def gpunn_cli(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Result]:
    """``gpunn_cli(*args)`` runs ``gpunn.cli.main(args)`` in tmp_path on NumPy."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPUNN_BACKEND", "numpy")
    monkeypatch.setenv("GPUNN_DATA", str(tmp_path / "gpunn-cache"))

    def call(*args: str) -> Result:
        status = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(status, out, err)

    return call


def params(path: pathlib.Path) -> tuple[np.ndarray, Any, dict[str, Any]]:
    model, optimizer, info = gpunn.load_with_optimizer(path, backend="numpy")
    return model.flat_params, optimizer, info


def test_evaluate_and_resume_use_the_split_the_checkpoint_was_trained_on(
    gpunn_cli: Callable[..., Result], tmp_path: pathlib.Path
) -> None:
    trained = gpunn_cli("train", "--seed", "5", "--epochs", "2", "--save", "s5.st")
    assert trained.status == 0, trained.err
    data = gpunn.checkpoint.read_info(tmp_path / "s5.st")["data"]
    assert (data["dataset"], data["seed"], data["val"], data["test"]) == ("digits", 5, 0.1, 0.2)
    assert (data["task"], data["classes"]) == ("classification", 10)

    scored = gpunn_cli("evaluate", "--checkpoint", "s5.st")
    assert scored.status == 0, scored.err
    assert "seed 5): the 359 test rows of 1,797, as recorded in the checkpoint" in scored.out
    match = re.search(r"^accuracy: (\d+\.\d\d)%", scored.out, re.MULTILINE)
    assert match and float(match.group(1)) == reported_accuracy(trained.out)

    # resuming for 1 epoch gives bit for bit the model of an uninterrupted 3-epoch run: the
    # same training rows, in the same batch order, from the same optimizer state
    assert gpunn_cli("train", "--resume", "s5.st", "--epochs", "1", "--save", "r.st").status == 0
    assert gpunn_cli("train", "--seed", "5", "--epochs", "3", "--save", "u.st").status == 0
    resumed, opt_r, info_r = params(tmp_path / "r.st")
    straight, opt_u, info_u = params(tmp_path / "u.st")
    np.testing.assert_array_equal(resumed, straight)
    assert opt_r.step_count == opt_u.step_count == 3 * 40  # 1,259 rows in batches of 32
    assert info_r["epoch"] == 3 and info_r["data"] == info_u["data"]


def test_a_spirals_model_is_evaluated_on_spirals(
    gpunn_cli: Callable[..., Result],
) -> None:
    args = ["--dataset", "spirals", "--seed", "2", "--epochs", "2", "--hidden", "16"]
    trained = gpunn_cli("train", *args, "--save", "sp.st")
    scored = gpunn_cli("evaluate", "--checkpoint", "sp.st")
    assert scored.status == 0, scored.err
    assert "spirals, 70% / 10% / 20% split (seed 2): the 600 test rows of 3,000" in scored.out
    assert f"accuracy: {reported_accuracy(trained.out):.2f}%" in scored.out


def test_a_file_model_is_evaluated_on_the_test_rows_of_that_file(
    gpunn_cli: Callable[..., Result], files: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    data = tmp_path / "b.csv"
    data.write_bytes(files["blobs.csv"].read_bytes())
    trained = gpunn_cli("train", "--data", "b.csv", "--epochs", "3", "--save", "b.st")
    assert trained.status == 0, trained.err
    scored = gpunn_cli("evaluate", "--checkpoint", "b.st")
    assert "the 60 test rows of 300, as recorded in the checkpoint" in scored.out
    assert f"accuracy: {reported_accuracy(trained.out):.2f}%" in scored.out

    every = gpunn_cli("evaluate", "--checkpoint", "b.st", "--data", "b.csv")
    assert "b.csv: every row (300 samples)" in every.out
    assert "is the file b.st was trained on" in every.err and "training rows" in every.err

    with open(data, "a") as fh:
        fh.write("1,2,3,4,0\n")
    changed = gpunn_cli("evaluate", "--checkpoint", "b.st")
    assert changed.status == 1 and "has changed since the model was trained" in changed.err


@pytest.fixture(scope="module")
def digits_st(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A digits model (seed 5, 1 epoch, Adam) saved with its data source."""
    root = tmp_path_factory.mktemp("cli-inproc")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("GPUNN_BACKEND", "numpy")
        assert cli.main(["train", "--seed", "5", "--epochs", "1", "--quiet", "--save", "m.st"]) == 0
    return root / "m.st"


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--hidden", "64"], ["--hidden 64", "hidden is 128"]),
        (["--activation", "tanh"], ["--activation tanh", "relu"]),
        (["--optimizer", "sgd"], ["--optimizer sgd", "adam"]),
        (["--dtype", "float64"], ["--dtype float64", "float32"]),
        (["--momentum", "0.5"], ["--momentum", "sgd only", "Adam"]),
        (["--seed", "3"], ["--seed 3", "seed 5", "test rows"]),
        (["--task", "regression"], ["--task regression", "classification model"]),
        (["--model", "lenet"], ["--model lenet", "model is mlp"]),
        (["--input-shape", "1,8,8"], ["--input-shape applies to --model lenet", "mlp model"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v[0].startswith("--") else None,
)
def test_resume_refuses_flags_that_would_change_the_model_or_its_data(
    gpunn_cli: Callable[..., Result], digits_st: pathlib.Path, flags: list[str], words: list[str]
) -> None:
    result = gpunn_cli("train", "--resume", digits_st, "--epochs", "1", *flags)
    assert result.status == 2 and result.out == ""
    assert len(result.err.splitlines()) == 1
    for word in words:
        assert word in result.err, result.err


def test_resume_takes_a_new_learning_rate_and_says_so(
    gpunn_cli: Callable[..., Result], digits_st: pathlib.Path
) -> None:
    result = gpunn_cli("train", "--resume", digits_st, "--epochs", "1", "--lr", "0.0005")
    assert result.status == 0, result.err
    assert "learning rate set to 0.0005 (the checkpoint's was 0.001)" in result.err
    assert "Adam (lr 0.0005" in result.out


def test_evaluate_refuses_another_seed_and_announces_other_data(
    gpunn_cli: Callable[..., Result], digits_st: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    other = gpunn_cli("evaluate", "--checkpoint", digits_st, "--seed", "0")
    assert other.status == 2 and "--seed 0 conflicts" in other.err
    same = gpunn_cli("evaluate", "--checkpoint", digits_st, "--seed", "5", "--dataset", "digits")
    assert same.status == 0 and "as recorded in the checkpoint" in same.out
    # a checkpoint without a data entry (saved from Python): evaluate says what it assumes
    gpunn.load(digits_st, backend="numpy").save(tmp_path / "plain.st")
    old = gpunn_cli("evaluate", "--checkpoint", "plain.st")
    assert old.status == 0
    assert "does not record the data it was trained on" in old.err
    assert "digits, 70% / 10% / 20% split (seed 0)" in old.err


def write_npz(path: pathlib.Path, X: np.ndarray, y: np.ndarray) -> pathlib.Path:
    np.savez(path, X=X, y=y)
    return path


def test_labels_1_to_10_are_refused_with_a_hint_or_trained_as_regression_on_request(
    gpunn_cli: Callable[..., Result], tmp_path: pathlib.Path
) -> None:
    rng = np.random.default_rng(0)
    write_npz(tmp_path / "l.npz", rng.normal(size=(100, 3)), np.arange(100) % 10 + 1)
    refused = gpunn_cli("train", "--data", "l.npz", "--epochs", "1")
    assert refused.status == 1 and refused.out == ""
    assert "labels 1..10 never use 0 (labels 1..K: subtract 1 from each)" in refused.err
    regression = gpunn_cli("train", "--data", "l.npz", "--epochs", "1", "--task", "regression")
    assert regression.status == 0, regression.err
    assert "task:    regression, mean squared error (as asked)" in regression.out


def test_fractional_labels_on_a_classification_model_are_named_as_such(
    gpunn_cli: Callable[..., Result], digits_st: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    X, y = digits()
    y = y[:50].astype(np.float64)
    y[7] = 2.5
    write_npz(tmp_path / "f.npz", X[:50], y)
    result = gpunn_cli("evaluate", "--checkpoint", digits_st, "--data", "f.npz")
    assert result.status == 1
    assert "whole-number labels 0..K-1, but row 8 holds 2.5" in result.err
    assert "shape" not in result.err


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--save", "nodir/m.st"], ["--save nodir/m.st", "folder nodir does not exist", "mkdir"]),
        (["--save", "."], ["--save .", "is a folder"]),
        (["--plot", "nodir/c.png"], ["--plot nodir/c.png", "does not exist"]),
    ],
)
def test_output_paths_are_checked_before_training(
    gpunn_cli: Callable[..., Result], flags: list[str], words: list[str]
) -> None:
    result = gpunn_cli("train", "--epochs", "1", *flags)
    assert result.status == 1 and result.out == ""  # no epoch was trained
    for word in words:
        assert word in result.err, result.err


def test_an_unwritable_save_folder_is_found_before_training(
    gpunn_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:  # as a read-only folder does (not for root)
        raise PermissionError(13, "Permission denied", "out/.m.st.probe-123")

    pathlib.Path("out").mkdir()
    monkeypatch.setattr(cli.tempfile, "mkstemp", refused)
    result = gpunn_cli("train", "--epochs", "1", "--save", "out/m.st")
    assert result.status == 1 and result.out == ""
    assert "--save out/m.st: cannot write in the folder out (Permission denied)" in result.err
    assert "probe" not in result.err


def test_plot_without_matplotlib_is_refused_before_training(
    gpunn_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = gpunn_cli("train", "--epochs", "1", "--plot", "c.png")
    assert result.status == 1 and result.out == ""
    assert "--plot c.png needs matplotlib" in result.err and "gpunn[plot]" in result.err


def test_a_bad_backend_variable_is_named(
    gpunn_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUNN_BACKEND", "bogus")
    result = gpunn_cli("train", "--epochs", "1")
    assert result.status == 2 and "environment variable GPUNN_BACKEND" in result.err


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The automatic backend with CuPy missing: it falls back to NumPy."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    backend_module._clear_probe_cache()
    yield
    backend_module._clear_probe_cache()


NO_GPU_NOTE = "no usable CUDA GPU, running on the CPU with NumPy ('gpunn info' says why)"


def test_the_cpu_fallback_is_one_short_note_and_none_with_quiet(
    gpunn_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, no_gpu: None
) -> None:
    monkeypatch.delenv("GPUNN_BACKEND")
    loud = gpunn_cli("train", "--dataset", "blobs", "--epochs", "1", "--save", "b.st")
    notes = [line for line in loud.err.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: no usable CUDA GPU, running on the CPU with NumPy ('gpunn info' says why)"
    ]
    backend_module._clear_probe_cache()
    quiet = gpunn_cli("train", "--dataset", "blobs", "--epochs", "1", "--quiet")
    assert quiet.status == 0 and quiet.err == ""


def interrupt_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int, after_steps: int) -> None:
    """Make Ctrl-C arrive in the middle of ``epoch`` (after some of its steps)."""
    real_epoch = loop._epoch
    calls = {"epochs": 0}

    def epoch_with_interrupt(model: Any, loss: Any, optimizer: Any, *args: Any) -> Any:
        calls["epochs"] += 1
        if calls["epochs"] == epoch:
            real_step, steps = optimizer.step, {"n": 0}

            def step(m: Any) -> None:
                steps["n"] += 1
                if steps["n"] > after_steps:
                    raise KeyboardInterrupt
                real_step(m)

            optimizer.step = step
        return real_epoch(model, loss, optimizer, *args)

    monkeypatch.setattr(loop, "_epoch", epoch_with_interrupt)


def test_ctrl_c_saves_the_last_finished_epoch(
    gpunn_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    args = ["--dataset", "blobs", "--seed", "1", "--epochs", "5"]
    interrupt_in_epoch(monkeypatch, epoch=3, after_steps=7)
    result = gpunn_cli("train", *args, "--save", "m.st")
    assert result.status == 130
    assert "interrupted; saved the weights after epoch 2 to m.st" in result.err
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPUNN_BACKEND", "numpy")
    assert gpunn_cli("train", *args[:-1], "2", "--save", "two.st").status == 0
    saved, opt_s, info_s = params(tmp_path / "m.st")
    two, opt_2, info_2 = params(tmp_path / "two.st")
    np.testing.assert_array_equal(saved, two)  # the end of epoch 2, not 7 steps into epoch 3
    assert opt_s.step_count == opt_2.step_count and info_s["epoch"] == 2
    np.testing.assert_array_equal(opt_s.state["exp_avg"], opt_2.state["exp_avg"])
    assert info_s["data"] == info_2["data"]


def test_ctrl_c_without_save_or_before_an_epoch_finished_saves_nothing(
    gpunn_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    interrupt_in_epoch(monkeypatch, epoch=2, after_steps=3)
    result = gpunn_cli("train", "--dataset", "blobs", "--epochs", "3")
    assert result.status == 130 and "after epoch 1: nothing saved (--save PATH" in result.err
    interrupt_in_epoch(monkeypatch, epoch=1, after_steps=3)
    first = gpunn_cli("train", "--dataset", "blobs", "--epochs", "3", "--save", "m.st")
    assert first.status == 130 and "before the first epoch finished" in first.err
    assert not (tmp_path / "m.st").exists()


def test_sigint_during_training_saves_finished_epochs(tmp_path: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(GPUNN_BACKEND="numpy", PYTHONUNBUFFERED="1")
    args = ["--dataset", "blobs", "--epochs", "100000", "--save", "m.st"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpunn", "train", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300  # a line per epoch: never wait for ever on a wrong match
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # a line as each epoch ends: wait until two are done
            if re.match(r"epoch +3/", line):
                break
            assert time.monotonic() < deadline, "no 'epoch 3/' line: " + line
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    match = re.search(r"saved the weights after epoch (\d+) to m\.st", err)
    assert match, err
    _, _, info = params(tmp_path / "m.st")
    assert info["epoch"] == int(match.group(1)) >= 2


@pytest.mark.parametrize("args", [["info"], ["train", "--help"]])
def test_a_closed_pipe_ends_gpunn_quietly(tmp_path: pathlib.Path, args: list[str]) -> None:
    """`gpunn ... | head` ends without a traceback or "Broken pipe" message."""
    env = dict(os.environ, GPUNN_BACKEND="numpy")
    env.pop("PYTHONUNBUFFERED", None)  # unbuffered, argparse's help swallows the error: exit 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpunn", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before gpunn writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert err == ""


def test_predict_gives_probabilities_on_request(
    gpunn_cli: Callable[..., Result], digits_st: pathlib.Path, files: dict[str, pathlib.Path]
) -> None:
    data = files["digits-test"]
    labels = gpunn_cli("predict", "--checkpoint", digits_st, "--data", data)
    proba = gpunn_cli("predict", "--checkpoint", digits_st, "--data", data, "--proba")
    assert proba.status == 0, proba.err
    P = np.loadtxt(io.StringIO(proba.out), delimiter=",")
    assert P.shape == (359, 10) and (P >= 0).all()
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(P.argmax(axis=1), np.loadtxt(io.StringIO(labels.out)))
    gpunn_cli("predict", "--checkpoint", digits_st, "--data", data, "--proba", "--out", "p.npz")
    with np.load("p.npz") as archive:
        np.testing.assert_allclose(archive["proba"], P, atol=1e-6)


def test_predict_on_binary_and_regression_models(
    gpunn_cli: Callable[..., Result], tmp_path: pathlib.Path, files: dict[str, pathlib.Path]
) -> None:
    X, y = blobs(200, centers=2, features=1, seed=3)
    write_npz(tmp_path / "two.npz", X, y)
    assert gpunn_cli("train", "--data", "two.npz", "--epochs", "2", "--save", "two.st").status == 0
    (tmp_path / "one.csv").write_text("\n".join(f"{v:.6f}" for v in X[:20, 0]) + "\n")
    proba = gpunn_cli("predict", "--checkpoint", "two.st", "--data", "one.csv", "--proba")
    assert proba.status == 0, proba.err
    P = np.loadtxt(io.StringIO(proba.out), delimiter=",")
    assert P.shape == (20, 2)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-6)

    reg = files["regression.csv"]
    assert gpunn_cli("train", "--data", reg, "--epochs", "2", "--save", "r.st").status == 0
    values = gpunn_cli("predict", "--checkpoint", "r.st", "--data", reg)
    assert "the last column is taken as labels and ignored" in values.err
    got = np.loadtxt(io.StringIO(values.out))
    Xr, _ = gpunn.datasets.load_file(reg)
    want = gpunn.load(tmp_path / "r.st", backend="numpy").predict(Xr)[:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-6)  # values, not 0/1 labels
    refused = gpunn_cli("predict", "--checkpoint", "r.st", "--data", reg, "--proba")
    assert refused.status == 2 and "regression model" in refused.err


def test_spirals_trains_well_with_its_defaults(gpunn_cli: Callable[..., Result]) -> None:
    result = gpunn_cli("train", "--dataset", "spirals", "--quiet")
    assert result.status == 0, result.err
    assert reported_accuracy(result.out) >= 99.0  # the data set's docstring promises 100 %


def test_version_and_help(gpunn_cli: Callable[..., Result]) -> None:
    version = gpunn_cli("--version")
    assert version.status == 0 and version.out.strip() == f"gpunn {gpunn.__version__}"
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("info", "train", "evaluate", "predict"):
        for action in subparsers.choices[name]._actions:
            assert action.help, (name, action.option_strings)
    train = gpunn_cli("train", "--help").out
    assert "--seed N" in train and "(default: 0; with --resume: the checkpoint's)" in train
    assert "spirals        64,64     50        32            0.01" in train
    lenet = train[train.index("  --model lenet\n") :]  # the table of --model lenet's defaults
    assert "digits                   30        32            0.001" in lenet
    assert "(default: relu)" in train and "(default: adam)" in train
    evaluate = gpunn_cli("evaluate", "--help").out
    assert "scores the test rows of the split" in evaluate and "every row" in evaluate
    predict = gpunn_cli("predict", "--help").out
    assert "class label" in predict and "--proba" in predict


# --------------------------------------------------------------------------------------------
# --model lenet: a CNN on images
# --------------------------------------------------------------------------------------------


def _main(args: list[str]) -> Result:
    """``gpunn.cli.main(args)`` in the current folder, its stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in args])
    return Result(status, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def lenet_st(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, Result]:
    """``--model lenet`` trained on the digits images for 1 epoch (seed 1) and saved."""
    root = tmp_path_factory.mktemp("cli-lenet")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("GPUNN_BACKEND", "numpy")
        args = ["train", "--dataset", "digits", "--model", "lenet", "--seed", "1"]
        result = _main([*args, "--epochs", "1", "--save", "cnn.st"])
    assert result.status == 0, result.err
    return root / "cnn.st", result


def _image_model(path: pathlib.Path) -> Any:
    return gpunn.load(path, backend="numpy")


def test_lenet_trains_a_cnn_on_the_digits_images(lenet_st: tuple[pathlib.Path, Result]) -> None:
    path, trained = lenet_st
    assert "1,797 images of 1x8x8: 1,259 train, 179 validation, 359 test" in trained.out
    assert "Conv2D(3x3, pad 1)" in trained.out and "MaxPool2D(2x2)" in trained.out
    assert "30 epochs" not in trained.out and "1 epoch, batch size 32" in trained.out
    assert reported_accuracy(trained.out) > 50.0  # one epoch; the defaults reach far more
    info = gpunn.checkpoint.read_info(path)
    assert info["input_shape"] == [1, 8, 8]
    kinds = [layer["kind"] for layer in info["architecture"]]
    assert kinds[:3] == ["Conv2D", "ReLU", "MaxPool2D"] and "Flatten" in kinds
    assert info["data"]["dataset"] == "digits" and info["epoch"] == 1


def test_a_lenet_checkpoint_is_evaluated_resumed_and_predicts_on_images(
    lenet_st: tuple[pathlib.Path, Result],
    gpunn_cli: Callable[..., Result],
    files: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
) -> None:
    path, trained = lenet_st
    scored = gpunn_cli("evaluate", "--checkpoint", path)
    assert scored.status == 0, scored.err
    assert "the 359 test rows of 1,797, as recorded in the checkpoint" in scored.out
    assert f"accuracy: {reported_accuracy(trained.out):.2f}%" in scored.out

    # the flat rows of a file are read as the model's 1x8x8 images, row by row
    predicted = gpunn_cli("predict", "--checkpoint", path, "--data", files["digits-test"])
    assert predicted.status == 0, predicted.err
    labels = np.array(predicted.out.split(), dtype=np.int64)
    X_test = np.load(files["digits-test"])["X"]
    model = _image_model(path)
    logits = model.predict(X_test.reshape(-1, 1, 8, 8))
    np.testing.assert_array_equal(labels, logits.argmax(axis=1))

    resumed = gpunn_cli("train", "--resume", path, "--epochs", "1", "--save", "r.st")
    assert resumed.status == 0, resumed.err
    assert f"resumed from {path} after 1 epoch" in resumed.out
    assert "1 epoch, batch size 32" in resumed.out  # --model lenet's digits default
    again = gpunn.checkpoint.read_info(tmp_path / "r.st")
    assert again["epoch"] == 2 and again["input_shape"] == [1, 8, 8]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--model", "mlp"], ["--model mlp", "model is lenet"]),
        (
            ["--hidden", "32"],
            ["--hidden sets up --model mlp", "a lenet model, uses the layers of its preset"],
        ),
        (["--activation", "tanh"], ["--activation sets up --model mlp"]),
        (["--input-shape", "1,28,28"], ["--input-shape 1x28x28", "input-shape is 1x8x8"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v[0].startswith("--") else None,
)
def test_resuming_a_lenet_checkpoint_refuses_flags_of_another_model(
    lenet_st: tuple[pathlib.Path, Result],
    gpunn_cli: Callable[..., Result],
    flags: list[str],
    words: list[str],
) -> None:
    result = gpunn_cli("train", "--resume", lenet_st[0], "--epochs", "1", *flags)
    assert result.status == 2 and result.out == "", result.err
    assert len(result.err.splitlines()) == 1
    for word in words:
        assert word in result.err, result.err


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--dataset", "spirals", "--model", "lenet"], ["needs images", "spirals is not"]),
        (["--model", "lenet", "--hidden", "64"], ["--hidden sets up --model mlp"]),
        (["--model", "lenet", "--activation", "tanh"], ["--activation sets up --model mlp"]),
        (["--input-shape", "1,8,8"], ["--input-shape applies to --model lenet"]),
        (
            ["--model", "lenet", "--input-shape", "1,4,16"],
            ["--input-shape 1x4x16 conflicts with digits", "1x8x8"],
        ),
        (["--model", "lenet", "--input-shape", "1,8"], ["--input-shape", "C,H,W"]),
        (["--model", "cnn"], ["--model", "invalid choice"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v[0].startswith("--") else None,
)
def test_model_flags_that_do_not_fit_are_usage_errors(
    gpunn_cli: Callable[..., Result], flags: list[str], words: list[str]
) -> None:
    result = gpunn_cli("train", *flags)
    assert result.status == 2 and result.out == "", result.err
    assert len(result.err.splitlines()) == 1
    for word in words:
        assert word in result.err, result.err


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """The first 120 digits as a flat CSV (64 pixels, label last) and as an .npz of images."""
    root = tmp_path_factory.mktemp("cli-images")
    X, y = digits()
    X, y = X[:120], y[:120]
    np.savetxt(root / "flat.csv", np.column_stack([X, y]), delimiter=",", fmt="%.6g")
    np.savetxt(root / "pixels.csv", X, delimiter=",", fmt="%.6g")
    np.savez(root / "images.npz", X=X.reshape(-1, 1, 8, 8), y=y)
    return {p.name: p for p in root.iterdir()}


def test_lenet_on_flat_rows_needs_their_image_shape(
    gpunn_cli: Callable[..., Result], digit_files: dict[str, pathlib.Path]
) -> None:
    flat = digit_files["flat.csv"]
    refused = gpunn_cli("train", "--data", flat, "--model", "lenet", "--epochs", "1")
    assert refused.status == 2 and refused.out == "", refused.err
    assert "rows of" in refused.err and "are flat (64 values each)" in refused.err
    assert "--input-shape C,H,W" in refused.err and len(refused.err.splitlines()) == 1

    wrong = gpunn_cli("train", "--data", flat, "--model", "lenet", "--input-shape", "2,4,4")
    assert wrong.status == 1 and "2x4x4 images hold 32 values, but the rows have 64" in wrong.err
    odd = gpunn_cli("train", "--data", flat, "--model", "lenet", "--input-shape", "1,4,16")
    assert odd.status == 1 and "no network for 1x4x16 images" in odd.err

    args = ["--model", "lenet", "--input-shape", "1,8,8", "--epochs", "1", "--seed", "2"]
    trained = gpunn_cli("train", "--data", flat, *args, "--save", "f.st")
    assert trained.status == 0, trained.err
    assert "120 images of 1x8x8: 84 train, 12 validation, 24 test" in trained.out
    assert gpunn.checkpoint.read_info("f.st")["input_shape"] == [1, 8, 8]
    # the file's image twin trains the very same model, no --input-shape needed
    images = ["--data", digit_files["images.npz"], *args[:1], "lenet", *args[4:]]
    twin = gpunn_cli("train", *images, "--save", "i.st")
    assert twin.status == 0, twin.err
    np.testing.assert_array_equal(params(pathlib.Path("f.st"))[0], params(pathlib.Path("i.st"))[0])

    # a CSV of 64 pixels per row predicts through the model's 1x8x8 input
    pixels = gpunn_cli("predict", "--checkpoint", "i.st", "--data", digit_files["pixels.csv"])
    assert pixels.status == 0, pixels.err
    model = _image_model(pathlib.Path("i.st"))
    expected = model.predict(np.load(digit_files["images.npz"])["X"]).argmax(axis=1)
    np.testing.assert_array_equal(np.array(pixels.out.split(), dtype=np.int64), expected)
    mismatch = gpunn_cli("evaluate", "--checkpoint", "i.st", "--data", files_of_width(63))
    assert mismatch.status == 1 and "takes 1x8x8 images per sample" in mismatch.err


def files_of_width(width: int) -> pathlib.Path:
    """A CSV in the current folder of 10 rows of ``width`` features and a label."""
    path = pathlib.Path(f"w{width}.csv")
    rows = np.column_stack([np.zeros((10, width)), np.arange(10) % 2])
    np.savetxt(path, rows, delimiter=",", fmt="%g")
    return path


def test_the_ctrl_c_snapshot_restores_batchnorm_statistics_with_the_weights() -> None:
    """What Ctrl-C saves is the model as it was at the end of the last finished epoch: its
    running statistics too, not those a half epoch later."""
    layers = [gpunn.Dense(4, 6), gpunn.BatchNorm1D(6), gpunn.ReLU(), gpunn.Dense(6, 3)]
    model = gpunn.Sequential(layers, backend="numpy", seed=0)
    optimizer = gpunn.SGD(0.1)
    snapshot = cli._epoch_snapshot()
    snapshot.model, snapshot.optimizer = model, optimizer  # what fit's set_context gives it
    X, y = np.random.default_rng(0).standard_normal((16, 4)), np.arange(16) % 3
    model.fit(X, y, loss=gpunn.SoftmaxCrossEntropy(), optimizer=optimizer, epochs=1, verbose=0)
    snapshot.on_epoch_end(1, {})
    params, stats = model.flat_params.copy(), model.flat_state.copy()
    model.fit(X, y, loss=gpunn.SoftmaxCrossEntropy(), optimizer=optimizer, epochs=1, verbose=0)
    assert not np.array_equal(model.flat_state, stats)  # half an epoch (here one) moved them
    assert snapshot.restore() == 1
    np.testing.assert_array_equal(model.flat_params, params)
    np.testing.assert_array_equal(model.flat_state, stats)


def test_cifar10_trains_lenet5_on_its_colour_images(
    gpunn_cli: Callable[..., Result], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--dataset cifar10 --model lenet``: LeNet-5 on 3x32x32 images, its own test set; the
    archive (a small one in the official binary format) is already in the cache."""
    import hashlib
    import tarfile

    from gpunn.datasets import cifar

    rng = np.random.default_rng(0)
    records = rng.integers(0, 256, (40, 3073), dtype=np.uint8)
    records[:, 0] = np.arange(40) % 10  # every class in the training rows, and in the test
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        chunks = [records[i * 6 : (i + 1) * 6] for i in range(5)] + [records[30:]]
        for name, chunk in zip(names, chunks, strict=True):
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = chunk.nbytes
            tar.addfile(info, io.BytesIO(chunk.tobytes()))
    body = archive.getvalue()
    cached = tmp_path / "gpunn-cache" / "cifar10" / cifar.ARCHIVE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(body)
    monkeypatch.setitem(cifar.PINNED, cifar.ARCHIVE, (len(body), hashlib.sha256(body).hexdigest()))

    args = ["--dataset", "cifar10", "--model", "lenet", "--epochs", "1"]
    trained = gpunn_cli("train", *args, "--save", "c.st")
    assert trained.status == 0, trained.err
    assert "cifar10, the official test set, 10% of the rest for validation" in trained.out
    assert "40 images of 3x32x32: 27 train, 3 validation, 10 test" in trained.out
    # --model lenet's cifar10 defaults (the MLP's batch size would be 128)
    assert "Conv2D(5x5, pad 2)" in trained.out and "1 epoch, batch size 64" in trained.out
    assert gpunn.checkpoint.read_info("c.st")["input_shape"] == [3, 32, 32]
    scored = gpunn_cli("evaluate", "--checkpoint", "c.st")
    assert scored.status == 0, scored.err
    assert f"accuracy: {reported_accuracy(trained.out):.2f}%" in scored.out
    flat = gpunn_cli("train", "--dataset", "cifar10", "--epochs", "1", "--hidden", "16")
    assert flat.status == 0 and "40 samples x 3072 features" in flat.out, flat.err
    assert "1 epoch, batch size 128" in flat.out
