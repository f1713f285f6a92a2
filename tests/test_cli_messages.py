"""Tests for what the `gpunn` command says when a user gets something wrong: each message names
the right file and flag, in one line, and --help shows every default. Run in-process (fast)."""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import pytest

import gpunn
from gpunn import cli


@pytest.fixture(autouse=True)
def _numpy_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("GPUNN_BACKEND", "numpy")
    monkeypatch.setenv("GPUNN_DATA", str(tmp_path / "gpunn-cache"))  # never the user's cache
    monkeypatch.chdir(tmp_path)


def gpunn_cmd(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `gpunn ARGS`, run in this process."""
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def error_line(capsys: pytest.CaptureFixture[str], status: int, *args: str) -> str:
    """The one line on stderr of `gpunn ARGS`, which must fail with ``status``."""
    got, out, err = gpunn_cmd(capsys, *args)
    assert got == status, (got, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# A mistyped flag is reported by its command, with the flag meant
# --------------------------------------------------------------------------------------------


def test_an_unknown_flag_is_reported_by_its_command_with_the_closest_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = error_line(capsys, 2, "train", "--hiden", "32")
    assert line == (
        "gpunn train: unrecognized arguments: --hiden 32 (did you mean --hidden?) "
        "(see 'gpunn train --help')"
    )


def test_an_unknown_flag_of_another_command_points_to_that_commands_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = error_line(capsys, 2, "evaluate", "--checkpoint", "m.ckpt", "--quiet")
    assert line.startswith("gpunn evaluate: unrecognized arguments: --quiet")
    assert line.endswith("(see 'gpunn evaluate --help')")
    line = error_line(capsys, 2, "bench", "--bach-sizes=4")
    assert "gpunn bench: unrecognized arguments: --bach-sizes=4" in line
    assert "did you mean --batch-sizes?" in line


@pytest.mark.parametrize(
    ("args", "given", "meant"),
    [
        (("train", "--epoch", "3"), "--epoch 3", "--epochs"),
        (("bench", "--batch-size=4"), "--batch-size=4", "--batch-sizes"),
        (("train", "--hid", "32"), "--hid 32", "--hidden"),
    ],
)
def test_an_abbreviated_flag_is_refused_not_guessed(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], given: str, meant: str
) -> None:
    # argparse would silently take a prefix for the whole flag (a 54 s sweep ran on
    # --batch-size=4): the user must spell the flag out, and is told which one
    line = error_line(capsys, 2, *args)
    assert f"unrecognized arguments: {given} (did you mean {meant}?)" in line


# --------------------------------------------------------------------------------------------
# --help lists every default
# --------------------------------------------------------------------------------------------


def _options_with_defaults() -> list[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == {"info", "train", "evaluate", "predict", "bench"}
    return [
        (name, sub, action)
        for name, sub in commands.choices.items()
        for action in sub._actions
        if action.option_strings
        and not any(action.default is v for v in (None, False, argparse.SUPPRESS))  # 0 counts
    ]


@pytest.mark.parametrize(
    "item", _options_with_defaults(), ids=lambda i: f"{i[0]} {i[2].option_strings[-1]}"
)
def test_help_shows_the_default_of_every_option(
    item: tuple[str, argparse.ArgumentParser, argparse.Action],
) -> None:
    _, sub, action = item
    assert action.help, f"{action.option_strings} has no help line, so no default shown"
    text = sub._get_formatter()._expand_help(action)
    assert "default" in text, text
    if "%(default)" in action.help or "(default: %(default)s)" in text:
        assert str(action.default) in text, text


def test_a_default_of_zero_is_shown_too() -> None:
    """0 == False in Python: a check written `default not in (None, False)` hid it."""
    parser = cli._Parser(prog="x")
    parser.add_argument("--start", type=int, default=0, help="first index")
    parser.add_argument("--flag", action="store_true", help="a switch")
    text = parser.format_help()
    assert "first index (default: 0)" in text and "(default: False)" not in text


def test_bench_help_fits_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = gpunn_cmd(capsys, "bench", "--help")
    assert status == 0
    too_long = [line for line in out.splitlines() if len(line) > 100]
    assert not too_long, too_long


# --------------------------------------------------------------------------------------------
# Missing files and checkpoints that do not fit the data name the right file
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "--checkpoint", "nope.ckpt"],
        ["train", "--resume", "nope.ckpt", "--epochs", "1"],
        ["predict", "--checkpoint", "nope.ckpt", "--data", "x.csv"],
    ],
    ids=["evaluate", "resume", "predict"],
)
def test_a_missing_checkpoint_is_one_plain_line(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert error_line(capsys, 1, *args) == "gpunn: error: nope.ckpt: no such file"


def test_a_folder_given_as_a_checkpoint_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    (tmp_path / "runs").mkdir()
    line = error_line(capsys, 1, "evaluate", "--checkpoint", "runs")
    assert line == "gpunn: error: runs: is a folder, not a checkpoint file"
    with pytest.raises(FileNotFoundError, match=r"^nope\.ckpt: no such file$"):
        gpunn.load("nope.ckpt")


@pytest.fixture
def three_class_model(tmp_path: pathlib.Path) -> pathlib.Path:
    """A 2-feature, 3-class checkpoint saved from Python (it records no data)."""
    model = gpunn.Sequential(
        [gpunn.Dense(2, 4), gpunn.ReLU(), gpunn.Dense(4, 3)], backend="numpy", seed=0
    )
    model.save(tmp_path / "spiral.ckpt")
    return tmp_path / "spiral.ckpt"


def test_predict_on_data_of_another_width_blames_the_checkpoint_and_names_the_data(
    capsys: pytest.CaptureFixture[str], three_class_model: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    np.savez(tmp_path / "four.npz", X=np.zeros((5, 4), np.float32))
    line = error_line(capsys, 1, "predict", "--checkpoint", "spiral.ckpt", "--data", "four.npz")
    assert line == "gpunn: error: spiral.ckpt takes 2 features per sample; four.npz has 4 features"


def test_evaluate_on_data_of_another_width_names_both_files(
    capsys: pytest.CaptureFixture[str], three_class_model: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    np.savez(tmp_path / "four.npz", X=np.zeros((5, 4), np.float32), y=np.arange(5) % 3)
    line = error_line(capsys, 1, "evaluate", "--checkpoint", "spiral.ckpt", "--data", "four.npz")
    assert line == "gpunn: error: spiral.ckpt takes 2 features per sample; four.npz has 4 features"


# --------------------------------------------------------------------------------------------
# Resuming: the task line says where the task came from
# --------------------------------------------------------------------------------------------


@pytest.fixture
def spirals_ckpt(capsys: pytest.CaptureFixture[str]) -> str:
    status, _, err = gpunn_cmd(
        capsys, "train", "--dataset", "spirals", "--epochs", "1", "--save", "s.ckpt", "--quiet"
    )
    assert status == 0, err
    return "s.ckpt"


def test_a_resumed_task_is_the_checkpoints_not_as_asked(
    capsys: pytest.CaptureFixture[str], spirals_ckpt: str
) -> None:
    status, out, err = gpunn_cmd(capsys, "train", "--resume", spirals_ckpt, "--epochs", "1")
    assert status == 0, err
    task = next(line for line in out.splitlines() if line.startswith("task:"))
    assert task == (
        "task:    classification, 3 classes, softmax cross-entropy (as recorded in s.ckpt)"
    )
    status, out, err = gpunn_cmd(
        capsys, "train", "--resume", spirals_ckpt, "--epochs", "1", "--task", "classification"
    )
    assert status == 0, err
    assert "softmax cross-entropy (as asked)" in out


def test_resuming_on_data_that_does_not_fit_counts_outputs_in_words(
    capsys: pytest.CaptureFixture[str], spirals_ckpt: str, tmp_path: pathlib.Path
) -> None:
    X = np.random.default_rng(0).normal(size=(60, 2)).astype(np.float32)
    np.savez(tmp_path / "two.npz", X=X, y=(X[:, 0] > 0).astype(np.int64))
    line = error_line(
        capsys,
        1,
        "train",
        "--resume",
        spirals_ckpt,
        "--data",
        "two.npz",
        "--epochs",
        "1",
        "--quiet",
    )
    assert line == (
        f"gpunn: error: s.ckpt takes 2 features to 3 outputs; {tmp_path / 'two.npz'} has 2 "
        "features and needs 1 output (classification, 2 classes, binary cross-entropy (as "
        "recorded in s.ckpt))"
    )


# --------------------------------------------------------------------------------------------
# Flags that do not apply to the model
# --------------------------------------------------------------------------------------------


def test_mlp_flags_with_lenet_read_as_a_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, 2, "train", "--model", "lenet", "--hidden", "32")
    assert line == (
        "gpunn train: --hidden sets up --model mlp; --model lenet uses the layers of its "
        "preset (gpunn train --help lists them)"
    )


# --------------------------------------------------------------------------------------------
# Too little data is refused before training, saying how much is needed
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "refused"), [(2, True), (4, True), (5, False)])
def test_a_file_too_small_to_split_is_refused_before_training(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, rows: int, refused: bool
) -> None:
    lines = ["a,b,label"] + [f"{i / 10},{1 - i / 10},{i % 2}" for i in range(rows)]
    (tmp_path / "tiny.csv").write_text("\n".join(lines) + "\n")
    args = ("train", "--data", "tiny.csv", "--epochs", "1", "--quiet", "--save", "t.ckpt")
    if not refused:  # 5 rows: 1 test row, 0 validation rows, 4 training rows
        status, out, err = gpunn_cmd(capsys, *args)
        assert status == 0 and "test accuracy" in out, err
        return
    line = error_line(capsys, 1, *args)
    assert line == (
        f"gpunn: error: {tmp_path / 'tiny.csv'} has {rows} samples: too few to split "
        "70% / 10% / 20%, as its test part would be empty (give at least 5 samples)"
    )
    assert not (tmp_path / "t.ckpt").exists()


# --------------------------------------------------------------------------------------------
# A missing optional package: the hint works in the clone the README sets up
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hidden", "args", "extra"),
    [
        ("matplotlib", ["train", "--plot", "c.png", "--epochs", "1"], "plot"),
        ("matplotlib", ["bench", "--backend", "numpy", "--model", "small"], "bench"),
        ("mpi4py", ["train", "--distributed", "--epochs", "1", "--quiet"], "mpi"),
    ],
    ids=["train --plot", "bench", "train --distributed"],
)
def test_a_missing_extra_names_the_command_that_installs_it_in_a_clone(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    hidden: str,
    args: list[str],
    extra: str,
) -> None:
    """gpunn is installed from its clone (README, Quick start): `pip install 'gpunn[X]'` alone
    finds no such package on PyPI, so each hint also gives the clone's command."""
    for name in [m for m in list(sys.modules) if m.split(".")[0] == hidden]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, hidden, None)  # import raises ImportError
    line = error_line(capsys, 1, *args)
    assert f".venv/bin/pip install -e '.[{extra}]'" in line, line


