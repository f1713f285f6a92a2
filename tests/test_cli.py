"""Tests for the `gpunn` command, run as a subprocess: train, evaluate, predict, info, errors."""

from __future__ import annotations

import csv
import os
import pathlib
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import gpunn
from gpunn.datasets import blobs, digits, train_val_test_split

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
    assert out.startswith("backend: ")
    assert "Backend('numpy')" in out.splitlines()[0]
    assert "digits: 1797 samples, 64 features" in out
    assert "30 epochs, batch size 32" in out
    assert len(re.findall(r"^epoch \d+/30 ", out, re.MULTILINE)) == 30
    assert 90.0 <= reported_accuracy(out) <= 100.0
    assert re.search(r"^throughput: [\d,]+ samples/s on numpy", out, re.MULTILINE)
    assert list(tmp_path.iterdir()) == []  # writes nothing unless asked


def test_train_spirals_with_two_hidden_layers(tmp_path: pathlib.Path) -> None:
    out = ok(
        run("train", "--dataset", "spirals", "--hidden", "64,64", "--epochs", "2", cwd=tmp_path)
    )
    assert "spirals: 3000 samples, 2 features" in out
    model_line = next(line for line in out.splitlines() if line.startswith("model:"))
    widths = re.findall(r"Dense\(in_features=(\d+), out_features=(\d+)", model_line)
    assert widths == [("2", "64"), ("64", "64"), ("64", "3")]
    assert reported_accuracy(out) > 33.4  # better than chance after 2 epochs


@pytest.mark.parametrize("name", ["blobs", "blobs.csv"])
def test_train_on_a_data_file(
    tmp_path: pathlib.Path, files: dict[str, pathlib.Path], name: str
) -> None:
    out = ok(run("train", "--data", str(files[name]), "--epochs", "5", cwd=tmp_path))
    assert f"{files[name]}: 300 samples, 4 features" in out
    assert "Dense(in_features=4" in out and "out_features=3, init=None)]" in out
    assert reported_accuracy(out) >= 90.0  # well-separated blobs


def test_train_regression_from_csv(tmp_path: pathlib.Path, files: dict[str, pathlib.Path]) -> None:
    out = ok(run("train", "--data", str(files["regression.csv"]), "--epochs", "3", cwd=tmp_path))
    assert "test accuracy" not in out
    assert re.search(r"^test loss: \d+\.\d+", out, re.MULTILINE)


def test_quiet_prints_no_progress(tmp_path: pathlib.Path) -> None:
    out = ok(run("train", "--epochs", "3", "--quiet", cwd=tmp_path))
    assert not re.search(r"^epoch \d", out, re.MULTILINE)
    assert "━" not in out
    reported_accuracy(out)
    assert "samples/s" in out


def test_plot_writes_a_png(tmp_path: pathlib.Path) -> None:
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
    assert "all 300 samples" in out


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
    assert f"resumed from {checkpoint} after epoch 3" in out
    assert re.findall(r"^epoch (\d+)/(\d+)", out, re.MULTILINE) == [("4", "5"), ("5", "5")]
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
    """SIGINT during training: exit status 130 (128 + SIGINT, as shells report it) and the one
    line "gpunn: interrupted", no traceback."""
    env = dict(os.environ, GPUNN_BACKEND="numpy", GPUNN_DATA=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpunn", "train", "--epochs", "100000", "--hidden", "8"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until training is under way
            if line.startswith("epoch 1/"):
                break
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.splitlines() == ["gpunn: interrupted"]


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
