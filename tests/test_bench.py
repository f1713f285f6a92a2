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
from gpunn.bench.harness import (
    CONV_BATCH_SIZES,
    DEFAULT_BATCH_SIZES,
    SweepConfig,
    compute_crossovers,
    measure_point,
)
from gpunn.bench.results import (
    NOTES,
    ROW_FIELDS,
    SCHEMA,
    TOP_LEVEL_FIELDS,
    flag_ratios,
    markdown_table,
    ratio_is_noisy,
    table_cells,
)
from gpunn.bench.timing import Policy, Timed, relative_spread, time_call, time_interleaved
from gpunn.bench.workload import (
    ConvNet,
    GemmWorkload,
    GpunnWorkload,
    gemm_shapes,
    im2col_bytes,
    parse_model,
)

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


def test_lenet5_is_a_preset_with_its_own_batch_sizes() -> None:
    lenet = parse_model("lenet5")
    assert lenet == ConvNet("lenet5", (1, 28, 28), 10)
    args = parse(["bench", "--model", "lenet5,small"])
    cfg, _, _ = bench_cli._build(args)
    assert cfg.batches(lenet) == list(CONV_BATCH_SIZES) == [16, 32, 64, 128, 256]
    assert cfg.batches((64, 64, 10)) == list(DEFAULT_BATCH_SIZES)
    assert cfg.settings()["batch_sizes_per_model"]["lenet5-1x28x28"] == [16, 32, 64, 128, 256]
    chosen, _, _ = bench_cli._build(parse(["bench", "--model", "lenet5", "--batch-sizes", "8,2"]))
    assert chosen.batches(lenet) == [2, 8]


def test_a_lenet5_step_has_14_gemms_im2col_and_dense() -> None:
    """Conv as im2col: W (O, C*kh*kw) @ cols (C*kh*kw, N*Ho*Wo); its weight gradient
    dz @ cols^T and input gradient W^T @ dz; no input gradient for the first layer."""
    n = 4
    shapes = gemm_shapes(parse_model("lenet5"), n)
    assert [role for role, _, _ in shapes] == [
        "fwd0", "dW0",  # conv 1->6, 5x5 pad 2: 28x28 outputs
        "fwd1", "dW1", "dx1",  # conv 6->16, 5x5 on the pooled 14x14: 10x10 outputs
        "fwd2", "dW2", "dx2",  # Dense 400 -> 120
        "fwd3", "dW3", "dx3",  # Dense 120 -> 84
        "fwd4", "dW4", "dx4",  # Dense 84 -> 10
    ]  # fmt: skip
    assert shapes[0] == ("fwd0", "(6,25)", f"(25,{n * 28 * 28})")
    assert shapes[1] == ("dW0", f"(6,{n * 784})", f"({n * 784},25)")
    assert shapes[2:5] == [
        ("fwd1", "(16,150)", f"(150,{n * 100})"),
        ("dW1", f"(16,{n * 100})", f"({n * 100},150)"),
        ("dx1", "(150,16)", f"(16,{n * 100})"),
    ]
    assert shapes[5] == ("fwd2", f"({n},400)", "(400,120)")
    assert shapes[-1] == ("dx4", f"({n},10)", "(10,84)")

    from gpunn import get_backend

    g = GemmWorkload(parse_model("lenet5"), n, get_backend("numpy"))
    g.run()
    assert g.count == 14
    outs = [out.shape for _, _, _, out in g.calls]
    assert outs[0] == (6, n * 784) and outs[4] == (150, n * 100) and outs[-1] == (n, 84)
    # the transposed operands are views, as in the step: dW0's cols^T and dx1's W^T
    assert not g.calls[1][2].flags.c_contiguous and not g.calls[4][1].flags.c_contiguous


@pytest.mark.parametrize("batch", [2, 5])
def test_im2col_bytes_are_the_columns_the_conv_layers_keep(batch: int) -> None:
    """After a step, LeNet-5's Conv2D layers hold their im2col columns: each conv is fused with
    its 2x2 max-pool, so a column holds a (kh+1) x (kw+1) patch per 2x2 block of outputs:
    conv 1: 1*6*6 rows x 14*14*N blocks (no input gradient, so no dcols); conv 2: 6*6*6 rows x
    5*5*N blocks, for cols and for dcols. float32."""
    from gpunn import get_backend

    w = GpunnWorkload.create(parse_model("lenet5"), batch, get_backend("numpy"))
    assert im2col_bytes(w.model) == 0  # nothing allocated before the first step
    w.train_step()
    expected = 4 * (36 * 196 * batch + 2 * 216 * 25 * batch)
    assert im2col_bytes(w.model) == expected


