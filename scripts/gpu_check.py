"""The GPU check: one command that gathers all of gpunn's GPU evidence into one JSON report.

    python scripts/gpu_check.py --out bench/results

It runs these steps, each in its own process with its own time limit (``--timeout STEP=S``),
inside one budget (``--budget``, default 470 s: the whole check stays under 8 minutes):

1. ``warm``: compiles every kernel gpunn launches (each fused kernel's self-check, in float32
   and float64, and short training runs of every layer, loss and optimizer with the fused
   kernels off and on) into CuPy's on-disk kernel cache, split over ``--jobs`` processes. A
   fresh machine starts with an empty cache and NVRTC needs seconds per reduction kernel: the
   test step would otherwise spend its time compiling, one kernel after another.
2. ``tests``: ``pytest -m gpu`` (the GPU-marked tests, the CuPy-vs-NumPy parity tests
   included) with ``GPUNN_BACKEND=cupy``, split over ``--jobs`` processes, recording pass/fail
   per test and the parity errors the tests report;
3. ``kernels``: every fused kernel's self-check, and GPU launches per training step, reference
   composition vs fused kernels (with torch.profiler, which sees every kernel in the process);
4. ``bench``: ``gpunn bench --backend numpy,cupy --compare torch --out DIR`` in the time left;
5. writes ``DIR/gpu_check_<card>_<YYYY-MM-DD>.json``, with each step's status (passed, failed,
   timeout, error or skipped), time and output tail; a step that ran out of time is named.

It needs no network. Without a usable GPU it prints one line saying why and exits with status 2.
Exit status 1 means something failed or ran out of time (the last line names it); 0 means every
step passed.

This file is also the pytest plugin (``-p gpu_check``) that records each test's outcome and
keeps one shard of the tests (``GPUNN_CHECK_SHARD=i/n``), and the worker of the ``warm`` and
``kernels`` steps (``--worker``).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy

ROOT = Path(__file__).resolve().parents[1]
RECORDS_ENV = "GPUNN_CHECK_RECORDS"  # where the plugin appends one JSON line per test report
SHARD_ENV = "GPUNN_CHECK_SHARD"  # "i/n": the plugin keeps every n-th test, from the i-th
BUDGET_S = 470  # the whole check must finish in under 8 minutes
#: each step's time limit in seconds (``--timeout STEP=SECONDS`` changes one); a step also never
#: gets more than what is left of the budget, less a reserve for writing the report
STEP_TIMEOUTS = {"warm": 150.0, "tests": 200.0, "kernels": 60.0, "bench": 240.0}
STEPS = tuple(STEP_TIMEOUTS)
RESERVE_S = 10.0
OUTPUT_TAIL = 3000  # characters of a step's output kept in the report

# ==========================================================================================
# pytest plugin: one JSON line per test outcome (loaded in the pytest subprocess)
# ==========================================================================================


def pytest_runtest_logreport(report: Any) -> None:
    """Record the call phase of every test, and any setup/teardown that did not pass."""
    path = os.environ.get(RECORDS_ENV)
    if not path or (report.when != "call" and report.outcome == "passed"):
        return
    if isinstance(report.longrepr, tuple):  # a skip: (file, line, "Skipped: reason")
        message = str(report.longrepr[2])
    else:
        message = "\n".join(str(report.longreprtext).strip().splitlines()[-6:])
    record = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "seconds": round(report.duration, 3),
        "message": message,
        "properties": {str(k): v for k, v in report.user_properties},
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")


def shard(items: list[Any], spec: str) -> tuple[list[Any], list[Any]]:
    """``(kept, dropped)``: shard ``"i/n"`` keeps every n-th item from the i-th."""
    i, n = (int(x) for x in spec.split("/"))
    if not 0 <= i < n:
        raise ValueError(f"{SHARD_ENV}={spec!r}: need 0 <= i < n")
    return items[i::n], [item for k, item in enumerate(items) if k % n != i]


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """With ``GPUNN_CHECK_SHARD=i/n`` keep this process's share of the tests."""
    spec = os.environ.get(SHARD_ENV)
    if not spec:
        return
    kept, dropped = shard(list(items), spec)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def summarize_tests(records: Path | Sequence[Path]) -> dict[str, Any]:
    """Counts by outcome, the worst value of every ``parity:<name>`` property, the failures,
    from one records file or several (one per shard)."""
    final: dict[str, str] = {}
    cases: list[dict[str, Any]] = []
    worst: dict[str, float] = {}
    paths = [records] if isinstance(records, Path) else list(records)
    for records_path in paths:
        if not records_path.exists():
            continue
        for line in records_path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            cases.append(rec)
            node, outcome = rec["nodeid"], rec["outcome"]
            if final.get(node) != "failed":
                final[node] = outcome
            for key, value in rec.get("properties", {}).items():
                if key.startswith("parity:"):
                    name = key.split(":", 1)[1]
                    worst[name] = max(worst.get(name, 0.0), float(value))
    return {
        "counts": dict(collections.Counter(final.values())),
        "worst_parity": worst,
        "failures": [c for c in cases if c["outcome"] == "failed"],
        "cases": cases,
    }


