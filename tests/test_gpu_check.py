"""Tests for scripts/gpu_check.py without a GPU: steps with time limits, shards, the report.

The check itself needs a GPU. What decides whether its report is useful does not: a step that
runs out of time is stopped and named (not a bare FAILED), the budget is shared out, the tests
are split into shards that cover every test once, and the workers' code runs (here on the
device-rule emulation of CuPy, where the fused kernels cannot run and fall back).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
import warnings
from pathlib import Path

import pytest

from gpunn.testing import fake_cupy

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def gc() -> types.ModuleType:
    """scripts/gpu_check.py as a module."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def sleeper(seconds: float, say: str = "started") -> list[str]:
    return [PY, "-c", f"print({say!r}, flush=True); import time; time.sleep({seconds})"]


def test_a_step_that_runs_out_of_time_is_stopped_and_says_so(gc: types.ModuleType) -> None:
    t0 = time.monotonic()
    result = gc.run_step(gc.Step("tests", [sleeper(60), sleeper(60)], timeout=1.0))
    assert time.monotonic() - t0 < 20  # both shards killed at the limit, not waited for
    assert result["status"] == "timeout" and result["rc"] == [None, None]
    assert "started" in result["output_tail"]  # the output so far is kept
    assert gc.describe({"name": "tests"} | result) == "timeout: ran out of time after 1 s"


def test_a_step_fails_when_any_shard_fails(gc: types.ModuleType) -> None:
    ok = [PY, "-c", "pass"]
    bad = [PY, "-c", "import sys; print('boom'); sys.exit(3)"]
    result = gc.run_step(gc.Step("warm", [ok, bad], timeout=60))
    assert result["status"] == "failed" and result["rc"] == [0, 3]
    assert "boom" in result["output_tail"]
    missing = gc.run_step(gc.Step("warm", [["/nonexistent/python"]], timeout=60))
    assert missing["status"] == "error" and "FileNotFoundError" in missing["error"]


def test_steps_share_the_budget_and_a_step_with_no_time_left_is_skipped(
    gc: types.ModuleType,
) -> None:
    steps = [
        gc.Step("warm", [sleeper(2)], timeout=100),
        gc.Step("tests", [sleeper(0)], timeout=100),
    ]
    lines: list[str] = []
    results = gc.run_steps(steps, budget=gc.RESERVE_S + 6, log=lines.append)
    assert results[0]["name"] == "warm" and results[0]["status"] == "passed"
    assert results[0]["timeout_s"] <= 6  # its own limit cut to what the budget leaves
    assert results[1]["status"] == "skipped" and "budget left" in results[1]["reason"]
    assert any(line.startswith("gpu_check: tests: skipped") for line in lines)


def test_the_verdict_names_the_step_that_ran_out_of_time(gc: types.ModuleType) -> None:
    steps = [
        {"name": "warm", "status": "timeout", "timeout_s": 150.0},
        {"name": "tests", "status": "timeout", "timeout_s": 200.0, "required": True},
        {"name": "kernels", "status": "failed", "required": True},
        {"name": "bench", "status": "skipped", "optional": True},
    ]
    ok, line = gc.verdict(steps)
    assert not ok
    assert line == (
        "FAILED: step 'tests' ran out of time; step 'kernels' failed; step 'warm' ran out of time"
    )
    passed = [dict(s, status="passed") for s in steps[1:3]]
    assert gc.verdict(passed + steps[-1:]) == (True, "OK")
    # a warm-up or a benchmark that falls short is named, but the tests decide
    short = {"name": "bench", "status": "skipped", "reason": "only 2 s of the 470 s budget left"}
    assert gc.verdict([steps[0], *passed, short]) == (
        True,
        "OK; note: step 'warm' ran out of time; step 'bench' skipped",
    )


def test_timeouts_from_the_command_line(gc: types.ModuleType, capsys) -> None:
    limits = gc.parse_timeouts(["tests=300", "warm=60.5"])
    assert limits == gc.STEP_TIMEOUTS | {"tests": 300.0, "warm": 60.5}
    for bad, message in (
        ("tsts=3", "one of warm, tests"),
        ("tests=x", "not a number"),
        ("tests=0", "positive"),
    ):
        with pytest.raises(ValueError, match=message):
            gc.parse_timeouts([bad])
        with pytest.raises(SystemExit) as info:
            gc.main(["--timeout", bad])
        assert info.value.code == 2
    assert "STEP" in capsys.readouterr().err


def test_shards_cover_every_test_once(gc: types.ModuleType) -> None:
    items = list(range(11))
    parts = [gc.shard(items, f"{i}/3") for i in range(3)]
    assert [kept for kept, _ in parts] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(x for kept, _ in parts for x in kept) == items
    assert all(sorted(kept + dropped) == items for kept, dropped in parts)
    with pytest.raises(ValueError, match="0 <= i < n"):
        gc.shard(items, "3/3")