def test_a_lenet5_point_times_gpunn_its_gemms_and_torch() -> None:
    from gpunn import get_backend

    torch = None if torch_or_none() == "none" else __import__("torch")
    backend = get_backend("numpy")
    lenet = parse_model("lenet5")
    cfg = SweepConfig(backends=[backend], models=[lenet], policy=FAST, torch=torch)
    rows = measure_point(lenet, 2, backend, cfg)
    row = rows[0]
    assert (row["model"], row["model_name"], row["params"]) == ("lenet5-1x28x28", "lenet5", 61706)
    assert row["gemm_count"] == 14 and row["limit_fraction"] > 0
    assert row["im2col_bytes"] == 4 * (36 * 196 * 2 + 2 * 216 * 25 * 2)
    if torch is not None:
        assert rows[1]["engine"] == "torch" and rows[1].get("im2col_bytes") is None
        assert row["vs_torch_train"] == pytest.approx(
            row["train_samples_per_s"] / rows[1]["train_samples_per_s"]
        )
    mlp = measure_point((6, 5, 3), 2, backend, SweepConfig([backend], [(6, 5, 3)], policy=FAST))
    assert mlp[0]["im2col_bytes"] is None


def test_the_torch_twin_of_a_cnn_computes_what_gpunn_computes() -> None:
    """Same layers, weights and batch in float64: the same logits, and after one SGD step the
    same weights (LeNet-5, and a small net with BatchNorm and average pooling)."""
    torch = pytest.importorskip("torch")
    import gpunn
    from gpunn.bench.torch_ref import TorchWorkload

    backend = gpunn.get_backend("numpy")
    small = [
        gpunn.Conv2D(2, 4, 3, padding=1),
        gpunn.BatchNorm2D(4),
        gpunn.Tanh(),
        gpunn.AvgPool2D(2),
        gpunn.Flatten(),
        gpunn.Dense(4 * 3 * 3, 5),
    ]
    nets = [
        GpunnWorkload.create(parse_model("lenet5"), 3, backend, dtype="float64"),
        GpunnWorkload(
            gpunn.Sequential(small, backend=backend, dtype="float64", input_shape=(2, 6, 6)),
            gpunn.SoftmaxCrossEntropy(),
            gpunn.SGD(0.01),
            np.random.default_rng(0).standard_normal((3, 2, 6, 6)),
            np.array([0, 4, 2]),
        ),
    ]
    for w in nets:
        initial = w.model.state_dict()
        t = TorchWorkload(torch, initial, w.x, w.y, lr=0.01, layers=w.model.layers)
        logits = t.model(t.x).detach().numpy()
        np.testing.assert_allclose(logits, w.model.forward(w.x), rtol=1e-10, atol=1e-12)
        w.train_step()
        t.train_step()
        mine = w.model.state_dict()
        for name, value in t.model.named_parameters():
            index, kind = name.split(".")
            key = f"{index}.{ {'weight': 'W', 'bias': 'b'}[kind] }"
            if w.model.layers[int(index)].kind.startswith("BatchNorm"):
                key = f"{index}.{ {'weight': 'gamma', 'bias': 'beta'}[kind] }"
            got = value.detach().numpy()
            got = got.T if w.model.layers[int(index)].kind == "Dense" else got
            np.testing.assert_allclose(mine[key], got, rtol=1e-9, atol=1e-12, err_msg=key)


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
            assert isinstance(row["vs_torch_train_noisy"], bool)
            assert isinstance(row["vs_torch_infer_noisy"], bool)
        assert isinstance(row["limit_fraction_noisy"], bool)
        limits = (row["limit_fraction"], row["limit_fraction_best"])
        assert row["limit_fraction_disturbed"] is (max(limits) > 1)
    for row in rows:
        if row["engine"] == "torch":  # the flags belong to the ratios, on gpunn rows
            assert row["vs_torch_train_noisy"] is None and row["limit_fraction_noisy"] is None
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