# ==========================================================================================
# A small training step built from the dispatchable kernels (reference or fused)
# ==========================================================================================


def make_mlp_state(
    xp: Any, *, batch: int, width: int, classes: int, seed: int, dtype: str = "float32"
) -> dict[str, Any]:
    """Data and a 2-layer MLP (width -> width -> classes) with flat params/grads/Adam state."""
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((batch, width))  # (N, D)
    y = (x @ rng.standard_normal((width, classes))).argmax(axis=1)  # (N,) a teacher's labels
    shapes = {"W1": (width, width), "b1": (width,), "W2": (width, classes), "b2": (classes,)}
    size = sum(int(numpy.prod(s)) for s in shapes.values())
    p = xp.zeros(size, dtype=dtype)
    g = xp.zeros(size, dtype=dtype)
    state: dict[str, Any] = {"p": p, "g": g, "m": xp.zeros_like(p), "v": xp.zeros_like(p)}
    start = 0
    for name, shape in shapes.items():
        stop = start + int(numpy.prod(shape))
        state[name] = p[start:stop].reshape(shape)
        state["d" + name] = g[start:stop].reshape(shape)
        if name.startswith("W"):
            state[name][...] = xp.asarray(rng.standard_normal(shape) * (2 / shape[0]) ** 0.5)
        start = stop
    state.update(x=xp.asarray(x, dtype=dtype), y=xp.asarray(y, dtype=xp.int64), step=0)
    return state


def mlp_step(state: dict[str, Any], impl: Callable[[str], Any], xp: Any) -> Any:
    """One Adam step of the MLP; ``impl(name)`` picks each kernel. Returns the loss (0-d)."""
    s = state
    z1 = xp.matmul(s["x"], s["W1"])  # (N, H)
    a1 = impl("bias_activation_forward")(z1, s["b1"], "relu", xp=xp)  # (N, H)
    logits = xp.matmul(a1, s["W2"])  # (N, C)
    logits += s["b2"]
    loss, dlogits = impl("softmax_cross_entropy")(logits, s["y"], xp=xp)  # (), (N, C)
    xp.matmul(a1.T, dlogits, out=s["dW2"])  # (H, C)
    dlogits.sum(axis=0, out=s["db2"])
    da1 = xp.matmul(dlogits, s["W2"].T)  # (N, H)
    dz1 = impl("activation_backward")(da1, a1, "relu", xp=xp)  # relu' from its output
    xp.matmul(s["x"].T, dz1, out=s["dW1"])  # (D, H)
    dz1.sum(axis=0, out=s["db1"])
    s["step"] += 1
    impl("adam_update")(
        s["p"],
        s["g"],
        s["m"],
        s["v"],
        step=s["step"],
        lr=1e-2,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        xp=xp,
    )
    return loss


