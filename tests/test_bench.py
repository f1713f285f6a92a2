"""Tests of the benchmark harness (gpunn.bench) and a smoke run of the pytest-benchmark suite.

What is proven here: timing synchronises the backend before every clock read (with a counting
backend and a recording clock), the stopping rule, the crossover computation on constructed
data, the files ``gpunn bench`` writes and their documented fields, and a tiny sweep on NumPy
end to end through the CLI functions.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from gpunn.backend import Backend, available_backends
from gpunn.bench import cli as bench_cli
from gpunn.bench.crossover import crossover, interpolate_loglog
from gpunn.bench.harness import SweepConfig, compute_crossovers, measure_point
from gpunn.bench.results import ROW_FIELDS, SCHEMA, TOP_LEVEL_FIELDS
from gpunn.bench.timing import Policy, Timed, relative_spread, time_call, time_interleaved
from gpunn.bench.workload import GemmWorkload, gemm_shapes, parse_model

REPO = Path(__file__).resolve().parent.parent
FAST = Policy(warmup_calls=1, warmup_s=0.0, min_repeats=3, budget_s=0.01, settle_s=0.0)


# --------------------------------------------------------------------------------------------
# Timing: synchronisation, stopping rule
# --------------------------------------------------------------------------------------------


class EventLog:
    """A fake clock and a fake device that record, in order, every clock read and sync."""

    def __init__(self, step: float = 1e-3) -> None:
        self.events: list[str] = []
        self.now = 0.0
        self.step = step

    def clock(self) -> float:
        self.events.append("clock")
        self.now += 1e-6  # reading the clock takes time too: no interval is ever zero
        return self.now

    def sync(self) -> None:
        self.events.append("sync")

    def work(self) -> None:
        self.events.append("work")
        self.now += self.step


def assert_every_clock_read_follows_a_sync(events: list[str]) -> None:
    reads = [i for i, e in enumerate(events) if e == "clock"]
    assert reads, "the clock was never read"
    for i in reads:
        assert i > 0 and events[i - 1] == "sync", f"clock read {i} not preceded by a sync"


def test_time_call_synchronises_before_every_clock_read() -> None:
    log = EventLog()
    t = time_call(log.work, log.sync, FAST, clock=log.clock)
    assert_every_clock_read_follows_a_sync(log.events)
    assert t.repeats >= FAST.min_repeats
    assert t.median_s == pytest.approx(1e-3, rel=1e-2)  # per call, whatever the block size


def test_constant_times_stop_at_min_repeats_with_zero_spread() -> None:
    log = EventLog()
    policy = Policy(warmup_calls=2, warmup_s=0.0, min_repeats=5, target_spread=0.05, budget_s=99)
    t = time_call(log.work, log.sync, policy, clock=log.clock)
    assert (t.repeats, t.converged) == (5, True)
    assert t.spread == pytest.approx(0.0, abs=1e-9)
    assert t.min_s == pytest.approx(t.max_s)


def test_noisy_times_stop_at_the_budget() -> None:
    log = EventLog()
    rng = np.random.default_rng(0)

    def noisy() -> None:
        log.now += float(rng.choice([1e-3, 3e-3]))

    policy = Policy(warmup_calls=1, warmup_s=0.0, min_repeats=3, target_spread=0.01, budget_s=0.1)
    t = time_call(noisy, log.sync, policy, clock=log.clock)
    assert not t.converged
    assert t.repeats > policy.min_repeats  # it kept trying until the budget ran out
    assert t.min_s <= t.median_s <= t.max_s


def test_block_size_makes_a_repeat_last_min_block_s() -> None:
    log = EventLog(step=1e-4)
    policy = Policy(warmup_calls=1, warmup_s=0.0, min_repeats=3, min_block_s=0.01, budget_s=1)
    assert time_call(log.work, log.sync, policy, clock=log.clock).calls == 100


@pytest.mark.parametrize(
    ("calls", "seconds", "warmups"), [(4, 0.0, 4), (2, 0.0095, 10), (1, 0.002, 2)]
)
def test_warm_up_runs_at_least_warmup_calls_for_at_least_warmup_s(
    calls: int, seconds: float, warmups: int
) -> None:
    """Warm-up ends once both minimums are met, and sizes the block from the mean time of
    *all* its calls (each 1 ms here, plus 1 us per clock read)."""
    log = EventLog(step=1e-3)
    policy = Policy(warmup_calls=calls, warmup_s=seconds, min_repeats=3, min_block_s=0.01)
    t = time_call(log.work, log.sync, policy, clock=log.clock)
    assert log.events.count("work") - t.repeats * t.calls == warmups
    assert t.calls == 10  # ceil(0.01 / 1.001e-3)


def test_groups_take_turns_with_a_settle_pause() -> None:
    log = EventLog()
    pauses: list[float] = []
    entries = [
        Timed("a", log.work, log.sync, group="numpy"),
        Timed("b", log.work, log.sync, group="torch"),
    ]
    policy = Policy(warmup_calls=1, warmup_s=0.0, min_repeats=3, settle_s=0.25, budget_s=1)
    result = time_interleaved(entries, policy, clock=log.clock, sleep=pauses.append)
    assert set(result) == {"a", "b"}
    assert pauses and all(p == 0.25 for p in pauses)  # one before each group's turn
    assert_every_clock_read_follows_a_sync(log.events)


def test_callables_timed_together_stop_together() -> None:
    """A steady callable keeps being timed while a noisy one has not met the rule, so both
    medians cover the same stretch of time."""
    log = EventLog()
    durations = itertools.cycle([1e-3, 3e-3, 2e-3, 5e-3])

    def noisy() -> None:
        log.now += next(durations)

    entries = [Timed("steady", log.work, log.sync), Timed("noisy", noisy, log.sync)]
    policy = Policy(
        warmup_calls=1,
        warmup_s=0.0,
        min_repeats=3,
        target_spread=0.01,
        budget_s=0.05,
        min_block_s=0.0,
    )
    result = time_interleaved(entries, policy, clock=log.clock)
    assert result["steady"].converged and not result["noisy"].converged
    assert abs(result["steady"].repeats - result["noisy"].repeats) <= 1
    assert result["noisy"].repeats > policy.min_repeats


def test_relative_spread_is_iqr_over_median() -> None:
    assert relative_spread([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert relative_spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx((4 - 2) / 3)
    assert math.isinf(relative_spread([1.0]))


class CountingBackend(Backend):
    """NumPy, with a ``synchronize`` that records itself in an event log."""

    def __init__(self, log: EventLog) -> None:
        super().__init__("numpy", None, np)
        self.log = log
        self.syncs = 0

    def synchronize(self) -> None:
        self.syncs += 1
        self.log.sync()


def test_harness_times_through_the_backends_synchronize() -> None:
    """The whole point (gpunn step, inference, bare GEMMs) reads the clock only after the
    backend's own synchronize: on a GPU this is what makes the times true."""
    log = EventLog()
    backend = CountingBackend(log)
    cfg = SweepConfig(backends=[backend], models=[(6, 5, 3)], policy=FAST, clock=log.clock)
    (row,) = measure_point((6, 5, 3), 4, backend, cfg)
    assert backend.syncs >= 3 * 2 * FAST.min_repeats  # 3 callables, before and after a block
    assert_every_clock_read_follows_a_sync(log.events)
    assert row["engine"] == "gpunn" and row["device"] == "numpy"
    assert row["limit_fraction"] == pytest.approx(row["gemm_s"] / row["train_s"])