@pytest.fixture
def no_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the sweep starts: these errors must be found before it."""

    def sweep(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sweep started before the error was found")

    monkeypatch.setattr(bench_cli, "run_sweep", sweep)


@pytest.mark.parametrize(
    "extra",
    [["--model", "huge"], ["--batch-sizes", "0,4"], ["--batch-sizes", "a"], ["--backend", "tpu"]],
)
def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_sweep: None, extra: list[str]
) -> None:
    args = parse(["bench", "--backend", "numpy", "--out", str(tmp_path), *extra])
    assert bench_cli.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpunn bench: error:") and err.count("\n") == 1, err


def test_a_missing_or_bad_cpu_baseline_is_a_runtime_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_sweep: None
) -> None:
    missing = tmp_path / "nope.json"
    args = parse(["bench", "--backend", "numpy", "--out", str(tmp_path / "o")])
    args.cpu_baseline = str(missing)
    assert bench_cli.run(args) == 1
    assert (
        capsys.readouterr().err == f"gpunn bench: error: --cpu-baseline: no such file: {missing}\n"
    )
    wrong = tmp_path / "other.json"
    wrong.write_text('{"schema": "something else"}')
    args.cpu_baseline = str(wrong)
    assert bench_cli.run(args) == 1
    assert "is not a gpunn bench.json" in capsys.readouterr().err


@pytest.mark.skipif(
    any(s.usable for s in available_backends() if s.name.startswith("cupy")),
    reason="a GPU is usable here",
)
def test_unavailable_cupy_is_an_error_not_a_fallback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_sweep: None
) -> None:
    args = parse(["bench", "--backend", "numpy,cupy", "--out", str(tmp_path)])
    assert bench_cli.run(args) == 1
    assert "cupy" in capsys.readouterr().err


def test_compare_torch_without_torch_is_an_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_sweep: None,
) -> None:
    """An explicit --compare torch that cannot be honoured fails (like --backend cupy);
    --compare auto goes on without PyTorch and says so."""
    why = "PyTorch is not installed (No module named 'torch'); install it: pip install torch"
    monkeypatch.setattr(bench_cli, "load_torch", lambda: (None, why))
    args = parse(["bench", "--backend", "numpy", "--compare", "torch", "--out", str(tmp_path)])
    assert bench_cli.run(args) == 1
    assert capsys.readouterr().err == f"gpunn bench: error: --compare torch: {why}\n"
    cfg, notes, _ = bench_cli._build(parse(["bench", "--backend", "numpy", "--out", str(tmp_path)]))
    assert cfg.torch is None and notes == [f"PyTorch not measured: {why}"]


def test_missing_matplotlib_is_found_before_the_sweep(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_sweep: None,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "out"
    args = parse(["bench", "--backend", "numpy", *TINY, "--compare", "none", "--out", str(out)])
    assert bench_cli.run(args) == 1
    err = capsys.readouterr().err
    assert "bench.png needs matplotlib, which is not installed" in err
    assert "pip install 'gpunn[bench]'" in err and "--no-plot" in err
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_no_plot_needs_no_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    args = parse(["bench", "--backend", "numpy", *TINY, "--compare", "none", "--no-plot"])
    args.out, args.settle = str(tmp_path), 0.0
    assert bench_cli.run(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.csv", "bench.json", "bench.md"]


def test_an_unwritable_out_folder_is_found_before_the_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_sweep: None
) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file where the folder should be")
    args = parse(["bench", "--backend", "numpy", "--compare", "none", "--out", str(blocker)])
    assert bench_cli.run(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gpunn bench: error: cannot write the results to --out {blocker}: ")
    assert "choose another folder with --out" in err


def test_the_gpunn_command_exits_1_and_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_sweep: None
) -> None:
    """Through the main entry point: usage errors 2, runtime errors 1, one line each."""
    from gpunn.cli import main

    common = ["bench", "--backend", "numpy", "--compare", "none", "--out", str(tmp_path)]
    assert main([*common, "--model", "huge"]) == 2
    assert main([*common, "--cpu-baseline", str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("gpunn bench: error:") for line in err)


def test_the_default_out_folder_is_not_the_committed_results() -> None:
    args = parse(["bench"])
    assert Path(args.out) == Path("bench-out")
    assert Path(args.out).resolve() != (REPO / "bench" / "results").resolve()
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "/bench-out/" in ignored


# --------------------------------------------------------------------------------------------
# Ratios that mean little: noisy spreads, disturbed limit fractions
# --------------------------------------------------------------------------------------------


def timed_row(prefix: str, samples_s: list[float]) -> dict:
    """A row's fields for one timing, from per-repeat seconds (as the harness makes them)."""
    return {
        f"{prefix}_s": float(np.median(samples_s)),
        f"{prefix}_min_s": min(samples_s),
        f"{prefix}_max_s": max(samples_s),
        f"{prefix}_spread": relative_spread(samples_s),
    }


def test_a_torch_timing_spread_over_50x_makes_its_ratio_noisy() -> None:
    """The reported case: torch from 159 to 8,242 samples/s gave "vs torch 36.25"."""
    batch = 64
    gpunn_row = timed_row("train", [batch / r for r in (8300, 8350, 8400, 8380, 8310, 8290, 8330)])
    torch_row = timed_row("train", [batch / r for r in (159, 170, 229, 8242, 180, 240, 200)])
    assert ratio_is_noisy(gpunn_row, "train", torch_row, "train")
    steady = timed_row("train", [batch / r for r in (8000, 8100, 8050, 7990, 8020, 8060, 8040)])
    assert not ratio_is_noisy(gpunn_row, "train", steady, "train")
    # one slow repeat among many fast ones (a 5x outlier) is enough: the speed changed
    outlier = timed_row("train", [batch / r for r in (8000, 8010, 8020, 1600, 8030, 8040, 8050)])
    assert ratio_is_noisy(gpunn_row, "train", outlier, "train")
    # moderate spreads that together stay within the rule
    a = timed_row("train", [1.0, 1.1, 1.2, 1.15, 1.05, 1.1, 1.12])
    b = timed_row("train", [1.0, 1.2, 1.3, 1.1, 1.25, 1.15, 1.05])
    assert a["train_spread"] + b["train_spread"] < 0.5 and not ratio_is_noisy(
        a, "train", b, "train"
    )
    wide = timed_row("train", [1.0, 1.1, 2.0, 2.5, 1.05, 2.2, 2.4])  # max / min only 2.5
    assert wide["train_spread"] > 0.5 and ratio_is_noisy(wide, "train", a, "train")


