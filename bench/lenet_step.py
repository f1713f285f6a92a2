"""LeNet-5 training step: gpunn against PyTorch eager, side by side, samples/s per batch size.

Both sides train the same network (``gpunn.presets.lenet5``: 1x28x28 input, conv 6@5x5 pad 2,
ReLU, max-pool 2, conv 16@5x5, ReLU, max-pool 2, 120, 84, 10) from the same float32 weights and
batch, with softmax cross-entropy and plain SGD (lr 0.01). Before any timing, three steps of
each are compared (loss and weights). A step is forward, loss, backward and the optimizer
update; the data stays in place.

Timing uses gpunn's own interleaving (``gpunn.bench.timing.time_interleaved``): gpunn and
PyTorch take turns of about half a second, with a pause between turns so the other library's
worker threads have gone idle; every turn times blocks of steps; the rounds go on until both
medians are stable or the budget is spent. Reported per batch size: the median samples/s of
each side with the min-max over blocks, the ratio of medians, the ratio of the fastest blocks
("best/best", the least-disturbed estimate on a shared machine) and the share of the CPU that
other processes used meanwhile. ``--cpu-time`` adds single-thread CPU time per step
(``time.thread_time``, both libraries on one thread, interleaved), a view of the work each
side does that other processes barely disturb. ``--ablate`` measures, in single-thread CPU
time, what each of the CNN layers' three choices is worth: the step with the conv + 2x2 pool
not fused, and with the pool not moved before the ReLU either; and im2col, col2im and the
max-pool of LeNet's layers with batch-innermost columns against (N, C, H, W)-ordered ones.

Run (CPU, 2 threads each, as measured in docs/cnn.md)::

    .venv/bin/python bench/lenet_step.py --sizes 16 32 64 128 256 --cpu-time

With ``--backend cupy`` gpunn runs on the GPU against PyTorch CUDA (when both are usable).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import threadpoolctl

import gpunn
from gpunn.bench.load import OtherLoad
from gpunn.bench.timing import Policy, Timed, time_interleaved
from gpunn.presets import lenet5

LR = 0.01


def gpunn_side(backend: str, n: int, seed: int = 0):
    """(model, step function, x, y) for gpunn's LeNet-5 at batch size n."""
    model = gpunn.Sequential(lenet5(), backend=backend, seed=seed, input_shape=(1, 28, 28))
    rng = np.random.default_rng(seed + 1)
    x_host = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    y_host = rng.integers(0, 10, size=n)
    x, y = model.backend.asarray(x_host), model.backend.asarray(y_host)
    loss, opt = gpunn.SoftmaxCrossEntropy(), gpunn.SGD(LR)

    def step():
        value = loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step(model)
        return value

    return model, step, x_host, y_host


def torch_side(torch, model, x_host, y_host, device: str):
    """(torch model, step function) with the gpunn model's weights, on ``device``."""
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    ).to(device)
    state = model.state_dict()
    with torch.no_grad():
        for i, layer in enumerate(net):
            if hasattr(layer, "weight"):
                W = state[f"{i}.W"]
                W = W.T if isinstance(layer, nn.Linear) else W  # gpunn's Dense W is (in, out)
                layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(W)))
                layer.bias.copy_(torch.from_numpy(state[f"{i}.b"]))
    x = torch.from_numpy(x_host).to(device)
    y = torch.from_numpy(y_host).to(device)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=LR)

    def step():
        opt.zero_grad(set_to_none=True)
        value = loss_fn(net(x), y)
        value.backward()
        opt.step()
        return value

    return net, step


def check_same_steps(torch, backend: str, device: str, n: int = 32) -> float:
    """Three steps of each side from the same start; the worst relative weight difference."""
    model, step, x, y = gpunn_side(backend, n)
    net, tstep = torch_side(torch, model, x, y, device)
    for _ in range(3):
        ours, theirs = float(step()), float(tstep().detach().cpu())
        assert abs(ours - theirs) <= 1e-4 * max(1.0, abs(theirs)), (ours, theirs)
    worst = 0.0
    for i, layer in enumerate(net):
        if hasattr(layer, "weight"):
            W = layer.weight.detach().cpu().numpy()
            W = W.T if isinstance(layer, torch.nn.Linear) else W
            ours = model.backend.to_numpy(model.params[f"{i}.W"])
            worst = max(worst, float(np.abs(ours - W).max() / np.abs(W).max()))
    assert worst < 1e-4, worst
    return worst