def test_limit_fractions_and_torch_ratios_follow_their_definitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With made-up timings whose medians and minimums all differ, each derived figure is the
    documented quotient: limit_fraction = gemm_s / train_s, its best-case form from the
    fastest repeats, and the torch ratios as gpunn's speed over torch's (torch time / ours)."""
    from gpunn.bench import harness
    from gpunn.bench.timing import Timing

    times = {  # name: (median_s, min_s)
        "train": (4e-3, 3e-3),
        "infer": (1e-3, 0.5e-3),
        "gemm": (1e-3, 0.9e-3),
        "torch_train": (6e-3, 2.4e-3),
        "torch_infer": (3e-3, 1e-3),
    }

    def fake_time_interleaved(entries: list[Timed], policy: Policy, **kwargs: object) -> dict:
        return {t.name: Timing(*times[t.name], times[t.name][0], 7, 1, 0.01, True) for t in entries}

    monkeypatch.setattr(harness, "time_interleaved", fake_time_interleaved)
    torch = pytest.importorskip("torch") if torch_or_none() == "torch" else None
    from gpunn import get_backend

    cfg = SweepConfig(backends=[get_backend("numpy")], models=[(6, 5, 3)], torch=torch)
    rows = measure_point((6, 5, 3), 8, get_backend("numpy"), cfg)
    row = rows[0]
    assert row["limit_fraction"] == pytest.approx(1e-3 / 4e-3)
    assert row["limit_fraction_best"] == pytest.approx(0.9e-3 / 3e-3)
    assert row["train_samples_per_s"] == pytest.approx(8 / 4e-3)
    if torch is None:
        return
    assert row["vs_torch_train"] == pytest.approx(6e-3 / 4e-3)
    assert row["vs_torch_train_best"] == pytest.approx(2.4e-3 / 3e-3)
    assert row["vs_torch_infer"] == pytest.approx(3e-3 / 1e-3)
    assert rows[1]["engine"] == "torch" and rows[1]["train_samples_per_s"] == pytest.approx(
        8 / 6e-3
    )


class FakePool:
    """CuPy's memory pool interface, with fixed byte counts."""

    def used_bytes(self) -> int:
        return 3 * 2**20

    def total_bytes(self) -> int:
        return 8 * 2**20

    def free_all_blocks(self) -> None:
        pass