def count_launches(
    step: Callable[[], Any], synchronize: Callable[[], None], out: Path, label: str
) -> dict[str, Any]:
    """GPU operations (kernels, memsets, copies) per call of ``step``, seen by torch.profiler.

    CUPTI, under torch.profiler, records every kernel in the process, CuPy's included.
    """
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except Exception as exc:
        return {"error": f"torch.profiler is not available ({type(exc).__name__}: {exc})"}
    if not torch.cuda.is_available():
        return {"error": "torch sees no CUDA device, so its profiler cannot record GPU activity"}
    try:
        step()  # warm-up: compiles kernels and fills the memory pool
        synchronize()
        repeats = 5
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(repeats):
                step()
            synchronize()
        device_events = [
            e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
        ]
        names = collections.Counter(e.name for e in device_events)
        trace = out / f"launches_{label}.trace.json"
        prof.export_chrome_trace(str(trace))
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if not device_events:
        return {"error": "torch.profiler recorded no GPU activity (CuPy launches not visible?)"}
    return {
        "per_step": len(device_events) / repeats,
        "by_name": {k: v / repeats for k, v in names.most_common(20)},
        "trace": trace.name,
    }


# ==========================================================================================
# Steps: processes with a time limit
# ==========================================================================================


@dataclass
class Step:
    """One step of the check: commands run at the same time (shards), one time limit."""

    name: str
    commands: list[list[str]]
    timeout: float
    envs: list[dict[str, str]] | None = None  # one environment per command (None: inherit)
    #: turns the finished step's raw result into the report entry (reads result files...)
    finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    skip_reason: str = ""  # set: the step is not run, and says why
    extra: dict[str, Any] = field(default_factory=dict)


def run_step(step: Step) -> dict[str, Any]:
    """Run every command of ``step`` at once and wait at most ``step.timeout`` seconds in all.

    Returns ``{"status", "seconds", "timeout_s", "rc", "output_tail", ...}``; status is
    "passed" (every command exited 0), "failed", "timeout" (then every command still running
    is killed, and the output so far is kept) or "error" (a command could not start).
    """
    result: dict[str, Any] = {"status": "passed", "timeout_s": round(step.timeout, 1)}
    result.update(step.extra)
    if step.skip_reason:
        return result | {"status": "skipped", "reason": step.skip_reason, "seconds": 0.0}
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        logs = [Path(tmp) / f"shard{i}.log" for i in range(len(step.commands))]
        procs = []
        try:
            envs = step.envs or [None] * len(step.commands)
            for cmd, env, log in zip(step.commands, envs, logs, strict=True):
                with open(log, "wb") as out:
                    procs.append(
                        subprocess.Popen(
                            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
                        )
                    )
        except OSError as exc:
            for proc in procs:
                proc.kill()
            return result | {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        deadline = start + max(step.timeout, 0.0)
        codes: list[int | None] = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 0.01)))
            except subprocess.TimeoutExpired:
                codes.append(None)
        if any(code is None for code in codes):
            result["status"] = "timeout"
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        elif any(code != 0 for code in codes):
            result["status"] = "failed"
        result["rc"] = codes[0] if len(codes) == 1 else codes
        text = "\n".join(log.read_text(errors="replace") for log in logs)
        result["output_tail"] = text[-OUTPUT_TAIL:]
    result["seconds"] = round(time.monotonic() - start, 1)
    if step.finish is not None:
        result = step.finish(result)
    return result