def wall_clock(torch, backend: str, device: str, n: int, policy: Policy) -> dict:
    """Interleaved samples/s of both sides at batch size n."""
    model, step, x, y = gpunn_side(backend, n)
    _, tstep = torch_side(torch, model, x, y, device)
    sync = model.backend.synchronize
    tsync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    entries = [
        Timed("gpunn", step, sync, group="gpunn"),
        Timed("torch", tstep, tsync, group="torch"),
    ]
    others = OtherLoad()
    timed = {}
    for t in entries:  # keep every block's time, for min-max and best/best
        timed[t.name] = t
    result = time_interleaved(entries, policy)
    share = others.fraction()
    row = {"batch": n, "others_cpu_share": share}
    for name, timing in result.items():
        rates = [n / s for s in timed[name].samples]
        row[name] = {
            "median": n / timing.median_s,
            "min": min(rates),
            "max": max(rates),
            "blocks": timing.repeats,
        }
    row["ratio"] = row["gpunn"]["median"] / row["torch"]["median"]
    row["best_over_best"] = row["gpunn"]["max"] / row["torch"]["max"]
    return row


def cpu_time(torch, n: int, rounds: int = 15, steps: int = 5) -> dict:
    """Median single-thread CPU seconds per step of each side (both on one thread)."""
    model, step, x, y = gpunn_side("numpy", n)
    _, tstep = torch_side(torch, model, x, y, "cpu")
    threads = torch.get_num_threads()
    try:
        with threadpoolctl.threadpool_limits(1):
            torch.set_num_threads(1)
            return _interleaved_cpu_time({"gpunn": step, "torch": tstep}, rounds, steps)
    finally:
        torch.set_num_threads(threads)


def ablation(sizes: list[int], rounds: int = 15, steps: int = 5) -> None:
    """Single-thread CPU time per step without each of the layers' performance choices."""
    from gpunn.math.conv import col2im, im2col, zeros_nchw
    from gpunn.math.pool import max_pool2d_forward
    from gpunn.nn.conv import Conv2D

    def unfused(n):  # the pool still moved before the ReLU, run by the conv, not fused
        model, step, _, _ = gpunn_side("numpy", n)
        for layer in model.layers:
            if isinstance(layer, Conv2D):
                layer._fuses_pool = lambda: False
        return step

    def plain(n):  # a Dropout(0) between ReLU and pool keeps them in the written order
        layers = lenet5()
        for i in (5, 2):
            layers.insert(i, gpunn.Dropout(0.0))
        model = gpunn.Sequential(layers, backend="numpy", input_shape=(1, 28, 28))
        rng = np.random.default_rng(1)
        x, y = rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)
        loss, opt = gpunn.SoftmaxCrossEntropy(), gpunn.SGD(LR)

        def step():
            loss.forward(model.forward(x), y)
            model.backward(loss.backward())
            opt.step(model)

        return step

    variants = {"gpunn": lambda n: gpunn_side("numpy", n)[1], "no fusion": unfused}
    variants["no fusion, no move"] = plain
    with threadpoolctl.threadpool_limits(1):
        print(f"{'N':>4} " + " ".join(f"{name:>20}" for name in variants) + "   (ms/step)")
        for n in sizes:
            steps_ = {name: make(n) for name, make in variants.items()}
            times = _interleaved_cpu_time(steps_, rounds, steps)
            print(f"{n:>4} " + " ".join(f"{1e3 * times[k]:>20.2f}" for k in variants), flush=True)
        print(f"{'N':>4} {'operation':>28} {'batch-innermost ms':>19} {'(N, C, H, W) ms':>16}")
        rng = np.random.default_rng(0)
        for n in sizes:
            x2 = rng.standard_normal((n, 6, 14, 14)).astype(np.float32)  # LeNet conv2's input
            z1 = rng.standard_normal((n, 6, 28, 28)).astype(np.float32)  # conv1's output
            ops = {}
            for batch_last in (True, False):
                xs = zeros_nchw(x2.shape, np.float32, xp=np, batch_last=batch_last)
                xs[...] = x2
                zs = zeros_nchw(z1.shape, np.float32, xp=np, batch_last=batch_last)
                zs[...] = z1
                cols = im2col(xs, 5, xp=np, batch_last=batch_last)
                pad = zeros_nchw(x2.shape, np.float32, xp=np, batch_last=batch_last)
                ops[("im2col conv2", batch_last)] = lambda xs=xs, bl=batch_last, c=cols: im2col(
                    xs, 5, xp=np, out=c, batch_last=bl
                )
                ops[("col2im conv2", batch_last)] = lambda c=cols, p=pad, bl=batch_last: col2im(
                    c, p.shape, 5, xp=np, padded=p, batch_last=bl
                )
                ops[("max-pool 2x2 of conv1", batch_last)] = lambda zs=zs: max_pool2d_forward(
                    zs, 2, xp=np
                )
            times = _interleaved_cpu_time(ops, rounds, steps)
            for name in ("im2col conv2", "col2im conv2", "max-pool 2x2 of conv1"):
                print(
                    f"{n:>4} {name:>28} {1e3 * times[(name, True)]:>19.3f} "
                    f"{1e3 * times[(name, False)]:>16.3f}",
                    flush=True,
                )