class FakeCupy:
    """NumPy dressed as CuPy: ``cuda.Device``, ``cuda.runtime`` and the memory pool, so the
    harness's GPU path (device context, pool figures, GPU report, crossover) runs without a GPU.
    Every device synchronisation is written to the event log."""

    __version__ = "13.0.0-fake"

    def __init__(self, log: EventLog) -> None:
        fake = self

        class Device:
            def __init__(self, device: int = 0) -> None:
                self.mem_info = (70 * 2**30, 80 * 2**30)

            def __enter__(self) -> Device:
                fake.entered += 1
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def synchronize(self) -> None:
                log.sync()

        runtime = types.SimpleNamespace(
            getDeviceProperties=lambda d: {"major": 9, "minor": 0, "multiProcessorCount": 132},
            driverGetVersion=lambda: 12040,
            runtimeGetVersion=lambda: 12020,
        )
        self.cuda = types.SimpleNamespace(Device=Device, runtime=runtime)
        self.entered = 0
        self.pool = FakePool()

    def get_default_memory_pool(self) -> FakePool:
        return self.pool

    def __getattr__(self, name: str) -> object:
        return getattr(np, name)


def test_gpu_path_with_a_fake_cupy_backend(tmp_path: Path) -> None:
    """On a CuPy backend the harness works inside the device's context, reads the clock only
    after the device synchronised, reports the pool's bytes and the GPU, and finds the
    crossover against the CPU rows; the plot marks it."""
    from gpunn.bench.env import environment
    from gpunn.bench.plot import write_plot
    from gpunn.bench.results import make_report

    log = EventLog()
    xp = FakeCupy(log)
    gpu = Backend("cupy", 0, xp, "Fake H100")
    cfg = SweepConfig(backends=[gpu], models=[(6, 5, 3)], policy=FAST, clock=log.clock)
    (row,) = measure_point((6, 5, 3), 4, gpu, cfg)
    assert xp.entered >= 1
    assert_every_clock_read_follows_a_sync(log.events)
    assert row["device"] == "cupy:0"
    assert (row["gpu_used_bytes"], row["gpu_total_bytes"]) == (3 * 2**20, 8 * 2**20)

    (report_gpu,) = environment([gpu])["gpus"]
    assert report_gpu["name"] == "Fake H100" and report_gpu["memory_total_bytes"] == 80 * 2**30
    assert (report_gpu["driver_version"], report_gpu["cuda_runtime_version"]) == ("12.4", "12.2")

    cpu_rows = [_row("numpy", b, 100.0 * b) for b in GRID]
    gpu_rows = [_row("cupy:0", b, 10.0 * b**1.5) for b in GRID]
    crossovers = compute_crossovers(cpu_rows + gpu_rows)
    assert crossovers[0]["batch"] == 256
    report = make_report(
        command="gpunn bench",
        settings={},
        environment={},
        rows=[r | {"infer_samples_per_s": r["train_samples_per_s"]} for r in cpu_rows + gpu_rows],
        crossovers=crossovers,
    )
    assert write_plot(report, tmp_path / "bench.png").stat().st_size > 10_000


# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------


def test_parse_model() -> None:
    assert parse_model("mnist") == (784, 256, 10)
    assert parse_model("784-2048-2048-10") == parse_model("wide")
    with pytest.raises(ValueError, match="preset"):
        parse_model("big")


def test_a_step_has_3L_minus_1_gemms() -> None:
    assert len(gemm_shapes((784, 256, 10), 64)) == 5  # the five GEMMs of a 2-layer step
    assert len(gemm_shapes((784, 2048, 2048, 10), 64)) == 8
    from gpunn import get_backend

    g = GemmWorkload((7, 5, 3), 4, get_backend("numpy"))
    g.run()
    assert g.count == 5


# --------------------------------------------------------------------------------------------
# Crossover on constructed data
# --------------------------------------------------------------------------------------------

GRID = [1, 4, 16, 64, 256, 1024, 4096]


