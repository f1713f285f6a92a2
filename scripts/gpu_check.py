"""The GPU check: one command that gathers all of gpunn's GPU evidence into one JSON report.

    python scripts/gpu_check.py --out bench/results

1. runs ``pytest -m gpu`` (the GPU-marked tests, the CuPy-vs-NumPy parity tests included) with
   ``GPUNN_BACKEND=cupy``, recording pass/fail per test and the parity errors the tests report;
2. runs every fused kernel's self-check and counts GPU launches per training step, reference
   composition vs fused kernels (with torch.profiler, which sees every kernel in the process);
3. runs ``gpunn bench --backend numpy,cupy --compare torch --out DIR`` when that command exists;
4. writes ``DIR/gpu_check_<card>_<YYYY-MM-DD>.json``.

It needs no network. Without a usable GPU it prints one line saying why and exits with status 2.
Exit status 1 means something failed (see the report); 0 means every test and self-check passed.

This file is also the pytest plugin (``-p gpu_check``) that records each test's outcome.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy

ROOT = Path(__file__).resolve().parents[1]
RECORDS_ENV = "GPUNN_CHECK_RECORDS"  # where the plugin appends one JSON line per test report
BUDGET_S = 470  # the whole check must finish in under 8 minutes
PYTEST_TIMEOUT_S = 300


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


def summarize_tests(records_path: Path) -> dict[str, Any]:
    """Counts by outcome, the worst value of every ``parity:<name>`` property, the failures."""
    final: dict[str, str] = {}
    cases: list[dict[str, Any]] = []
    worst: dict[str, float] = {}
    if records_path.exists():
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
# The check
# ==========================================================================================


def report_name(card: str, date: str) -> str:
    """``gpu_check_<card with - for anything but letters and digits>_<date>.json``."""
    return f"gpu_check_{re.sub(r'[^A-Za-z0-9]+', '-', card).strip('-')}_{date}.json"


def _run(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    start = time.monotonic()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 1)
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-3000:]
        return {
            "rc": None,
            "timed_out": True,
            "seconds": round(time.monotonic() - start, 1),
            "output_tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail,
        }
    except OSError as exc:
        return {"rc": None, "error": f"{type(exc).__name__}: {exc}", "seconds": 0.0}
    return {
        "rc": done.returncode,
        "seconds": round(time.monotonic() - start, 1),
        "output_tail": (done.stdout + done.stderr)[-3000:],
    }


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


def run_tests(timeout: float) -> dict[str, Any]:
    """``pytest -m gpu`` on CuPy in a subprocess, with this file as the recording plugin."""
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "records.jsonl"
        env = dict(os.environ)
        env.update(GPUNN_BACKEND="cupy", **{RECORDS_ENV: str(records)})
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).parent), str(ROOT), env.get("PYTHONPATH", "")]
        )
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "tests",
            "-q",
            "-p",
            "gpu_check",
            "-p",
            "no:cacheprovider",
        ]
        result = _run(cmd, timeout=timeout, env=env)
        result["command"] = "GPUNN_BACKEND=cupy " + " ".join(cmd[2:])
        result.update(summarize_tests(records))
    return result


def run_kernel_checks(out_dir: Path) -> dict[str, Any]:
    """Self-check every fused kernel, count launches per step, compare fused and reference runs."""
    import gpunn
    from gpunn import kernels

    backend = gpunn.get_backend("cupy")
    xp = backend.xp
    result: dict[str, Any] = {}
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
    saved = os.environ.get(kernels.ENV_VAR)
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


def run_bench(out_dir: Path, timeout: float) -> dict[str, Any]:
    """``gpunn bench --backend numpy,cupy --compare torch --out DIR``, if that command exists."""
    if timeout < 60:
        return {"skipped": f"only {timeout:.0f} s of the time budget left"}
    probe = _run([sys.executable, "-m", "gpunn", "bench", "--help"], timeout=60)
    if probe.get("rc") != 0:
        return {"skipped": "`gpunn bench` is not available", "probe": probe}
    cmd = [
        sys.executable,
        "-m",
        "gpunn",
        "bench",
        "--backend",
        "numpy,cupy",
        "--compare",
        "torch",
        "--out",
        str(out_dir),
    ]
    result = _run(cmd, timeout=timeout)
    result["command"] = "gpunn " + " ".join(cmd[3:])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="directory for the report (default: bench/results)",
    )
    parser.add_argument("--no-bench", action="store_true", help="skip `gpunn bench`")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for everything")
    args = parser.parse_args(argv)
    start = time.monotonic()
    sys.path.insert(0, str(ROOT))

    import gpunn

    statuses = [s for s in gpunn.available_backends() if s.name.startswith("cupy")]
    usable = [s for s in statuses if s.usable]
    if not usable:
        reason = statuses[0].reason if statuses else "CuPy is not known to gpunn"
        print(f"gpu_check: no usable GPU: {reason}", file=sys.stderr)
        return 2
    card = usable[0].detail or "unknown-gpu"
    args.out.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    print(f"gpu_check: {card}; report -> {args.out / report_name(card, today)}", flush=True)

    backend = gpunn.get_backend("cupy")
    report: dict[str, Any] = {
        "schema": 1,
        "date": today,
        "card": card,
        "devices": [vars(s) for s in statuses],
        "versions": _versions(backend.xp),
    }
    print("gpu_check: pytest -m gpu ...", flush=True)
    report["tests"] = run_tests(min(PYTEST_TIMEOUT_S, args.budget - 60))
    counts = report["tests"]["counts"]
    print(f"gpu_check: tests {counts}", flush=True)

    print("gpu_check: kernel self-checks and launch counts ...", flush=True)
    try:
        report["kernels"] = run_kernel_checks(args.out)
    except Exception as exc:
        report["kernels"] = {"error": f"{type(exc).__name__}: {exc}"}

    if args.no_bench:
        report["bench"] = {"skipped": "--no-bench"}
    else:
        print("gpu_check: gpunn bench ...", flush=True)
        left = args.budget - (time.monotonic() - start) - 15
        report["bench"] = run_bench(args.out, left)

    self_checks = report["kernels"].get("self_check", {})
    report["ok"] = bool(
        report["tests"].get("rc") == 0
        and counts.get("failed", 0) == 0
        and counts.get("passed", 0) > 0  # all skipped on a GPU machine is a failure too
        and self_checks
        and all(v["status"] == "fused" for v in self_checks.values())
    )
    report["seconds"] = round(time.monotonic() - start, 1)
    path = args.out / report_name(card, today)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"gpu_check: {'OK' if report['ok'] else 'FAILED'} in {report['seconds']} s: {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
