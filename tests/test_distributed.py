"""Tests for gpunn.training.distributed: data-parallel fit over MPI, communicators, NCCL buffers.

The end-to-end tests start real 2-rank MPI jobs (``mpiexec -n 2 python -m mpi4py ...``) of the
scripts in tests/mpi/ and compare what they write with one-process training. They are skipped,
with the reason, only where mpi4py or mpiexec is not installed. The NCCL communicator is tested
against stand-ins for ``cupy.cuda.nccl`` here, and for real in the GPU tests.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path
from subprocess import PIPE
from typing import Any

import numpy as np
import pytest

import gpunn
from gpunn import checkpoint
from gpunn.training import Callback, ModelCheckpoint, distributed
from gpunn.training.distributed import (
    MPICommunicator,
    NCCLCommunicator,
    SingleProcess,
    choose_kind,
    device_spec_for_rank,
    get_communicator,
    shard_bounds,
)

HERE = Path(__file__).parent
MPI_SCRIPTS = HERE / "mpi"
TIMEOUT = 120  # seconds for one MPI job; each takes about one here


# --------------------------------------------------------------------------------------------
# Launching MPI jobs
# --------------------------------------------------------------------------------------------


def mpi_unavailable() -> str | None:
    """Why MPI cannot be used in this process (gpunn's own check), or None when it can.

    mpi4py installed without an MPI library raises RuntimeError, not ImportError, at
    ``from mpi4py import MPI``; ``distributed._mpi`` turns both into one RuntimeError.
    """
    try:
        distributed._mpi()
    except RuntimeError as exc:
        return str(exc)
    return None


@functools.cache
def _mpiexec() -> list[str] | str:
    """The mpiexec command line prefix, or why MPI jobs cannot be started here."""
    reason = mpi_unavailable()
    if reason is not None:
        return reason
    exe = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if exe is None:
        return "no mpiexec found (next to Python or on PATH); pip install 'gpunn[mpi]'"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    text = version.stdout + version.stderr
    if "HYDRA" in text:  # MPICH: start the ranks as local processes (no ssh, loopback only)
        return [exe, "-launcher", "fork"]
    if "Open MPI" in text or "OpenRTE" in text:
        extra = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
        return [exe, *extra]
    return [exe]


BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def mpirun(
    args: list[str],
    *,
    n: int = 2,
    cwd: Path,
    backend: str = "numpy",
    threads: int | None = 1,
    env: dict[str, str] | None = None,
) -> tuple[Any, float]:
    """Run ``python -m mpi4py ARGS`` on n ranks; returns (CompletedProcess, seconds).

    ``threads`` sets the BLAS/OpenMP thread variables of every rank; None removes them, so
    each rank's BLAS starts as it would for a user who set nothing. ``env`` adds variables.
    """
    prefix = _mpiexec()
    if isinstance(prefix, str):
        pytest.skip(prefix)
    env = dict(os.environ, GPUNN_BACKEND=backend, **(env or {}))
    for var in BLAS_VARIABLES:
        env.pop(var, None)
        if threads is not None:
            env[var] = str(threads)  # two ranks share this machine's cores
    cmd = [*prefix, "-n", str(n), sys.executable, "-m", "mpi4py", *args]
    t0 = time.perf_counter()
    # a session of its own, so that a hung job's ranks can all be killed with mpiexec
    job = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=PIPE, stderr=PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = job.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        stdout, stderr = job.communicate()
        pytest.fail(f"the MPI job ran past {TIMEOUT} s:\n{stdout}\n{stderr}")
    done = subprocess.CompletedProcess(cmd, job.returncode, stdout, stderr)
    return done, time.perf_counter() - t0


def output(done: Any) -> str:
    return f"exit status {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


# --------------------------------------------------------------------------------------------
# Two ranks train the model one process trains
# --------------------------------------------------------------------------------------------

CASES = ["float64", "float32", "uneven", "chunked"]  # see tests/mpi/train_equiv.py
RTOL = {"float64": 1e-10, "float32": 1e-5, "uneven": 1e-10, "chunked": 1e-10}


@pytest.fixture(scope="module")
def equiv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of one 2-rank run of tests/mpi/train_equiv.py (all cases)."""
    out = tmp_path_factory.mktemp("equiv")
    done, _ = mpirun([str(MPI_SCRIPTS / "train_equiv.py"), str(out)], cwd=out)
    assert done.returncode == 0, output(done)
    return out


def load(out: Path, case: str, who: str) -> Any:
    return np.load(out / f"{case}.{who}.npz")


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_train_the_same_weights_as_one_process(equiv: Path, case: str) -> None:
    ref, rank0 = load(equiv, case, "reference"), load(equiv, case, "rank0")
    assert not np.allclose(ref["params"], 0)
    np.testing.assert_allclose(rank0["params"], ref["params"], rtol=RTOL[case], atol=0)


@pytest.mark.parametrize("case", CASES)
def test_both_ranks_hold_identical_weights(equiv: Path, case: str) -> None:
    rank0, rank1 = load(equiv, case, "rank0"), load(equiv, case, "rank1")
    np.testing.assert_array_equal(rank0["params"], rank1["params"])


@pytest.mark.parametrize("case", CASES)
def test_epoch_loss_and_accuracy_are_those_of_the_whole_data(equiv: Path, case: str) -> None:
    ref = load(equiv, case, "reference")
    for rank in ("rank0", "rank1"):
        got = load(equiv, case, rank)
        np.testing.assert_allclose(got["loss"], ref["loss"], rtol=RTOL[case])
        np.testing.assert_allclose(got["accuracy"], ref["accuracy"], rtol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_one_host_read_per_epoch_on_every_rank(equiv: Path, case: str) -> None:
    for rank in ("rank0", "rank1"):
        reads = load(equiv, case, rank)["reads"]
        assert len(reads) >= 1 and set(reads.tolist()) == {1}


@pytest.mark.parametrize("case", CASES)
def test_a_checkpoint_of_a_distributed_run_loads_in_one_process(equiv: Path, case: str) -> None:
    model, optimizer, info = checkpoint.load_with_optimizer(equiv / f"{case}.ckpt", "numpy")
    np.testing.assert_array_equal(model.flat_params, load(equiv, case, "rank0")["params"])
    assert optimizer is not None and info["epoch"] == len(load(equiv, case, "rank0")["loss"])
    assert int(load(equiv, case, "rank0")["saved"]) == info["epoch"]  # one save an epoch ...
    assert int(load(equiv, case, "rank1")["saved"]) == 0  # ... by rank 0 alone


# --------------------------------------------------------------------------------------------
# CNNs, and BatchNorm's running statistics (tests/mpi/conv_equiv.py)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of one 2-rank run of tests/mpi/conv_equiv.py."""
    out = tmp_path_factory.mktemp("conv")
    done, _ = mpirun([str(MPI_SCRIPTS / "conv_equiv.py"), str(out)], cwd=out)
    assert done.returncode == 0, output(done)
    return out


def test_two_ranks_train_the_cnn_one_process_trains(conv_run: Path) -> None:
    """Conv2D, MaxPool2D, Flatten, Dense: 33-row batches split 17 + 16, float64."""
    ref = load(conv_run, "conv", "reference")
    rank0, rank1 = load(conv_run, "conv", "rank0"), load(conv_run, "conv", "rank1")
    np.testing.assert_allclose(rank0["params"], ref["params"], rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(rank0["params"], rank1["params"])
    np.testing.assert_allclose(rank0["loss"], ref["loss"], rtol=1e-10)
    assert ref["loss"][-1] < ref["loss"][0]  # it learnt something


def test_batchnorm_statistics_are_averaged_over_the_ranks_every_epoch(conv_run: Path) -> None:
    """The documented rule: each rank's BatchNorm running mean and variance follow its own
    shards during an epoch; at the epoch's end every rank gets the mean over the ranks, which
    is what rank 0's checkpoint saves."""
    rank0, rank1 = load(conv_run, "batchnorm", "rank0"), load(conv_run, "batchnorm", "rank1")
    before0, before1 = rank0["before"], rank1["before"]  # (epochs, statistics) before averaging
    assert before0.shape == before1.shape == (2, 2 * (3 + 8))  # mean and variance, 2 layers
    assert not np.allclose(before0[-1], before1[-1])  # the shards' statistics differed ...
    average = (before0[-1] + before1[-1]) / 2
    np.testing.assert_allclose(rank0["state"], average, rtol=1e-14, atol=0)  # ... and now not
    np.testing.assert_array_equal(rank0["state"], rank1["state"])
    np.testing.assert_array_equal(rank0["params"], rank1["params"])
    saved = checkpoint.load(conv_run / "batchnorm.ckpt", "numpy")
    np.testing.assert_array_equal(saved.flat_state, rank0["state"])
    np.testing.assert_array_equal(saved.flat_params, rank0["params"])
    # rank 1 started 5 above rank 0's statistics: the start broadcast them, so after the first
    # epoch (5 steps of momentum 0.1) the ranks differ only by their shards, not by 5 * 0.9^5
    assert rank0["broadcast"] and rank1["broadcast"]
    assert np.abs(before0[0] - before1[0]).max() < 1.0


def test_cli_two_ranks_train_the_lenet_one_process_trains(tmp_path: Path) -> None:
    """``gpunn train --distributed --model lenet`` on 12x12 images (LeNet-5: no Dropout, no
    BatchNorm) gives the model one process gives."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", X=rng.random((60, 1, 12, 12)), y=np.arange(60) % 3)
    args = "train --data img.npz --model lenet --epochs 2 --batch-size 16 --dtype float64"
    args += " --optimizer sgd --lr 0.05 --seed 4 --save {}"
    dist, single = tmp_path / "dist.ckpt", tmp_path / "single.ckpt"
    done, _ = mpirun(["-m", "gpunn", *args.format(dist).split(), "--distributed"], cwd=tmp_path)
    assert done.returncode == 0, output(done)
    assert "60 images of 1x12x12" in done.stdout and "ranks:   2, mpi" in done.stdout
    alone = subprocess.run(
        [sys.executable, "-m", "gpunn", *args.format(single).split()],
        cwd=tmp_path,
        env=dict(os.environ, GPUNN_BACKEND="numpy"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert alone.returncode == 0, output(alone)
    a, b = checkpoint.load(dist, "numpy"), checkpoint.load(single, "numpy")
    assert a.input_shape == b.input_shape == (1, 12, 12)
    np.testing.assert_allclose(a.flat_params, b.flat_params, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------
# Failures end the whole job
# --------------------------------------------------------------------------------------------


def test_an_exception_on_one_rank_ends_the_job_quickly(tmp_path: Path) -> None:
    done, seconds = mpirun([str(MPI_SCRIPTS / "failure.py"), "raise"], cwd=tmp_path)
    assert done.returncode != 0, output(done)
    assert "deliberate failure on rank 1" in done.stderr, output(done)
    assert "finished without an error" not in done.stdout
    assert seconds < 30, f"the job took {seconds:.1f} s to end: a rank was left waiting"


def test_ranks_that_drift_apart_are_stopped(tmp_path: Path) -> None:
    done, _ = mpirun([str(MPI_SCRIPTS / "failure.py"), "drift"], cwd=tmp_path)
    assert done.returncode != 0, output(done)
    assert "DriftError: the ranks' weights have drifted apart" in done.stderr, output(done)


def test_ranks_with_different_data_refuse_to_start(tmp_path: Path) -> None:
    done, _ = mpirun([str(MPI_SCRIPTS / "failure.py"), "mismatch"], cwd=tmp_path)
    assert done.returncode != 0, output(done)
    assert "disagree on the number of samples (from 400 to 401)" in done.stderr, output(done)


# --------------------------------------------------------------------------------------------
# Ranks divide the machine's cores between them
# --------------------------------------------------------------------------------------------


def rank_reports(out: Path) -> list[dict[str, Any]]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_ranks_divide_the_cores_between_their_blas_pools(tmp_path: Path) -> None:
    """With no thread variables set, each rank's BLAS starts one thread per core; after
    get_communicator each of the 2 ranks has cores // 2 (at least 1), and keeps it through fit."""
    pytest.importorskip("threadpoolctl", reason="threadpoolctl is not installed")
    done, _ = mpirun([str(MPI_SCRIPTS / "threads.py"), str(tmp_path)], cwd=tmp_path, threads=None)
    assert done.returncode == 0, output(done)
    for report in rank_reports(tmp_path):
        assert report["size"] == 2 and report["before"], report
        expected = max(1, min(max(report["before"]), report["cpus"] // 2))
        assert report["after"] == [expected] * len(report["before"]), report
        assert report["after_fit"] == report["after"] and report["comm_threads"] == expected
        if report["cpus"] >= 2 and max(report["before"]) >= 2:
            assert expected < max(report["before"])  # it did divide: not a vacuous check


def test_threads_per_rank_can_be_set_by_the_environment(tmp_path: Path) -> None:
    pytest.importorskip("threadpoolctl", reason="threadpoolctl is not installed")
    done, _ = mpirun(
        [str(MPI_SCRIPTS / "threads.py"), str(tmp_path)],
        cwd=tmp_path,
        threads=1,  # the override wins over the variables, even upwards
        env={distributed.THREADS_ENV: "3"},
    )
    assert done.returncode == 0, output(done)
    for report in rank_reports(tmp_path):
        assert report["before"] and set(report["before"]) == {1}, report
        assert set(report["after"]) == {3} and report["comm_threads"] == 3, report


@pytest.mark.parametrize(
    ("cpus", "sharing", "current", "expected"),
    [
        (2, 2, 2, 1),  # the 2-core machine, 2 ranks: one thread each
        (16, 2, 16, 8),
        (16, 3, 16, 5),  # the remainder is left idle rather than oversubscribed
        (16, 4, 2, 2),  # a smaller limit the user set stands
        (2, 4, 2, 1),  # more ranks than cores: still one thread, never zero
        (8, 1, 8, 8),  # a rank alone on its cores keeps them all
        (8, 2, None, 4),  # the pool's count unknown
    ],
)
def test_divide_cores(cpus: int, sharing: int, current: int | None, expected: int) -> None:
    assert distributed.divide_cores(cpus, sharing, current) == expected


def test_sharing_ranks_counts_the_ranks_that_may_run_on_my_cores() -> None:
    unbound = [set(range(8))] * 4
    assert distributed.sharing_ranks(set(range(8)), unbound) == 4
    bound = [{0, 1}, {2, 3}, {4, 5}, {6, 7}]  # a launcher bound each rank to 2 cores
    assert distributed.sharing_ranks({2, 3}, bound) == 1
    assert distributed.divide_cores(2, distributed.sharing_ranks({2, 3}, bound), 8) == 2
    assert distributed.sharing_ranks({0, 1, 2, 3}, [{0, 1, 2, 3}, {2, 3, 4, 5}, {6, 7}]) == 2


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("", None), ("auto", None), (" 4 ", 4), (2, 2)]
)
def test_threads_per_rank_values(
    monkeypatch: pytest.MonkeyPatch, value: Any, expected: int | None
) -> None:
    monkeypatch.delenv(distributed.THREADS_ENV, raising=False)
    assert distributed._parse_threads(value) == expected
    if isinstance(value, str):
        monkeypatch.setenv(distributed.THREADS_ENV, value)
        assert distributed._parse_threads(None) == expected


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", True])
def test_bad_threads_per_rank_is_refused(monkeypatch: pytest.MonkeyPatch, value: Any) -> None:
    with pytest.raises(ValueError, match="threads_per_rank must be a positive integer or 'auto'"):
        distributed._parse_threads(value)
    monkeypatch.setenv(distributed.THREADS_ENV, str(value))
    with pytest.raises(ValueError, match="GPUNN_THREADS_PER_RANK must be a positive integer"):
        distributed._parse_threads(None)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

TRAIN = "train --dataset digits --hidden 32 --epochs 2 --batch-size 37 --dtype float64"
TRAIN += " --optimizer sgd --lr 0.05 --seed 4 --save {}"


def test_cli_two_ranks_train_the_model_one_process_trains(tmp_path: Path) -> None:
    dist, single = tmp_path / "dist.ckpt", tmp_path / "single.ckpt"
    # 2 threads per rank where "auto" would give each of the 2 ranks 1 of the 2 cores
    flags = ["--distributed", "--threads-per-rank", "2"]
    done, _ = mpirun(["-m", "gpunn", *TRAIN.format(dist).split(), *flags], cwd=tmp_path)
    assert done.returncode == 0, output(done)
    assert done.stdout.count("test accuracy") == 1, output(done)  # rank 0 alone reports
    assert "ranks:   2, mpi" in done.stdout, output(done)
    assert "2 BLAS threads each" in done.stdout, output(done)
    alone = subprocess.run(
        [sys.executable, "-m", "gpunn", *TRAIN.format(single).split()],
        cwd=tmp_path,
        env=dict(os.environ, GPUNN_BACKEND="numpy"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert alone.returncode == 0, output(alone)
    a, b = checkpoint.load(dist, "numpy"), checkpoint.load(single, "numpy")
    np.testing.assert_allclose(a.flat_params, b.flat_params, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------
# Sharding and choices (no MPI job)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 32, 33])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_shards_split_a_batch_like_array_split(n: int, size: int) -> None:
    rows = np.arange(n)
    expected = np.array_split(rows, size)
    for rank in range(size):
        lo, hi = shard_bounds(n, rank, size)
        np.testing.assert_array_equal(rows[lo:hi], expected[rank])


def gpus(
    *ids: str | None, nccl: bool = True, host: str = "a"
) -> list[tuple[str, str | None, bool]]:
    return [(host, gpu, nccl and gpu is not None) for gpu in ids]


def test_one_process_needs_no_communication() -> None:
    assert choose_kind("auto", gpus(None))[0] == "single"
    assert choose_kind("auto", gpus("0"))[0] == "single"


def test_nccl_is_chosen_when_every_rank_has_its_own_gpu() -> None:
    assert choose_kind("auto", gpus("0", "1"))[0] == "nccl"
    # the same device number on two machines is two GPUs
    assert choose_kind("auto", gpus("0", host="a") + gpus("0", host="b"))[0] == "nccl"


@pytest.mark.parametrize(
    ("ranks", "why"),
    [
        (gpus("0", None), "rank 1 (on a) has no GPU"),
        (gpus("0", "1", nccl=False), "NCCL does not load on rank 0"),
        (gpus("0", "1", "0"), "ranks 0 and 2 share GPU 0 on a"),
    ],
)
def test_mpi_is_chosen_when_nccl_cannot_serve_every_rank(ranks: list, why: str) -> None:
    kind, reason = choose_kind("auto", ranks)
    assert kind == "mpi" and why in reason
    with pytest.raises(RuntimeError, match=re.escape(f"cannot use NCCL: {why}")):
        choose_kind("nccl", ranks)


def test_mpi_can_be_forced_and_unknown_kinds_are_refused() -> None:
    assert choose_kind("mpi", gpus("0", "1"))[0] == "mpi"
    with pytest.raises(ValueError, match="one of"):
        choose_kind("gloo", gpus("0", "1"))


@pytest.mark.parametrize(
    ("spec", "local", "count", "expected"),
    [
        ("auto", 5, 4, "cupy:1"),
        ("cupy", 2, 2, "cupy:0"),
        ("cupy", 3, 8, "cupy:3"),
        ("auto", 3, 1, "cupy:0"),  # one GPU: every rank on it
        ("cupy:1", 0, 4, "cupy:1"),  # an explicit device is kept
        ("numpy", 1, 4, "numpy"),
        ("auto", 1, 0, "auto"),  # no GPU: "auto" falls back, "cupy" fails with the reason
        ("cupy", 1, 0, "cupy"),
    ],
)
def test_each_rank_takes_gpu_local_rank_modulo_device_count(
    spec: str, local: int, count: int, expected: str
) -> None:
    assert device_spec_for_rank(spec, local, count) == expected


def test_without_mpi4py_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now fails
    with pytest.raises(RuntimeError, match=r"needs mpi4py: pip install 'gpunn\[mpi\]'"):
        get_communicator("numpy", "mpi")


def test_a_single_process_is_a_job_of_one_rank(mpi_needed: None) -> None:
    comm = get_communicator("numpy")
    assert isinstance(comm, SingleProcess) and (comm.rank, comm.size) == (0, 1)
    forced = get_communicator("numpy", "mpi")
    assert isinstance(forced, MPICommunicator) and forced.size == 1
    buf = np.arange(4.0)
    assert forced.allreduce_sum(buf) is buf and buf.tolist() == [0, 1, 2, 3]


def test_the_communicator_interface_and_the_single_process_one() -> None:
    """Every collective is abstract on the base class; one process's collectives hand the same
    buffer back untouched. A communicator starts as rank 0 of 1 (local rank 0), says why it
    was chosen in ``reason`` and names itself with its rank and size."""
    base = distributed.Communicator()
    assert (base.rank, base.size, base.local_rank, base.reason) == (0, 1, 0, "")
    buf = np.arange(3.0)
    for call in (base.allreduce_sum, base.allreduce_max, base.bcast):
        with pytest.raises(NotImplementedError):
            call(buf)
    with pytest.raises(NotImplementedError):
        base.barrier()
    single = SingleProcess()
    assert repr(single) == "SingleProcess(rank=0, size=1)"
    assert (single.local_rank, single.reason) == (0, "")
    for call in (single.allreduce_sum, single.allreduce_max, single.bcast):
        assert call(buf) is buf
    assert buf.tolist() == [0.0, 1.0, 2.0] and single.barrier() is None


def test_fit_with_a_one_rank_communicator_is_plain_fit() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((50, 3)), rng.integers(0, 2, 50)

    def run(comm: Any) -> np.ndarray:
        model = gpunn.Sequential([gpunn.Dense(3, 4), gpunn.Tanh(), gpunn.Dense(4, 2)], "numpy")
        kwargs = {"loss": gpunn.SoftmaxCrossEntropy(), "optimizer": gpunn.Adam(1e-2)}
        model.fit(X, y, epochs=2, batch_size=8, verbose=0, comm=comm, **kwargs)
        return model.flat_params

    np.testing.assert_array_equal(run(SingleProcess()), run(None))


class LoggingComm(SingleProcess):
    """One rank of a job of ``size`` ranks whose collectives do nothing but log themselves."""

    def __init__(self, rank: int, size: int, log: list) -> None:
        super().__init__()
        self.rank, self.size, self.log = rank, size, log

    def barrier(self) -> None:
        self.log.append("barrier")


class WritesFiles(ModelCheckpoint):
    def __init__(self, log: list) -> None:
        super().__init__("unused-{epoch}.safetensors")
        self.log = log

    def set_context(self, context: dict[str, Any]) -> None:
        super().set_context(context)
        self.log.append("context")

    def on_train_begin(self) -> None:
        self.log.append("begin")

    def on_epoch_begin(self, epoch: int) -> None:
        self.log.append(f"epoch {epoch}")

    def on_batch_begin(self, batch: int) -> None:
        self.log.append(f"batch {batch}")

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.log.append(f"save {epoch}")

    def on_train_end(self) -> None:
        self.log.append("end")


@pytest.mark.parametrize("rank", [0, 1])
def test_no_rank_goes_on_before_rank_0_has_written_its_checkpoint(rank: int) -> None:
    """Checkpoint callbacks run on rank 0 only, and every rank then waits at a barrier, so no
    rank starts the next epoch (or exits) before the file is complete on disk."""
    log: list = []
    model = gpunn.Sequential([gpunn.Dense(3, 2)], backend="numpy")
    comm = LoggingComm(rank, 2, log)
    dp = distributed.DataParallel(comm, model, 10, 4, {})
    plain = Callback()
    wrapped = dp.wrap_callbacks([WritesFiles(log), plain])
    assert wrapped[1] is plain  # callbacks that write nothing run everywhere, unwrapped
    context = {"model": model, "optimizer": None, "loss": None, "history": None}
    wrapped[0].set_context(context | {"steps_per_epoch": 3})
    wrapped[0].on_train_begin()
    for epoch in (1, 2):
        wrapped[0].on_epoch_begin(epoch)
        wrapped[0].on_batch_begin(0)
        wrapped[0].on_epoch_end(epoch, {"loss": 1.0})
    wrapped[0].on_train_end()
    if rank == 0:
        epochs = [[f"epoch {e}", "batch 0", f"save {e}", "barrier"] for e in (1, 2)]
        assert log == ["context", "begin", *epochs[0], *epochs[1], "end", "barrier"]
        assert wrapped[0].inner.model is model
    else:
        assert log == ["barrier", "barrier", "barrier"]


class Checksums(LoggingComm):
    """A rank whose allreduce_max reports the given spread of the ranks' parameter checksums:
    ``hi`` and ``lo`` are the largest and smallest (sum, L1 norm) over the ranks."""

    def __init__(self, hi: list[float], lo: list[float]) -> None:
        super().__init__(0, 2, [])
        self.hi, self.lo = hi, lo

    def allreduce_max(self, buffer: Any) -> Any:
        buffer[...] = [*self.hi, -self.lo[0], -self.lo[1]]
        return buffer


@pytest.mark.parametrize("l1", [1e6, 0.5])
def test_drift_is_a_spread_beyond_a_millionth_of_the_l1_norm(l1: float) -> None:
    """The ranks have drifted apart when their parameter sums differ by more than DRIFT_RTOL
    times the L1 norm (or than DRIFT_RTOL itself, for norms below 1)."""
    model = gpunn.Sequential([gpunn.Dense(3, 2)], backend="numpy")
    dp = distributed.DataParallel(LoggingComm(0, 2, []), model, 10, 4, {})
    limit = distributed.DRIFT_RTOL * max(l1, 1.0)
    dp.comm = Checksums([limit, l1], [0.0, l1])
    dp._check_drift(np.zeros(2))  # exactly at the limit: fine
    dp.comm = Checksums([np.nextafter(limit, np.inf), l1], [0.0, l1])
    with pytest.raises(distributed.DriftError, match="drifted apart"):
        dp._check_drift(np.zeros(2))


def test_settings_codes_tell_apart_what_differs() -> None:
    """What the ranks compare before starting: an integer stands for itself while float64
    holds it exactly; larger integers, tuples (seeds) and anything else go by a checksum."""
    code = distributed._code
    assert code(12) == 12 and code(np.int64(-7)) == -7 and code(True) == 1
    # the codes travel as float64 (one all-reduce): integers beyond its precision would
    # collide there, so they go by checksum too
    assert np.float64(code(2**60)) != np.float64(code(2**60 + 1))
    assert np.float64(code(2**52 - 1)) != np.float64(code(2**52 - 2))
    assert code((1, 2)) != code((2, 1)) and code((1, 2)) == code((1, 2))
    assert isinstance(code((1, 2)), int) and isinstance(code("auto"), int)


@pytest.mark.parametrize("on_device", [True, False])
def test_data_parallel_shards_are_gathered_where_the_data_lives(
    monkeypatch: pytest.MonkeyPatch, on_device: bool
) -> None:
    """Rank 0 of 2, batches of 4 over 10 rows: shards of 2, 2 and 1 rows. Data on the device
    is gathered there from one move of the rank's 5 positions; data kept on the host (too
    large for the device) moves shard by shard. Progress counts the global batches."""
    from gpunn.training import loop

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((10, 3)), rng.integers(0, 2, 10)
    backend = gpunn.get_backend("numpy")
    monkeypatch.setattr(backend, "free_memory", lambda: None if on_device else 0)
    advanced: list[int] = []
    monkeypatch.setattr(loop.Progress, "advance", lambda self, n: advanced.append(n))
    moved: list[tuple[int, ...]] = []
    real = backend.asarray

    def spy(a: Any, dtype: Any = None) -> Any:
        moved.append(np.shape(a))
        return real(a, dtype)

    model = gpunn.Sequential([gpunn.Dense(3, 2)], backend=backend)
    monkeypatch.setattr(backend, "asarray", spy)
    model.fit(
        X, y, loss=gpunn.SoftmaxCrossEntropy(), optimizer=gpunn.SGD(0.1), epochs=1,
        batch_size=4, verbose=0, comm=LoggingComm(0, 2, []),
    )  # fmt: skip
    forward = [(2, 3), (2, 3), (1, 3)]  # each shard through the model (no copy on NumPy)
    if on_device:
        assert moved == [(10, 3), (10,), (5,), *forward]
    else:
        shards = [[(n, 3), (n,), (n, 3)] for n in (2, 2, 1)]
        assert moved == [m for shard in shards for m in shard]
    assert advanced == [4, 4, 2]


# --------------------------------------------------------------------------------------------
# Buffer handling with stand-ins for CuPy, MPI and NCCL
# --------------------------------------------------------------------------------------------


class FakeStream:
    def __init__(self, log: list) -> None:
        self.ptr, self.log = 1234, log

    def synchronize(self) -> None:
        self.log.append("sync")


class FakeXP:
    """The bits of ``cupy`` the communicators use."""

    __name__ = "fakecupy"

    def __init__(self, log: list) -> None:
        stream = FakeStream(log)
        device = type("Device", (), {"__enter__": lambda s: s, "__exit__": lambda s, *a: None})
        self.cuda = type(
            "cuda",
            (),
            {
                "get_current_stream": staticmethod(lambda: stream),
                "alloc_pinned_memory": staticmethod(lambda n: bytearray(n)),
                "Device": staticmethod(lambda d=None: device()),
            },
        )


class FakeDeviceArray:
    """A device array: host code may only reach its values through get/set."""

    def __init__(self, values: np.ndarray, log: list) -> None:
        self._a, self.log = values, log
        self.shape, self.dtype, self.size = values.shape, values.dtype, values.size
        self.nbytes, self.flags = values.nbytes, values.flags
        self.data = type("MemoryPointer", (), {"ptr": 0xD0})()

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (0xD0, False)}

    def get(self, out: np.ndarray) -> np.ndarray:
        self.log.append(("get", id(out)))
        out[...] = self._a
        return out

    def set(self, host: np.ndarray) -> None:
        self.log.append(("set", id(host)))
        self._a[...] = host


class FakeMPIComm:
    """A two-rank MPI communicator seen from rank 0, whose partner holds the same values."""

    def __init__(self, log: list) -> None:
        self.log = log

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 2

    def Split_type(self, *args: Any, **kwargs: Any) -> FakeMPIComm:
        return self

    def Free(self) -> None:
        pass

    def Allreduce(self, sendbuf: Any, recvbuf: Any, op: Any = None) -> None:
        self.log.append(("Allreduce", type(recvbuf).__name__))
        if isinstance(recvbuf, np.ndarray):
            recvbuf *= 2  # the sum with an identical partner

    def Bcast(self, buf: Any, root: int = 0) -> None:
        self.log.append(("Bcast", type(buf).__name__))

    def bcast(self, obj: Any, root: int = 0) -> Any:
        self.log.append(("bcast", obj))
        return obj


@pytest.fixture
def mpi_needed() -> None:
    """Skip, saying why, where mpi4py or its MPI library is missing."""
    reason = mpi_unavailable()
    if reason is not None:
        pytest.skip(reason)


def _mpi4py_without_a_library() -> Any:
    """An ``mpi4py`` package as pip leaves it on a machine with no MPI library."""
    module = types.ModuleType("mpi4py")

    def __getattr__(name: str) -> Any:
        if name == "MPI":
            raise RuntimeError("cannot load MPI library: libmpi.so.12: cannot open shared object")
        raise AttributeError(name)

    module.__getattr__ = __getattr__
    return module


def test_mpi4py_without_an_mpi_library_is_a_clear_error_and_a_skip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", _mpi4py_without_a_library())
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    with pytest.raises(
        RuntimeError, match="mpi4py is installed but cannot load an MPI library"
    ) as info:
        distributed._mpi()
    assert "libmpi.so.12" in str(info.value) and "pip install 'gpunn[mpi]'" in str(info.value)
    with pytest.raises(RuntimeError, match="cannot load an MPI library"):
        get_communicator("numpy")
    reason = mpi_unavailable()  # what the MPI tests skip with
    assert reason is not None and "cannot load an MPI library" in reason
    _mpiexec.cache_clear()
    try:
        assert _mpiexec() == reason  # the 2-rank jobs skip with it too
    finally:
        _mpiexec.cache_clear()


def test_device_buffers_are_staged_through_reused_host_memory(mpi_needed: None) -> None:
    log: list = []
    comm = MPICommunicator(FakeMPIComm(log), xp=FakeXP(log), cuda_aware=False)
    buf = FakeDeviceArray(np.arange(6, dtype=np.float32), log)
    assert comm.allreduce_sum(buf) is buf
    np.testing.assert_array_equal(buf._a, 2 * np.arange(6, dtype=np.float32))
    assert log[0] == "sync"  # the stream is drained before MPI touches anything
    assert [entry[0] for entry in log[1:]] == ["get", "Allreduce", "set"]
    assert log[2] == ("Allreduce", "ndarray")  # MPI saw a host array, not the device buffer
    staged = log[1][1]
    comm.allreduce_sum(buf)
    assert log[-3] == ("get", staged) and log[-1] == ("set", staged)  # same host buffer


def test_cuda_aware_mpi_gets_the_device_buffer_after_a_stream_sync(mpi_needed: None) -> None:
    log: list = []
    comm = MPICommunicator(FakeMPIComm(log), xp=FakeXP(log), cuda_aware=True)
    buf = FakeDeviceArray(np.ones(3), log)
    comm.allreduce_sum(buf)
    comm.bcast(buf)
    assert log == ["sync", ("Allreduce", "FakeDeviceArray"), "sync", ("Bcast", "FakeDeviceArray")]


def test_cuda_aware_mpi_is_switched_on_by_the_environment(
    mpi_needed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(distributed.CUDA_AWARE_ENV, "1")
    assert MPICommunicator(FakeMPIComm([]), xp=FakeXP([])).cuda_aware
    monkeypatch.setenv(distributed.CUDA_AWARE_ENV, "0")
    assert not MPICommunicator(FakeMPIComm([]), xp=FakeXP([])).cuda_aware


@pytest.mark.parametrize(
    ("value", "on"),
    [("1", True), ("true", True), ("YES", True), (" on ", True), (" 1", True)]
    + [("", False), ("0", False), ("no", False), ("False", False), ("off", False), ("2", False)],
)
def test_cuda_aware_mpi_environment_values(
    mpi_needed: None, monkeypatch: pytest.MonkeyPatch, value: str, on: bool
) -> None:
    """GPUNN_CUDA_AWARE_MPI takes the usual spellings of a yes (1/true/yes/on, any case, spaces
    around); anything else keeps the safe staged copy. An explicit argument wins."""
    monkeypatch.setenv(distributed.CUDA_AWARE_ENV, value)
    assert MPICommunicator(FakeMPIComm([]), xp=FakeXP([])).cuda_aware is on
    assert MPICommunicator(FakeMPIComm([]), xp=FakeXP([]), cuda_aware=not on).cuda_aware is not on


class NodeComm:
    """What Split_type(COMM_TYPE_SHARED) returns: this process is local rank 1 on its node."""

    def __init__(self, log: list) -> None:
        self.log = log

    def Get_rank(self) -> int:
        return 1

    def Free(self) -> None:
        self.log.append("Free")


class RecordingMPIComm(FakeMPIComm):
    """FakeMPIComm that also records roots, barriers and the node split."""

    def Split_type(self, *args: Any, **kwargs: Any) -> NodeComm:
        self.log.append(("Split_type", kwargs.get("key")))
        return NodeComm(self.log)

    def Bcast(self, buf: Any, root: int = 0) -> None:
        self.log.append(("Bcast", root))

    def Barrier(self) -> None:
        self.log.append("Barrier")

    def bcast(self, obj: Any, root: int = 0) -> Any:
        self.log.append(("bcast", obj, root))
        return obj


def test_mpi_communicator_collectives_on_host_buffers(mpi_needed: None) -> None:
    """Host buffers go to MPI as they are and come back as the same object; bcast's root is
    rank 0 unless given; the local rank comes from the node's shared-memory split (which is
    freed again); barrier is MPI's."""
    log: list = []
    comm = MPICommunicator(RecordingMPIComm(log), xp=None, cuda_aware=False)
    assert (comm.rank, comm.size, comm.local_rank, comm.reason) == (0, 2, 1, "")
    assert log == [("Split_type", 0), "Free"]
    buf = np.ones(3)
    assert comm.allreduce_sum(buf) is buf and buf.tolist() == [2.0, 2.0, 2.0]
    assert comm.allreduce_max(buf) is buf
    assert comm.bcast(buf) is buf and comm.bcast(buf, root=1) is buf
    comm.barrier()
    assert log[2:] == [
        ("Allreduce", "ndarray"),
        ("Allreduce", "ndarray"),
        ("Bcast", 0),
        ("Bcast", 1),
        "Barrier",
    ]


class JobComm(RecordingMPIComm):
    """``size`` ranks seen from rank ``rank``; every rank reports what this one reports."""

    def __init__(self, log: list, rank: int = 0, size: int = 2) -> None:
        super().__init__(log)
        self._rank, self._size = rank, size

    def Get_rank(self) -> int:
        return self._rank

    def Get_size(self) -> int:
        return self._size

    def allgather(self, obj: Any) -> list:
        return [obj] * self._size


@pytest.mark.parametrize("backend_name", [None, "numpy"])
def test_get_communicator_on_cpu_ranks(
    mpi_needed: None, monkeypatch: pytest.MonkeyPatch, backend_name: str | None
) -> None:
    """CPU ranks get MPI (no device array module), with the reason for the choice; the kind
    may come from GPUNN_COMM (any case, spaces around). Rank 0 of a job not started with
    ``python -m mpi4py`` warns that an exception could hang the other ranks."""
    monkeypatch.delitem(sys.modules, "mpi4py.run", raising=False)
    monkeypatch.setenv(distributed.COMM_ENV, " MPI ")
    limited: list[Any] = []  # the test process's own BLAS threads are left alone
    monkeypatch.setattr(distributed, "limit_threads", lambda *args: limited.append(args) or 3)
    with pytest.warns(RuntimeWarning, match="python -m mpi4py") as record:
        comm = get_communicator(backend_name, mpi_comm=JobComm([]))
    assert comm.threads == 3 and len(limited) == 1  # threads are divided in a job of 2
    assert record[0].filename == __file__  # it points at the caller's line
    assert isinstance(comm, MPICommunicator) and comm.xp is None
    assert comm.reason == "MPI was asked for"
    monkeypatch.delenv(distributed.COMM_ENV)
    comm = get_communicator(backend_name, mpi_comm=JobComm([], size=1))
    assert isinstance(comm, SingleProcess) and comm.reason == "one process"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on the other ranks, nor under mpi4py.run
        get_communicator(backend_name, "auto", mpi_comm=JobComm([], rank=1))
        get_communicator(backend_name, "mpi", mpi_comm=JobComm([], size=1))
        monkeypatch.setitem(sys.modules, "mpi4py.run", types.ModuleType("mpi4py.run"))
        get_communicator(backend_name, "mpi", mpi_comm=JobComm([]))


def test_get_communicator_hands_a_gpu_rank_s_array_module_to_mpi(
    mpi_needed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank on a GPU (here a stand-in CuPy) gets an MPI communicator that stages through its
    device's array module; without a backend none is chosen for it (no probe, no warning)."""
    xp = FakeXP([])
    gpu = gpunn.Backend("cupy", 0, xp)
    monkeypatch.setitem(sys.modules, "mpi4py.run", types.ModuleType("mpi4py.run"))
    monkeypatch.setattr(distributed, "limit_threads", lambda *args: None)  # not this process's
    comm = get_communicator(gpu, "mpi", mpi_comm=JobComm([]))
    assert isinstance(comm, MPICommunicator) and comm.xp is xp

    def no_backend(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("no backend was asked for")

    monkeypatch.setattr(distributed, "get_backend", no_backend)
    assert get_communicator(None, "mpi", mpi_comm=JobComm([])).xp is None


def test_an_unknown_communicator_kind_is_refused_before_mpi_is_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_mpi() -> None:
        raise RuntimeError("distributed training needs mpi4py")

    monkeypatch.setattr(distributed, "_mpi", no_mpi)
    with pytest.raises(ValueError, match="communicator kind must be one of"):
        get_communicator("numpy", "gloo")
    monkeypatch.setenv(distributed.COMM_ENV, "gloo")
    with pytest.raises(ValueError, match="got 'gloo'"):
        get_communicator("numpy")


def test_non_contiguous_buffers_are_refused(mpi_needed: None) -> None:
    comm = MPICommunicator(FakeMPIComm([]), xp=FakeXP([]))
    with pytest.raises(ValueError, match="C-contiguous"):
        comm.allreduce_sum(np.zeros((4, 4))[:, 1])


class FakeNccl:
    """The bits of ``cupy.cuda.nccl`` the NCCL communicator uses."""

    available = True
    NCCL_INT32, NCCL_INT64, NCCL_FLOAT32, NCCL_FLOAT64 = 2, 4, 7, 8
    NCCL_SUM, NCCL_MAX = 0, 2

    def __init__(self) -> None:
        self.calls: list = []
        outer = self

        class NcclCommunicator:
            def __init__(self, ndev: int, uid: Any, rank: int) -> None:
                outer.calls.append(("init", ndev, uid, rank))

            def allReduce(self, *args: Any) -> None:
                outer.calls.append(("allReduce", *args))

            def bcast(self, *args: Any) -> None:
                outer.calls.append(("bcast", *args))

        self.NcclCommunicator = NcclCommunicator

    def get_unique_id(self) -> tuple:
        return (1, 2, 3)


def nccl_comm(log: list) -> tuple[NCCLCommunicator, FakeNccl]:
    nccl = FakeNccl()
    backend = gpunn.Backend("cupy", 0, FakeXP(log))
    return NCCLCommunicator(FakeMPIComm(log), backend, nccl=nccl), nccl


def test_nccl_unique_id_comes_from_rank_0_over_mpi(mpi_needed: None) -> None:
    log: list = []
    _, nccl = nccl_comm(log)
    assert ("bcast", (1, 2, 3)) in log
    assert nccl.calls == [("init", 2, (1, 2, 3), 0)]


@pytest.mark.parametrize(("dtype", "code"), [("float32", 7), ("float64", 8), ("int64", 4)])
def test_nccl_reduces_the_whole_buffer_in_place_on_the_current_stream(
    mpi_needed: None, dtype: str, code: int
) -> None:
    log: list = []
    comm, nccl = nccl_comm(log)
    buf = FakeDeviceArray(np.zeros(10, dtype=dtype), log)
    assert comm.allreduce_sum(buf) is buf
    comm.allreduce_max(buf)
    comm.bcast(buf, root=0)
    assert nccl.calls[1:] == [
        ("allReduce", 0xD0, 0xD0, 10, code, FakeNccl.NCCL_SUM, 1234),
        ("allReduce", 0xD0, 0xD0, 10, code, FakeNccl.NCCL_MAX, 1234),
        ("bcast", 0xD0, 10, code, 0, 1234),
    ]
    assert "sync" not in log  # NCCL is ordered on the stream: no host wait is needed


def test_nccl_sends_host_buffers_through_mpi(mpi_needed: None) -> None:
    log: list = []
    comm, nccl = nccl_comm(log)
    stats = np.ones(3)
    comm.allreduce_sum(stats)
    np.testing.assert_array_equal(stats, [2, 2, 2])
    assert len(nccl.calls) == 1  # only the init


def test_nccl_communicator_set_up_bcast_and_barrier(mpi_needed: None) -> None:
    """The unique id travels from rank 0 over MPI; bcast's root is 0 unless given, for device
    buffers (NCCL) and host buffers (MPI) alike, each handing its buffer back; barrier waits
    for the queued NCCL work on the stream, then for the other ranks."""
    log: list = []
    nccl = FakeNccl()
    comm = NCCLCommunicator(RecordingMPIComm(log), gpunn.Backend("cupy", 0, FakeXP(log)), nccl=nccl)
    assert (comm.rank, comm.size, comm.local_rank, comm.reason) == (0, 2, 1, "")
    assert ("bcast", (1, 2, 3), 0) in log
    device = FakeDeviceArray(np.zeros(4, dtype=np.float32), log)
    assert comm.bcast(device) is device and comm.bcast(device, root=1) is device
    assert nccl.calls[1:] == [("bcast", 0xD0, 4, 7, 0, 1234), ("bcast", 0xD0, 4, 7, 1, 1234)]
    host = np.ones(2)
    del log[:]
    assert comm.bcast(host) is host
    comm.barrier()
    assert log == [("Bcast", 0), "sync", "Barrier"]


def test_nccl_that_does_not_load_is_refused(mpi_needed: None) -> None:
    nccl = FakeNccl()
    nccl.available = False
    backend = gpunn.Backend("cupy", 0, FakeXP([]))
    with pytest.raises(RuntimeError, match="NCCL is not available"):
        NCCLCommunicator(FakeMPIComm([]), backend, nccl=nccl)
    names = ("NCCL_INT32", "NCCL_INT64", "NCCL_FLOAT32", "NCCL_FLOAT64", "NCCL_SUM", "NCCL_MAX")
    names += ("NcclCommunicator", "get_unique_id")
    bare = types.SimpleNamespace(**{name: getattr(nccl, name) for name in names})
    assert NCCLCommunicator(FakeMPIComm([]), backend, nccl=bare).size == 2  # no flag: loaded


def test_nccl_refuses_unsupported_and_non_contiguous_buffers(mpi_needed: None) -> None:
    comm, _ = nccl_comm([])
    with pytest.raises(ValueError, match="float16"):
        comm.allreduce_sum(FakeDeviceArray(np.zeros(4, dtype=np.float16), []))
    with pytest.raises(ValueError, match="C-contiguous"):
        comm.allreduce_sum(FakeDeviceArray(np.zeros((4, 4))[:, 0], []))


# --------------------------------------------------------------------------------------------
# On a GPU
# --------------------------------------------------------------------------------------------


def _gpu_count() -> int:
    usable, reason, _ = gpunn.backend._probe_cupy(0)
    if not usable:
        pytest.skip(f"CuPy backend unavailable: {reason}")
    return distributed._gpu_count()


@pytest.mark.gpu
def test_nccl_communicator_on_a_real_gpu(mpi_needed: None) -> None:
    _gpu_count()
    MPI = distributed._mpi()

    backend = gpunn.get_backend("cupy:0")
    if not distributed._nccl_module(backend.xp).available:
        pytest.skip("NCCL does not load here (pip install nvidia-nccl-cu13)")
    comm = NCCLCommunicator(MPI.COMM_SELF, backend)
    for dtype in ("float32", "float64"):
        buf = backend.xp.arange(1000, dtype=dtype)
        comm.allreduce_sum(buf)
        comm.bcast(buf)
        comm.barrier()
        np.testing.assert_array_equal(backend.to_numpy(buf), np.arange(1000, dtype=dtype))


@pytest.mark.gpu
def test_two_ranks_on_gpus_train_the_same_weights_as_one_process(tmp_path: Path) -> None:
    count = _gpu_count()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nccl = distributed._nccl_module(gpunn.get_backend("cupy:0").xp).available
    done, _ = mpirun(
        [str(MPI_SCRIPTS / "train_equiv.py"), str(tmp_path), "cupy"], cwd=tmp_path, backend="cupy"
    )
    assert done.returncode == 0, output(done)
    # one GPU: both ranks share it, which NCCL refuses, so CuPy buffers go through MPI
    kind = (tmp_path / "comm.txt").read_text().split()[0]
    assert kind == ("nccl" if count >= 2 and nccl else "mpi")
    for case in CASES:
        ref, rank0, rank1 = (load(tmp_path, case, w) for w in ("reference", "rank0", "rank1"))
        np.testing.assert_allclose(rank0["params"], ref["params"], rtol=RTOL[case], atol=0)
        np.testing.assert_array_equal(rank0["params"], rank1["params"])
        assert set(rank0["reads"].tolist()) == {1}