# --------------------------------------------------------------------------------------------
# Ctrl-C during training: one line saying what was kept
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("save", [True, False], ids=["--save", "no --save"])
def test_ctrl_c_in_training_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, save: bool
) -> None:
    from gpunn.training import loop

    real_epoch, calls = loop._epoch, {"n": 0}

    def epoch(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:  # Ctrl-C arrives during the second epoch
            raise KeyboardInterrupt
        return real_epoch(*args)

    monkeypatch.setattr(loop, "_epoch", epoch)
    args = ["train", "--dataset", "blobs", "--epochs", "3", "--quiet"]
    line = error_line(capsys, 130, *args, *(["--save", "m.ckpt"] if save else []))
    if save:
        assert line == (
            "gpunn: interrupted; saved the weights after epoch 1 to m.ckpt (continue with "
            "--resume m.ckpt)"
        )
    else:
        assert line == (
            "gpunn: interrupted after epoch 1: nothing saved (--save PATH keeps the finished "
            "epochs)"
        )


def test_a_warning_of_the_distributed_set_up_is_one_note(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library's warnings start 'gpunn: '; as a note that read 'note: gpunn: ...'."""
    import warnings

    from gpunn.training import distributed

    def get_communicator(*args: object, **kwargs: object) -> object:  # no MPI in this process
        warnings.warn("gpunn: this MPI job was not started with 'python -m mpi4py'", stacklevel=1)
        return distributed.SingleProcess()

    monkeypatch.setattr(distributed, "get_communicator", get_communicator)
    monkeypatch.setattr(distributed, "rank_backend", lambda *a, **k: gpunn.get_backend("numpy"))
    status, _, err = gpunn_cmd(
        capsys, "train", "--distributed", "--dataset", "blobs", "--epochs", "1"
    )
    assert status == 0, err
    assert err.splitlines() == ["note: this MPI job was not started with 'python -m mpi4py'"]