def test_the_pytest_plugin_runs_one_shard_and_records_it(tmp_path: Path) -> None:
    (tmp_path / "test_five.py").write_text(
        "import pytest\n"
        + "".join(
            f"def test_{i}(record_property):\n    record_property('parity:x', {i})\n"
            for i in range(5)
        )
    )
    records = tmp_path / "records.jsonl"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{ROOT / 'scripts'}",
        "GPUNN_CHECK_RECORDS": str(records),
        "GPUNN_CHECK_SHARD": "1/2",
    }
    import subprocess

    done = subprocess.run(
        [PY, "-m", "pytest", "-q", "-p", "gpu_check", "-p", "no:cacheprovider", "test_five.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed, 3 deselected" in done.stdout
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert [r["nodeid"] for r in rows] == ["test_five.py::test_1", "test_five.py::test_3"]


def _args(gc: types.ModuleType, out: Path, **kwargs: object) -> argparse.Namespace:
    args = gc.build_parser().parse_args(["--out", str(out), "--jobs", "2"])
    args.timeouts = gc.STEP_TIMEOUTS
    vars(args).update(kwargs)
    return args


def test_the_tests_step_is_sharded_and_judged_from_the_records(
    gc: types.ModuleType, tmp_path: Path
) -> None:
    steps = {s.name: s for s in gc.build_steps(_args(gc, tmp_path), tmp_path)}
    assert list(steps) == ["warm", "tests", "kernels", "bench"]
    tests = steps["tests"]
    assert [e["GPUNN_CHECK_SHARD"] for e in tests.envs] == ["0/2", "1/2"]
    assert all(
        e["GPUNN_BACKEND"] == "cupy" and "-m" in c
        for e, c in zip(tests.envs, tests.commands, strict=True)
    )
    record = {"when": "call", "properties": {"parity:loss": 2e-6}}
    (tmp_path / "records0.jsonl").write_text(
        json.dumps(record | {"nodeid": "a", "outcome": "passed"})
    )
    # pytest's exit status 5 (a shard without GPU tests) is not a failure
    result = tests.finish({"status": "failed", "rc": [0, 5]})
    assert result["status"] == "passed" and result["worst_parity"] == {"loss": 2e-6}
    # a shard that crashed (a collection error, exit status 2) fails the step whatever passed
    assert tests.finish({"status": "failed", "rc": [0, 2]})["status"] == "failed"
    (tmp_path / "records1.jsonl").write_text(
        json.dumps(record | {"nodeid": "b", "outcome": "failed"})
    )
    assert tests.finish({"status": "failed", "rc": [0, 1]})["status"] == "failed"
    for f in ("records0.jsonl", "records1.jsonl"):
        (tmp_path / f).write_text(json.dumps(record | {"nodeid": f, "outcome": "skipped"}))
    skipped = tests.finish({"status": "passed", "rc": [0, 0]})  # all skipped on a GPU machine
    assert skipped["status"] == "failed" and "no GPU test passed" in skipped["reason"]
    assert steps["bench"].skip_reason == ""
    no_bench = gc.build_steps(_args(gc, tmp_path, no_bench=True), tmp_path)[-1]
    assert no_bench.skip_reason == "--no-bench" and no_bench.extra["optional"] is True


def test_main_writes_a_report_that_names_the_step_that_ran_out_of_time(
    gc: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(gc, "gpu_status", lambda: ("Test GPU", [], ""))
    monkeypatch.setattr(gc, "collect_versions", lambda: {"cupy": "test"})
    monkeypatch.setattr(
        gc,
        "build_steps",
        lambda args, work: [
            gc.Step("warm", [[PY, "-c", "pass"]], args.timeouts["warm"]),
            gc.Step("tests", [sleeper(60)], args.timeouts["tests"], extra={"required": True}),
            gc.Step("kernels", [[PY, "-c", "pass"]], args.timeouts["kernels"]),
        ],
    )
    code = gc.main(["--out", str(tmp_path), "--timeout", "tests=1", "--budget", "120"])
    assert code == 1
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert "FAILED: step 'tests' ran out of time" in last, out
    (report_path,) = tmp_path.glob("gpu_check_Test-GPU_*.json")
    report = json.loads(report_path.read_text())
    assert report["timed_out"] == ["tests"] and report["ok"] is False
    assert [s["status"] for s in report["steps"]] == ["passed", "timeout", "passed"]
    assert report["steps"][1]["timeout_s"] == 1.0 and report["card"] == "Test GPU"


@pytest.mark.cuda_on_cpu
def test_the_warm_up_and_kernel_workers_run_on_the_emulation(
    gc: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers' code paths, on the device-rule emulation: no CUDA runs, so every fused
    kernel's self-check fails there (on a GPU they must pass), and torch sees no GPU."""
    monkeypatch.setenv("GPUNN_FUSED", "1")
    with fake_cupy.installed(devices=1) as cp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warmed = gc.warm(0, len(gc.warm_cases()))  # the self-check and the first run
        assert warmed["runs"] == 1 and set(warmed["self_check"].values()) == {"failed"}
        monkeypatch.setattr(gc, "make_mlp_state", _small_mlp(gc.make_mlp_state))
        checks = gc.run_kernel_checks(tmp_path)
        assert {v["status"] for v in checks["self_check"].values()} == {"failed"}
        assert checks["mlp_loss_curve_max_rel_diff"] == 0.0  # both fall back to the references
        assert "error" in checks["launches_mlp_fused"]
        assert cp.emulation.counts["cross_device"] == 0


def _small_mlp(make):  # the check's 512 x 256 step, shrunk for the emulation's speed
    return lambda xp, **kw: make(xp, **(kw | {"batch": 32, "width": 16}))