def row_with(**fields: object) -> dict:
    quiet = {k: v for p in ("train", "infer", "gemm") for k, v in timed_row(p, [1.0] * 7).items()}
    row = {name: None for name in ROW_FIELDS}
    row |= {"model": "784-256-10", "batch": 64, "engine": "gpunn", "device": "numpy"}
    row |= quiet | {"train_samples_per_s": 64.0, "gemm_count": 5}
    row |= {"limit_fraction": 0.8, "limit_fraction_best": 0.85}
    return row | fields


def test_a_limit_fraction_above_1_is_marked_disturbed_wherever_it_is_printed() -> None:
    row = row_with(limit_fraction=0.91, limit_fraction_best=1.03)
    row |= flag_ratios(row)
    assert row["limit_fraction_disturbed"] is True and row["limit_fraction_noisy"] is False
    cell = table_cells(row)[6]
    assert cell == "0.91 (1.03) disturbed"
    md = markdown_table({"rows": [row], "crossovers": []})
    assert "0.91 (1.03) disturbed" in md and f"- {NOTES['disturbed']}" in md
    sound = row_with() | flag_ratios(row_with())
    assert not sound["limit_fraction_disturbed"] and table_cells(sound)[6] == "0.80 (0.85)"
    assert "disturbed" not in markdown_table({"rows": [sound], "crossovers": []})
    above = row_with(limit_fraction=1.2, limit_fraction_best=0.9)
    assert flag_ratios(above)["limit_fraction_disturbed"]


def test_noisy_ratios_are_marked_in_the_table_and_explained() -> None:
    batch = 64
    row = row_with(vs_torch_train=36.25, vs_torch_train_best=1.01, vs_torch_infer=1.5)
    row |= timed_row("train", [batch / r for r in (8300, 8350, 8400, 8380, 8310, 8290, 8330)])
    torch_row = row_with(engine="torch", device="cpu")
    torch_row |= timed_row("train", [batch / r for r in (159, 170, 229, 8242, 180, 240, 200)])
    flags = flag_ratios(row, torch_row)
    assert flags == {
        "limit_fraction_noisy": False,  # gpunn's own timings are steady
        "limit_fraction_disturbed": False,
        "vs_torch_train_noisy": True,  # torch's training step is not
        "vs_torch_infer_noisy": False,
    }
    row |= flags
    cells = table_cells(row)
    assert cells[5] == "36.25 (1.01) noisy" and cells[8] == "1.50"
    md = markdown_table({"rows": [row], "crossovers": []})
    assert f"- {NOTES['noisy']}" in md


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
    assert groups == {
        "16-8-4 batch=2 numpy",
        "16-8-4 batch=8 numpy",
        "lenet5-1x28x28 batch=2 numpy",
    }
    names = {b["name"].split("[")[0] for b in benchmarks}
    assert {"test_gpunn_train_step", "test_gpunn_inference", "test_bare_gemms"} <= names


def test_the_cli_says_disturbed_during_the_sweep_and_under_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    row = row_with(limit_fraction=0.91, limit_fraction_best=1.03, infer_samples_per_s=100.0)
    row |= flag_ratios(row) | {"dtype": "float32", "optimizer": "SGD", "rss_peak_bytes": 2**20}

    def sweep(cfg: SweepConfig, progress: object) -> list[dict]:
        progress(row)  # type: ignore[operator]
        return [row]

    monkeypatch.setattr(bench_cli, "run_sweep", sweep)
    args = parse(["bench", "--backend", "numpy", "--compare", "none", "--no-plot"])
    args.out = str(tmp_path)
    assert bench_cli.run(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "limit 0.91 (disturbed)" in out  # the line printed when the point is done
    table = out[out.index("gpunn bench") : out.index("wrote ")]
    assert "0.91 (1.03)" in table  # the cell, which may wrap "disturbed" onto its next line
    assert " ".join(NOTES["disturbed"].split()) in table  # what it means, under the table
    assert table.count("disturbed") == 2  # in the cell and in the note
    md = (tmp_path / "bench.md").read_text()
    assert "0.91 (1.03) disturbed" in md