def run_steps(
    steps: Sequence[Step], budget: float, *, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Run ``steps`` in order within ``budget`` seconds: each gets its own limit or what is
    left of the budget (less a reserve), whichever is smaller; a step with under 5 s left is
    skipped, saying so. Returns one report entry per step, each with its ``name``."""
    start = time.monotonic()
    results = []
    for step in steps:
        left = budget - (time.monotonic() - start) - RESERVE_S
        if not step.skip_reason and left < 5:
            step.skip_reason = f"only {max(left, 0):.0f} s of the {budget:.0f} s budget left"
        step.timeout = min(step.timeout, max(left, 0.0))
        log(f"gpu_check: {step.name} (limit {step.timeout:.0f} s) ...")
        result = {"name": step.name} | run_step(step)
        log(f"gpu_check: {step.name}: {describe(result)}")
        results.append(result)
    return results


def describe(result: dict[str, Any]) -> str:
    """One line about a step's outcome, e.g. ``timeout: ran out of time after 200 s``."""
    status = result["status"]
    if status == "timeout":
        return f"timeout: ran out of time after {result['timeout_s']:.0f} s"
    if status == "skipped":
        return f"skipped: {result.get('reason', '')}"
    if status == "error":
        return f"error: {result.get('error', '')}"
    return f"{status} in {result.get('seconds', 0):.1f} s"


def verdict(steps: list[dict[str, Any]]) -> tuple[bool, str]:
    """``(ok, line)``: ok when every *required* step (``"required": True``: the tests and the
    kernel checks) passed. The line names every step that did not pass, each that ran out of
    time first: ``FAILED: step 'tests' ran out of time; step 'kernels' failed``, or
    ``OK; note: step 'bench' ran out of time`` when only optional steps fell short."""
    problems = []
    for wanted in ("timeout", "other"):
        for s in steps:
            status = s["status"]
            if status == "passed" or (status == "skipped" and s.get("optional")):
                continue
            if (status == "timeout") != (wanted == "timeout"):
                continue
            what = "ran out of time" if status == "timeout" else status
            problems.append((s.get("required", False), f"step '{s['name']}' {what}"))
    failed = [text for required, text in problems if required]
    notes = [text for required, text in problems if not required]
    if failed:
        return False, "FAILED: " + "; ".join(failed + notes)
    return True, "OK" + ("; note: " + "; ".join(notes) if notes else "")


def parse_timeouts(items: Sequence[str]) -> dict[str, float]:
    """``["tests=300", "warm=60"]`` -> the step limits with those changed; ValueError naming
    the steps for an unknown step or a bad number."""
    limits = dict(STEP_TIMEOUTS)
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in limits:
            raise ValueError(f"--timeout takes STEP=SECONDS with STEP one of {', '.join(STEPS)}")
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"--timeout {item}: {value!r} is not a number of seconds") from None
        if not seconds > 0:
            raise ValueError(f"--timeout {item}: the limit must be positive")
        limits[name] = seconds
    return limits


# ==========================================================================================
# The check
# ==========================================================================================


def report_name(card: str, date: str) -> str:
    """``gpu_check_<card with - for anything but letters and digits>_<date>.json``."""
    return f"gpu_check_{re.sub(r'[^A-Za-z0-9]+', '-', card).strip('-')}_{date}.json"


def _run(cmd: list[str], *, timeout: float) -> dict[str, Any]:
    """A short helper command (nvidia-smi, git): its exit code and output."""
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"rc": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"rc": done.returncode, "output_tail": (done.stdout + done.stderr)[-OUTPUT_TAIL:]}


def _versions(xp: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "numpy": numpy.__version__}
    for key, read in (
        ("cupy", lambda: xp.__version__),
        ("cuda_runtime", lambda: xp.cuda.runtime.runtimeGetVersion()),
        ("cuda_driver_api", lambda: xp.cuda.runtime.driverGetVersion()),
    ):
        try:
            info[key] = read()
        except Exception as exc:
            info[key] = f"unavailable ({type(exc).__name__})"
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
    except Exception as exc:
        info["torch"] = f"unavailable ({type(exc).__name__})"
    smi = _run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        timeout=20,
    )
    info["nvidia_smi"] = smi.get("output_tail", "").strip() if smi.get("rc") == 0 else None
    git = _run(["git", "rev-parse", "HEAD"], timeout=10)
    info["git_commit"] = git.get("output_tail", "").strip() if git.get("rc") == 0 else None
    return info


# ==========================================================================================
# Workers (run in the step processes)
# ==========================================================================================

WARM_LOSSES = ("softmax", "binary", "mse")
WARM_OPTIMIZERS = ("sgd", "adam", "adamw")


def warm_cases() -> list[tuple[str, str, str, str]]:
    """``(GPUNN_FUSED, dtype, loss, optimizer)`` of every short training run of the warm-up;
    the unfused runs come first, so the fused kernels' self-check (worker 0 starts with it)
    fills the cache before the other workers need it."""
    return [
        (fused, dtype, loss, opt)
        for fused in ("0", "1")
        for dtype in ("float32", "float64")
        for loss in WARM_LOSSES
        for opt in WARM_OPTIMIZERS
    ]