def test_crossover_where_the_ratio_crosses_one() -> None:
    """cpu = 100 b, gpu = 10 b^1.5: gpu / cpu = b^0.5 / 10 = 1 at b = 100 exactly."""
    cpu = {b: 100.0 * b for b in GRID}
    gpu = {b: 10.0 * b**1.5 for b in GRID}
    c = crossover(cpu, gpu)
    assert c.batch == 256  # first grid point where the GPU is ahead (64 -> 0.8, 256 -> 1.6)
    assert c.estimate == pytest.approx(100.0)  # log(ratio) is linear in log(b): exact
    assert not c.gpu_always_faster
    assert c.compared == tuple(GRID)


def test_crossover_needs_the_gpu_to_stay_ahead() -> None:
    cpu = {b: 1.0 for b in GRID}
    gpu = {1: 0.5, 4: 2.0, 16: 0.9, 64: 1.5, 256: 3.0, 1024: 5.0, 4096: 9.0}
    assert crossover(cpu, gpu).batch == 64  # the win at 4 does not count: it lost again at 16


def test_crossover_never_and_always() -> None:
    cpu = {b: 10.0 for b in GRID}
    never = crossover(cpu, {b: 5.0 for b in GRID})
    assert (never.batch, never.estimate, never.gpu_always_faster) == (None, None, False)
    always = crossover(cpu, {b: 20.0 for b in GRID})
    assert (always.batch, always.gpu_always_faster) == (1, True)


def test_a_tie_is_not_a_win() -> None:
    """Equal speed is not "faster": the crossover is the first batch size from which the GPU
    is strictly faster for good; a tie at the largest batch size means it never overtakes."""
    cpu = {b: 100.0 for b in GRID}
    tie_then_win = crossover(cpu, {1: 50.0, 4: 100.0, 16: 200.0, 64: 400.0})
    assert tie_then_win.batch == 16 and not tie_then_win.gpu_always_faster
    assert tie_then_win.estimate == pytest.approx(4.0)  # the ratio reaches 1 at 4 exactly
    tie_first = crossover(cpu, {1: 100.0, 4: 200.0})
    assert (tie_first.batch, tie_first.gpu_always_faster) == (4, False)
    tie_last = crossover(cpu, {1: 50.0, 4: 200.0, 16: 100.0})
    assert (tie_last.batch, tie_last.estimate) == (None, None)


def test_crossover_against_a_baseline_on_another_grid() -> None:
    """A GPU run on 2, 8, 32, ... against a CPU baseline on 1, 4, 16, ...: the CPU is
    interpolated in log-log space, never extrapolated past its own grid."""
    cpu = {b: 100.0 * b for b in GRID}
    gpu = {b: 10.0 * b**1.5 for b in (2, 8, 32, 128, 512, 2048, 8192)}
    c = crossover(cpu, gpu)
    assert c.compared == (2, 8, 32, 128, 512, 2048)  # 8192 is past the CPU's largest batch
    assert c.batch == 128
    assert c.estimate == pytest.approx(100.0)
    assert interpolate_loglog(cpu, 8) == pytest.approx(800.0)
    assert interpolate_loglog(cpu, 8192) is None


def _row(device: str, batch: int, rate: float, engine: str = "gpunn") -> dict:
    return {
        "engine": engine,
        "device": device,
        "model": "784-256-10",
        "dtype": "float32",
        "optimizer": "SGD",
        "batch": batch,
        "train_samples_per_s": rate,
    }


def test_compute_crossovers_uses_this_run_and_the_baseline() -> None:
    gpu = [_row("cupy:0", b, 10.0 * b**1.5) for b in GRID]
    here = [_row("numpy", b, 50.0 * b) for b in GRID]  # ratio b^0.5 / 5: crosses at 25
    baseline = [_row("numpy", b, 100.0 * b) for b in GRID]  # crosses at 100
    entries = compute_crossovers(gpu + here, baseline, "bench/results/bench.json")
    by_source = {e["cpu_source"]: e for e in entries}
    assert by_source["this run"]["estimate"] == pytest.approx(25.0)
    assert by_source["this run"]["batch"] == 64
    assert by_source["bench/results/bench.json"]["estimate"] == pytest.approx(100.0)
    assert {e["gpu"] for e in entries} == {"gpunn cupy:0"}
    assert compute_crossovers(here) == []  # no GPU series: nothing to compute


# --------------------------------------------------------------------------------------------
# The CLI end to end on NumPy: table, bench.json, bench.csv, bench.md, bench.png
# --------------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpunn")
    bench_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


TINY = ["--model", "12-8-3", "--batch-sizes", "2,8", "--budget", "0.005", "--min-repeats", "2"]