def _interleaved_cpu_time(calls: dict, rounds: int, steps: int) -> dict:
    """Median CPU seconds per call of each callable, timed in alternating order."""
    times: dict = {name: [] for name in calls}
    for f in calls.values():  # warm-up
        for _ in range(3):
            f()
    names = list(calls)
    for r in range(rounds):
        for name in names if r % 2 else names[::-1]:
            t0 = time.thread_time()
            for _ in range(steps):
                calls[name]()
            times[name].append((time.thread_time() - t0) / steps)
    return {name: statistics.median(v) for name, v in times.items()}


def machine(torch) -> str:
    blas = [
        f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
        for i in threadpoolctl.threadpool_info()
        if i["user_api"] == "blas"
    ]
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), BLAS {'; '.join(blas)}, load average "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--backend", default="numpy", help="numpy (against torch CPU) or cupy (CUDA)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS and torch threads (CPU)")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of timing per side")
    ap.add_argument("--cpu-time", action="store_true", help="add single-thread CPU time/step")
    ap.add_argument("--ablate", action="store_true", help="only the ablation (see above)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()
    if args.ablate:
        ablation(args.sizes)
        return

    import torch

    device = "cuda:0" if args.backend.startswith("cupy") else "cpu"
    torch.set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(args.threads, user_api="blas")
    print(machine(torch))
    worst = check_same_steps(torch, args.backend, device)
    print(f"check: 3 SGD steps against torch at N=32, worst weight difference {worst:.1e}")
    policy = Policy(min_repeats=15, max_repeats=2000, budget_s=args.budget, target_spread=0.02)
    rows = []
    header = (
        f"{'N':>4} {'gpunn samples/s (min-max)':>27} {'torch samples/s (min-max)':>27} "
        f"{'ratio':>6} {'best/best':>9} {'others':>7}"
    )
    print(header)
    for n in args.sizes:
        row = wall_clock(torch, args.backend, device, n, policy)
        g, t = row["gpunn"], row["torch"]
        share = row["others_cpu_share"]
        print(
            f"{n:>4} {g['median']:>8.0f} ({g['min']:>6.0f}-{g['max']:>6.0f})    "
            f"{t['median']:>8.0f} ({t['min']:>6.0f}-{t['max']:>6.0f})    {row['ratio']:>6.2f} "
            f"{row['best_over_best']:>9.2f} "
            f"{'?' if share is None else f'{100 * share:.0f}%':>7}",
            flush=True,
        )
        rows.append(row)
    if args.cpu_time and device == "cpu":
        print(f"{'N':>4} {'gpunn ms/step':>14} {'torch ms/step':>14} {'torch/gpunn':>12}")
        for n in args.sizes:
            c = cpu_time(torch, n)
            print(
                f"{n:>4} {1e3 * c['gpunn']:>14.2f} {1e3 * c['torch']:>14.2f} "
                f"{c['torch'] / c['gpunn']:>12.2f}",
                flush=True,
            )
            next(r for r in rows if r["batch"] == n)["cpu_time_s"] = c
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(torch), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