def warm(part: int, parts: int) -> dict[str, Any]:
    """Compile (into CuPy's kernel cache) what this worker's share of the runs launches."""
    import gpunn
    from gpunn import kernels

    backend = gpunn.get_backend("cupy")
    result: dict[str, Any] = {"part": f"{part}/{parts}", "runs": 0}
    rng = numpy.random.default_rng(0)
    X = rng.standard_normal((70, 12))  # 70 rows in batches of 16: a short last batch too
    with backend.activate(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a failing self-check is the kernels step's to report
        if part == 0:
            os.environ[kernels.ENV_VAR] = "1"
            kernels.reset()
            outcomes = kernels.self_check_all(backend.xp)  # every variant, float32 and float64
            result["self_check"] = {k: v.status for k, v in outcomes.items()}
        for i, (fused, dtype, loss_name, opt_name) in enumerate(warm_cases()):
            if i % parts != part:
                continue
            os.environ[kernels.ENV_VAR] = fused
            kernels.reset()
            out, loss, y = {
                "softmax": (3, gpunn.SoftmaxCrossEntropy(), X[:, :3].argmax(axis=1)),
                "binary": (1, gpunn.BinaryCrossEntropy(), (X[:, 0] > 0).astype(numpy.int64)),
                "mse": (2, gpunn.MeanSquaredError(), X[:, :2]),
            }[loss_name]
            opt = {
                "sgd": gpunn.SGD(0.01, momentum=0.9, nesterov=True, weight_decay=1e-4),
                "adam": gpunn.Adam(1e-3, weight_decay=1e-4),
                "adamw": gpunn.AdamW(1e-3),
            }[opt_name]
            layers = [
                gpunn.Dense(12, 16),
                gpunn.ReLU(),
                gpunn.Dense(16, 16),
                gpunn.LeakyReLU(0.1),
                gpunn.Dropout(0.1),
                gpunn.Dense(16, 16),
                gpunn.Sigmoid(),
                gpunn.Dense(16, 16),
                gpunn.Tanh(),
                gpunn.Dense(16, out),
            ]
            model = gpunn.Sequential(layers, backend=backend, dtype=dtype, seed=i)
            model.fit(X, y, loss=loss, optimizer=opt, epochs=1, batch_size=16, verbose=0)
            model.evaluate(X, y, loss=loss)
            model.predict(X)
            result["runs"] += 1
        backend.synchronize()
    return result


def run_kernel_checks(out_dir: Path) -> dict[str, Any]:
    """Self-check every fused kernel, count launches per step, compare fused and reference runs."""
    import gpunn

    backend = gpunn.get_backend("cupy")
    with backend.activate():
        return _kernel_checks(out_dir, backend)


def _kernel_checks(out_dir: Path, backend: Any) -> dict[str, Any]:
    import gpunn
    from gpunn import kernels

    xp = backend.xp
    result: dict[str, Any] = {}
    saved = os.environ.get(kernels.ENV_VAR)
    os.environ[kernels.ENV_VAR] = "1"  # the fused kernels are what this step checks
    kernels.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcomes = kernels.self_check_all(xp)
    result["self_check"] = {k: vars(v) for k, v in outcomes.items()}
    result["self_check_warnings"] = [str(w.message) for w in caught]

    def fused(name: str) -> Any:
        return kernels.get(name, xp)

    # the same MLP step, composed from the references and from the fused kernels
    losses = {}
    for label, impl in (("reference", kernels.reference), ("fused", fused)):
        state = make_mlp_state(xp, batch=512, width=256, classes=10, seed=0)
        losses[label] = [float(mlp_step(state, impl, xp)) for _ in range(20)]
        state = make_mlp_state(xp, batch=512, width=256, classes=10, seed=0)
        result[f"launches_mlp_{label}"] = count_launches(
            lambda state=state, impl=impl: mlp_step(state, impl, xp),
            backend.synchronize,
            out_dir,
            f"mlp_{label}",
        )
    ref, fus = numpy.array(losses["reference"]), numpy.array(losses["fused"])
    result["mlp_loss_curve_max_rel_diff"] = float(numpy.max(numpy.abs(fus - ref) / numpy.abs(ref)))

    # the library's own training step, with fused kernels off and on (shows the core's wiring)
    for flag in ("0", "1"):
        os.environ[kernels.ENV_VAR] = flag
        kernels.reset()  # re-read GPUNN_FUSED (the self-checks rerun: kernels stay compiled)
        model = gpunn.Sequential(
            [gpunn.Dense(256, 256), gpunn.ReLU(), gpunn.Dense(256, 10)], backend=backend, seed=0
        )
        loss, opt = gpunn.SoftmaxCrossEntropy(), gpunn.Adam(1e-3)
        x = numpy.random.default_rng(0).standard_normal((512, 256)).astype("float32")
        y = numpy.arange(512) % 10
        xd, yd = backend.asarray(x), backend.asarray(y)

        def train_step(model=model, loss=loss, opt=opt, xd=xd, yd=yd) -> None:
            loss.forward(model.forward(xd), yd)
            model.backward(loss.backward())
            opt.step(model)

        result[f"launches_sequential_fused_{flag}"] = count_launches(
            train_step, backend.synchronize, out_dir, f"sequential_fused_{flag}"
        )
    if saved is None:
        os.environ.pop(kernels.ENV_VAR, None)
    else:
        os.environ[kernels.ENV_VAR] = saved
    kernels.reset()
    return result


# ==========================================================================================
# Building the steps, and the command line
# ==========================================================================================


def _worker_command(kind: str, result: Path, part: str = "0/1", out: Path | None = None) -> list:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--part", part]
    cmd += ["--result", str(result)]
    return cmd + (["--out", str(out)] if out is not None else [])


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build_steps(args: argparse.Namespace, work: Path) -> list[Step]:
    """The check's steps for these arguments; ``work`` holds the workers' result files."""
    jobs = max(1, args.jobs)
    limits = args.timeouts

    warm_files = [work / f"warm{i}.json" for i in range(jobs)]

    def finish_warm(result: dict[str, Any]) -> dict[str, Any]:
        result["workers"] = [_read_json(f) for f in warm_files]
        return result

    warm_step = Step(
        "warm",
        [_worker_command("warm", f, f"{i}/{jobs}") for i, f in enumerate(warm_files)],
        limits["warm"],
        finish=finish_warm,
        extra={"jobs": jobs},
    )

    records = [work / f"records{i}.jsonl" for i in range(jobs)]
    env = dict(os.environ, GPUNN_BACKEND="cupy")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent), str(ROOT), env.get("PYTHONPATH", "")]
    )
    pytest_cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "gpu_check"]
    pytest_cmd += ["-p", "no:cacheprovider"]
    envs = [env | {RECORDS_ENV: str(r), SHARD_ENV: f"{i}/{jobs}"} for i, r in enumerate(records)]

    def finish_tests(result: dict[str, Any]) -> dict[str, Any]:
        result.update(summarize_tests(records))
        codes = result.get("rc")
        codes = codes if isinstance(codes, list) else [codes]
        if result["status"] in ("passed", "failed"):
            # pytest exits 5 when a shard holds no GPU test: that is no failure
            clean = all(code in (0, 5) for code in codes)
            counts = result["counts"]
            good = clean and counts.get("failed", 0) == 0 and counts.get("passed", 0) > 0
            result["status"] = "passed" if good else "failed"
            if counts.get("passed", 0) == 0:
                result["reason"] = "no GPU test passed (all skipped on a GPU machine fails too)"
        return result

    tests_step = Step(
        "tests",
        [pytest_cmd] * jobs,
        limits["tests"],
        envs=envs,
        finish=finish_tests,
        extra={
            "command": "GPUNN_BACKEND=cupy pytest " + " ".join(pytest_cmd[4:]),
            "jobs": jobs,
            "required": True,
        },
    )

    kernels_file = work / "kernels.json"

    def finish_kernels(result: dict[str, Any]) -> dict[str, Any]:
        found = _read_json(kernels_file)
        if found is not None:
            result.update(found)
            self_checks = found.get("self_check", {})
            if result["status"] == "passed" and not (
                self_checks and all(v["status"] == "fused" for v in self_checks.values())
            ):
                result["status"] = "failed"
                result["reason"] = "a fused kernel failed its self-check on the GPU"
        return result

    kernels_step = Step(
        "kernels",
        [_worker_command("kernels", kernels_file, out=args.out)],
        limits["kernels"],
        finish=finish_kernels,
        extra={"required": True},
    )

    bench_cmd = [sys.executable, "-m", "gpunn", "bench", "--backend", "numpy,cupy"]
    bench_cmd += ["--compare", "torch", "--out", str(args.out)]
    bench_step = Step(
        "bench",
        [bench_cmd],
        limits["bench"],
        skip_reason="--no-bench" if args.no_bench else "",
        extra={"command": "gpunn " + " ".join(bench_cmd[3:]), "optional": args.no_bench},
    )
    return [warm_step, tests_step, kernels_step, bench_step]