def torch_or_none() -> str:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "none"
    return "torch"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    compare = torch_or_none()
    args = parse(["bench", "--backend", "numpy", *TINY, "--compare", compare, "--settle", "0"])
    assert args.func is bench_cli.run  # add_parser wires the subcommand to run()
    args.out = str(out)
    assert bench_cli.run(args) == 0
    return out


def test_tiny_sweep_writes_json_with_the_documented_fields(tiny_run: Path) -> None:
    report = json.loads((tiny_run / "bench.json").read_text())
    assert list(report) == list(TOP_LEVEL_FIELDS)
    assert report["schema"] == SCHEMA
    rows = report["rows"]
    engines = {"gpunn", "torch"} if torch_or_none() == "torch" else {"gpunn"}
    assert {r["engine"] for r in rows} == engines
    assert len(rows) == 2 * len(engines)
    for row in rows:
        assert list(row) == list(ROW_FIELDS)
        assert row["model"] == "12-8-3" and row["batch"] in (2, 8)
        assert row["train_min_s"] <= row["train_s"] <= row["train_max_s"]
        assert row["train_samples_per_s"] == pytest.approx(row["batch"] / row["train_s"])
        assert row["rss_peak_bytes"] > 0
    gpunn_rows = [r for r in rows if r["engine"] == "gpunn"]
    for row in gpunn_rows:
        assert row["device"] == "numpy" and row["gemm_count"] == 5
        assert row["limit_fraction"] == pytest.approx(row["gemm_s"] / row["train_s"])
        if "torch" in engines:
            assert row["vs_torch_train"] > 0
    env = report["environment"]
    for key in ("cpu_model", "cpu_cores", "blas", "numpy_version", "gpus", "torch"):
        assert key in env
    assert report["settings"]["threads"]["blas"] == env["blas"][0]["threads"]
    assert report["crossovers"] == []  # no GPU in this run


def test_tiny_sweep_writes_csv_md_and_png(tiny_run: Path) -> None:
    with (tiny_run / "bench.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == ROW_FIELDS
        rows = list(reader)
    report = json.loads((tiny_run / "bench.json").read_text())
    assert len(rows) == len(report["rows"])
    assert float(rows[0]["train_s"]) == pytest.approx(report["rows"][0]["train_s"])
    md = (tiny_run / "bench.md").read_text()
    assert md.startswith("| model | batch |") and "12-8-3" in md
    png = (tiny_run / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cpu_baseline_is_read_back(tiny_run: Path, tmp_path: Path) -> None:
    args = parse(["bench", "--backend", "numpy", *TINY, "--compare", "none", "--no-plot"])
    args.out, args.cpu_baseline = str(tmp_path), str(tiny_run / "bench.json")
    assert bench_cli.run(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["cpu_baseline"]["path"] == args.cpu_baseline
    assert report["cpu_baseline"]["rows"] >= 2
    assert not (tmp_path / "bench.png").exists()


def test_bad_requests_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--model", "huge"], ["--batch-sizes", "0,4"], ["--cpu-baseline", "nope.json"]):
        args = parse(["bench", "--backend", "numpy", "--out", str(tmp_path), *extra])
        assert bench_cli.run(args) == 2
    assert "gpunn bench: error:" in capsys.readouterr().err


@pytest.mark.skipif(
    any(s.usable for s in available_backends() if s.name.startswith("cupy")),
    reason="a GPU is usable here",
)
def test_unavailable_cupy_is_an_error_not_a_fallback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse(["bench", "--backend", "numpy,cupy", "--out", str(tmp_path)])
    assert bench_cli.run(args) == 2
    assert "cupy" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The pytest-benchmark suite in bench/, on its smoke grid
# --------------------------------------------------------------------------------------------


def test_benchmark_suite_smoke(tmp_path: Path) -> None:
    """``pytest bench/`` still collects and runs (tiny grid), grouped by model and batch."""
    out = tmp_path / "suite.json"
    env = dict(os.environ, GPUNN_BENCH_SMOKE="1")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(REPO / "bench"),
        "-q",
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        "--benchmark-min-rounds=2",
        "--benchmark-max-time=0.001",
        f"--benchmark-json={out}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    benchmarks = json.loads(out.read_text())["benchmarks"]
    groups = {b["group"] for b in benchmarks}
    assert groups == {"16-8-4 batch=2 numpy", "16-8-4 batch=8 numpy"}
    names = {b["name"].split("[")[0] for b in benchmarks}
    assert {"test_gpunn_train_step", "test_gpunn_inference", "test_bare_gemms"} <= names