def gpu_status() -> tuple[str | None, list[dict[str, Any]], str]:
    """``(card name or None, every CuPy device's status, why there is no usable GPU)``."""
    import gpunn

    statuses = [s for s in gpunn.available_backends() if s.name.startswith("cupy")]
    usable = [s for s in statuses if s.usable]
    if not usable:
        reason = statuses[0].reason if statuses else "CuPy is not known to gpunn"
        return None, [vars(s) for s in statuses], reason
    return usable[0].detail or "unknown-gpu", [vars(s) for s in statuses], ""


def collect_versions() -> dict[str, Any]:
    """Versions of everything that shapes the results (each one "unavailable" if it fails)."""
    try:
        from gpunn.backend import _import_cupy

        xp = _import_cupy()
    except Exception as exc:
        return {"cupy": f"unavailable ({type(exc).__name__})"}
    return _versions(xp)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="directory for the report (default: bench/results)",
    )
    parser.add_argument("--no-bench", action="store_true", help="skip `gpunn bench`")
    parser.add_argument(
        "--budget", type=float, default=BUDGET_S, help="seconds for everything (default: 470)"
    )
    parser.add_argument(
        "--timeout",
        action="append",
        default=[],
        metavar="STEP=SECONDS",
        help="time limit of one step ("
        + ", ".join(f"{k} {v:.0f}" for k, v in STEP_TIMEOUTS.items())
        + " by default); repeat for several",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes sharing the warm-up and the tests (default: min(4, CPUs))",
    )
    parser.add_argument("--worker", choices=("warm", "kernels"), help=argparse.SUPPRESS)
    parser.add_argument("--part", default="0/1", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def worker(args: argparse.Namespace) -> int:
    """A step's process: do the work, write its JSON result, exit 0 (or 1 after an error)."""
    sys.path.insert(0, str(ROOT))
    try:
        if args.worker == "warm":
            part, parts = (int(x) for x in args.part.split("/"))
            result = warm(part, parts)
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            result = run_kernel_checks(args.out)
        code = 0
    except Exception as exc:
        result, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
    if args.result is not None:
        args.result.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(json.dumps(result, default=str)[:OUTPUT_TAIL])
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.timeouts = parse_timeouts(args.timeout)
    except ValueError as exc:
        parser.error(str(exc))  # exit status 2
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.worker is not None:
        return worker(args)
    start = time.monotonic()
    sys.path.insert(0, str(ROOT))

    card, devices, reason = gpu_status()
    if card is None:
        print(f"gpu_check: no usable GPU: {reason}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    path = args.out / report_name(card, today)
    print(f"gpu_check: {card}; report -> {path}", flush=True)
    report: dict[str, Any] = {
        "schema": 2,
        "date": today,
        "card": card,
        "devices": devices,
        "versions": collect_versions(),
        "budget_s": args.budget,
    }
    with tempfile.TemporaryDirectory() as work:
        steps = build_steps(args, Path(work))
        left = args.budget - (time.monotonic() - start)
        report["steps"] = run_steps(steps, left, log=lambda line: print(line, flush=True))
    report["timed_out"] = [s["name"] for s in report["steps"] if s["status"] == "timeout"]
    report["ok"], line = verdict(report["steps"])
    report["seconds"] = round(time.monotonic() - start, 1)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"gpu_check: {line} ({report['seconds']} s): {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
