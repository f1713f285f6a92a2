"""gpunn's GPU code path on GPU 1 of an emulated two-GPU machine: every array on its device.

No GPU is needed: ``gpunn.testing.fake_cupy`` stands in for ``cupy`` and enforces CuPy's device
rules (an array lives on the device current when it was made; an operation given another
device's array is a cross-device operation) and counts every host read. The real training loop,
checkpoints, the command line and the data-parallel set-up run on ``"cupy:1"`` while the
caller leaves device 0 current, and the tests require:

* zero cross-device operations (and zero copies between devices, and nothing allocated on 0);
* exactly the documented host reads: one per epoch in ``fit`` (two with validation data, whose
  evaluation reads once), one per ``evaluate``, none in ``predict``; over MPI without
  CUDA-aware transfers one more per step (the gradients go through host memory), none with NCCL.

The emulation runs with peer access on, so a wrong device does not stop the run at its first
mistake: the counts and the log (file and line of each event) say everything that went wrong.
These tests are the CPU-side proof of ``cupy:N`` support; a real GPU still has to confirm them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gpunn
from gpunn import checkpoint, cli
from gpunn.testing import fake_cupy
from gpunn.training import distributed
from gpunn.training.callbacks import Callback

pytestmark = pytest.mark.cuda_on_cpu

N, D, C = 60, 5, 3  # samples, features, classes
EPOCHS, BATCH = 3, 16  # 4 batches an epoch, the last one short


@pytest.fixture
def cp(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A two-GPU emulation as ``cupy`` with peer access (mistakes are counted, not raised), the
    fused kernels off (the emulation runs no CUDA code) and device 0 current."""
    monkeypatch.setenv("GPUNN_FUSED", "0")
    monkeypatch.delenv("CUPY_TF32", raising=False)
    with fake_cupy.installed(devices=2, peer_access=True) as module:
        yield module


def assert_all_on(cp: Any, device: int) -> None:
    """No cross-device operation or copy, and every allocation on ``device``."""
    emu = cp.emulation
    wrong = emu.events("cross_device") + emu.events("cross_device_copy")
    assert not wrong, "\n".join(wrong[:20])
    assert set(emu.allocations) <= {device}, dict(emu.allocations)


def data(loss: str = "ce", n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D))
    score = X[:, 0] + 0.5 * X[:, 1]
    if loss == "bce":
        return X, (score > 0).astype(np.int64)
    if loss == "mse":
        return X, np.stack([score, X[:, 2]], axis=1)
    return X, np.digitize(score, [-0.5, 0.5]).astype(np.int64)


def model_for(loss: str, backend: Any, seed: int = 0) -> gpunn.Sequential:
    out = {"ce": C, "bce": 1, "mse": 2}[loss]
    layers = [
        gpunn.Dense(D, 8),
        gpunn.ReLU(),
        gpunn.Dense(8, 8),
        gpunn.LeakyReLU(0.1),
        gpunn.Dropout(0.2),
        gpunn.Dense(8, 8),
        gpunn.Sigmoid(),
        gpunn.Dense(8, 8),
        gpunn.Tanh(),
        gpunn.Dense(8, out),
    ]
    return gpunn.Sequential(layers, backend=backend, seed=seed)


LOSSES = {
    "ce": gpunn.SoftmaxCrossEntropy,
    "bce": gpunn.BinaryCrossEntropy,
    "mse": gpunn.MeanSquaredError,
}
OPTIMIZERS = {
    "sgd": lambda: gpunn.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda: gpunn.Adam(1e-2),
    "adamw": lambda: gpunn.AdamW(1e-2),
}


class ReadsPerEpoch(Callback):
    """Host reads between the start and the end of each epoch (the end hooks run after the
    epoch's reads, validation included)."""

    def __init__(self, emulation: fake_cupy.Emulation) -> None:
        self.emulation = emulation
        self.reads: list[int] = []

    def on_epoch_begin(self, epoch: int) -> None:
        self.start = self.emulation.counts["host_read"]

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.reads.append(self.emulation.counts["host_read"] - self.start)


# ------------------------------------------------------------------------------------------
# fit, evaluate, predict
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("loss", "opt"), [("ce", "adam"), ("bce", "sgd"), ("mse", "adamw")])
def test_fit_evaluate_predict_on_gpu_1_stay_there_and_read_once_per_epoch(
    cp: Any, loss: str, opt: str
) -> None:
    emu = cp.emulation
    backend = gpunn.get_backend("cupy:1")
    emu.reset_counts()  # the probe's own read and allocation are not the model's
    model = model_for(loss, backend)
    X, y = data(loss)
    reads = ReadsPerEpoch(emu)
    history = model.fit(
        X,
        y,
        loss=LOSSES[loss](),
        optimizer=OPTIMIZERS[opt](),
        epochs=EPOCHS,
        batch_size=BATCH,
        verbose=0,
        callbacks=[reads],
    )
    assert reads.reads == [1] * EPOCHS, emu.events("host_read")
    assert emu.counts["host_read"] == EPOCHS  # and none outside the epochs
    assert all(np.isfinite(history["loss"]))

    before = emu.counts["host_read"]
    result = model.evaluate(X, y, loss=LOSSES[loss]())
    assert emu.counts["host_read"] - before == 1 and np.isfinite(result["loss"])
    before = emu.counts["host_read"]
    out = model.predict(X)
    assert emu.counts["host_read"] == before  # predict returns a device array, unread
    assert out.device.id == 1 and out.shape[0] == N
    assert cp.cuda.runtime.getDevice() == 0  # the caller's device is left as it was
    assert_all_on(cp, 1)


def test_validation_adds_exactly_one_read_per_epoch(cp: Any) -> None:
    emu = cp.emulation
    model = model_for("ce", "cupy:1")
    X, y = data()
    Xv, yv = data(seed=1, n=25)
    reads = ReadsPerEpoch(emu)
    history = model.fit(
        X,
        y,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.Adam(1e-2),
        epochs=EPOCHS,
        batch_size=BATCH,
        validation_data=(Xv, yv),
        verbose=0,
        callbacks=[reads],
    )
    assert reads.reads == [2] * EPOCHS, emu.events("host_read")
    assert len(history["val_loss"]) == EPOCHS
    assert_all_on(cp, 1)


def test_a_model_on_gpu_0_ignores_the_callers_current_device(cp: Any) -> None:
    X, y = data()
    with cp.cuda.Device(1):  # the caller works on GPU 1; the model lives on GPU 0
        cp.emulation.reset_counts()
        model = model_for("ce", "cupy:0")
        model.fit(
            X,
            y,
            loss=gpunn.SoftmaxCrossEntropy(),
            optimizer=gpunn.SGD(0.1),
            epochs=1,
            batch_size=BATCH,
            verbose=0,
        )
        model.evaluate(X, y)
        assert cp.cuda.runtime.getDevice() == 1
    assert_all_on(cp, 0)


def test_a_hand_written_loop_stays_on_the_models_gpu(cp: Any) -> None:
    """forward, the loss, backward and the optimizer each make the model's device current: a
    user's own loop needs no ``with Device(1)``."""
    model = model_for("ce", "cupy:1")
    loss, opt = gpunn.SoftmaxCrossEntropy(), gpunn.Adam(1e-2)
    X, y = data()
    cp.emulation.reset_counts()
    for start in range(0, N, BATCH):
        logits = model.forward(X[start : start + BATCH])
        loss.forward(logits, model.backend.asarray(y[start : start + BATCH]))
        model.backward(loss.backward())
        opt.step(model)
        loss.correct(logits, model.backend.asarray(y[start : start + BATCH]))
    assert cp.emulation.counts["host_read"] == 0
    assert opt.state["exp_avg"].device.id == 1
    assert_all_on(cp, 1)


def test_the_fused_kernels_self_check_runs_on_the_models_gpu(
    cp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fused kernels on, each self-check runs on GPU 1 (where the model is); the emulation
    runs no CUDA code, so each check fails, warns naming cupy:1, and the reference is used."""
    monkeypatch.setenv("GPUNN_FUSED", "1")
    gpunn.kernels.reset()
    model = model_for("ce", "cupy:1")
    X, y = data()
    cp.emulation.reset_counts()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(
            X,
            y,
            loss=gpunn.SoftmaxCrossEntropy(),
            optimizer=gpunn.Adam(1e-2),
            epochs=1,
            batch_size=BATCH,
            verbose=0,
        )
    failed = [str(w.message) for w in caught if "self-check" in str(w.message)]
    names = {
        "bias_activation_forward",
        "activation_backward",
        "softmax_cross_entropy",
        "adam_update",
    }
    assert all(any(f"'{n}'" in m for m in failed) for n in names), failed
    assert all("on cupy:1" in m and "EmulatedKernelError" in m for m in failed)
    assert cp.emulation.kernel_calls and {d for _, d in cp.emulation.kernel_calls} == {1}
    outcomes = gpunn.kernels.outcomes()
    assert {o.device for o in outcomes.values()} == {"cupy:1"}
    assert_all_on(cp, 1)


# ------------------------------------------------------------------------------------------
# Moving models, checkpoints, memory
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["numpy", "cupy:0"])
def test_to_gpu_1_puts_every_parameter_there(cp: Any, source: str) -> None:
    model = model_for("ce", source, seed=5)
    cp.emulation.reset_counts()
    moved = model.to("cupy:1")
    assert moved.flat_params.device.id == 1 and moved.flat_grads.device.id == 1
    assert all(p.device.id == 1 for p in moved.params.values())
    np.testing.assert_array_equal(
        moved.backend.to_numpy(moved.flat_params), model.backend.to_numpy(model.flat_params)
    )
    assert cp.emulation.counts["cross_device"] == 0
    assert cp.emulation.counts["cross_device_copy"] == 0  # through the host, by design


def test_train_save_load_resume_on_gpu_1_equals_the_uninterrupted_run(
    cp: Any, tmp_path: Path
) -> None:
    X, y = data()
    kwargs = {"loss": gpunn.SoftmaxCrossEntropy(), "batch_size": BATCH, "verbose": 0}

    def make() -> gpunn.Sequential:  # no Dropout: its device generator is not checkpointed
        layers = [gpunn.Dense(D, 8), gpunn.ReLU(), gpunn.Dense(8, C)]
        return gpunn.Sequential(layers, backend="cupy:1", seed=2)

    whole = make()
    whole.fit(X, y, optimizer=gpunn.Adam(1e-2), epochs=3, **kwargs)

    first = make()
    opt = gpunn.Adam(1e-2)
    first.fit(X, y, optimizer=opt, epochs=2, **kwargs)
    path = checkpoint.save(first, tmp_path / "run.ckpt", opt, epoch=2)
    cp.emulation.reset_counts()
    loaded, loaded_opt, info = checkpoint.load_with_optimizer(path, "cupy:1")
    assert loaded.flat_params.device.id == 1
    assert loaded_opt is not None and info["epoch"] == 2
    loaded.fit(X, y, optimizer=loaded_opt, epochs=1, initial_epoch=2, **kwargs)
    assert loaded_opt.state["exp_avg"].device.id == 1  # moved from the host at the first step
    np.testing.assert_array_equal(
        loaded.backend.to_numpy(loaded.flat_params), whole.backend.to_numpy(whole.flat_params)
    )
    assert_all_on(cp, 1)


def test_memory_queries_ask_the_models_gpu(cp: Any) -> None:
    backend = gpunn.get_backend("cupy:1")
    cp.emulation.reset_counts()
    assert backend.free_memory() == cp.emulation.memory
    backend.free_memory_pool()
    assert cp.emulation.pool_calls == [("free_bytes", 1), ("free_all_blocks", 1)]


# ------------------------------------------------------------------------------------------
# TF32 (finding: the old code named a cuBLAS constant no CuPy has)
# ------------------------------------------------------------------------------------------


def test_tf32_uses_cupys_process_wide_switch_with_the_device_current(cp: Any) -> None:
    linalg = cp._core._routines_linalg
    gpu1 = gpunn.get_backend("cupy:1", tf32=True)
    assert cp.emulation.compute_type_calls[-1] == (linalg.COMPUTE_TYPE_TF32, 1)
    assert gpu1.tf32 is True
    assert gpunn.get_backend("cupy:0").tf32 is True  # one setting for the whole process
    gpunn.get_backend(gpu1, tf32=False)  # a Backend object takes the flag too
    assert cp.emulation.compute_type_calls[-1] == (linalg.COMPUTE_TYPE_DEFAULT, 1)
    assert gpu1.tf32 is False and gpunn.get_backend("numpy", tf32=True).tf32 is False
    assert cp.cuda.runtime.getDevice() == 0


def test_tf32_on_a_gpu_older_than_ampere_warns_and_stays_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with fake_cupy.installed(compute_capability=75):
        with pytest.warns(UserWarning, match="compute capability 8.0"):
            backend = gpunn.get_backend("cupy:0", tf32=True)
        assert backend.tf32 is False


def test_tf32_without_cupys_switch_is_a_clear_error(cp: Any) -> None:
    del cp._core._routines_linalg.set_compute_type  # as in a CuPy without the switch
    with pytest.raises(gpunn.backend.TF32UnsupportedError, match="TF32 needs CuPy >= 13"):
        gpunn.get_backend("cupy:1", tf32=True)
    assert gpunn.get_backend("cupy:1").tf32 is False  # and asking about it is no error


def test_cli_train_with_tf32_then_evaluate_the_saved_model_on_gpu_1(
    cp: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "digits.ckpt"
    common = ["--dataset", "digits", "--backend", "cupy:1"]
    argv = ["train", *common, "--tf32", "--hidden", "16", "--epochs", "2", "--quiet"]
    assert cli.main([*argv, "--save", str(saved)]) == 0, capsys.readouterr().err
    linalg = cp._core._routines_linalg
    assert (linalg.COMPUTE_TYPE_TF32, 1) in cp.emulation.compute_type_calls
    assert saved.exists() and "cupy:1" in capsys.readouterr().out
    assert cli.main(["evaluate", "--checkpoint", str(saved), *common]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert_all_on(cp, 1)


# ------------------------------------------------------------------------------------------
# Data parallel on GPU 1 (one process; the other rank is a stand-in with identical values)
# ------------------------------------------------------------------------------------------


class TwinMPIComm:
    """A two-rank MPI communicator seen from rank 0 (mpi4py's method names), whose partner
    holds the same values."""

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 2

    def Split_type(self, *args: Any, **kwargs: Any) -> TwinMPIComm:
        return self

    def Free(self) -> None:
        pass

    def Allreduce(self, sendbuf: Any, recvbuf: Any, op: Any = None) -> None:
        assert isinstance(recvbuf, np.ndarray), "MPI was handed a device array"
        if op is None:  # MPI.SUM, mpi4py's default: the twin adds the same values
            recvbuf *= 2

    def Bcast(self, buf: Any, root: int = 0) -> None:
        assert isinstance(buf, np.ndarray), "MPI was handed a device array"

    def Barrier(self) -> None:
        pass

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather(self, obj: Any) -> list[Any]:
        if isinstance(obj, tuple) and len(obj) == 3:  # rank info: choosing NCCL or MPI
            host, _, nccl_loads = obj  # the twin: same machine, a GPU of its own
            return [obj, (host, "the twin's GPU", nccl_loads)]
        return [obj, obj]  # the CPU sets of limit_threads: the twin shares this machine's


def mpi_or_skip() -> None:
    try:
        distributed._mpi()
    except RuntimeError as exc:
        pytest.skip(str(exc))


def fit_data_parallel(cp: Any, comm: Any) -> ReadsPerEpoch:
    model = model_for("ce", "cupy:1")
    X, y = data()
    reads = ReadsPerEpoch(cp.emulation)
    cp.emulation.reset_counts()
    model.fit(
        X,
        y,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.Adam(1e-2),
        epochs=EPOCHS,
        batch_size=BATCH,
        verbose=0,
        comm=comm,
        callbacks=[reads],
    )
    return reads


def test_data_parallel_over_mpi_on_gpu_1_stages_through_the_host_once_per_step(cp: Any) -> None:
    mpi_or_skip()
    comm = distributed.MPICommunicator(TwinMPIComm(), xp=cp, cuda_aware=False)
    reads = fit_data_parallel(cp, comm)
    steps = -(-N // BATCH)
    # each step's gradient all-reduce copies the buffer to the host; the epoch's statistics and
    # checksum are read once more
    assert reads.reads == [steps + 1] * EPOCHS, cp.emulation.events("host_read")
    assert cp.emulation.counts["host_read"] == EPOCHS * (steps + 1) + 1  # + the first bcast
    assert_all_on(cp, 1)


def test_data_parallel_over_nccl_on_gpu_1_gives_nccl_gpu_1_buffers_and_reads_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mpi_or_skip()
    monkeypatch.setenv("GPUNN_FUSED", "0")
    with fake_cupy.installed(devices=2, peer_access=True, nccl=True) as cp:
        backend = gpunn.get_backend("cupy:1")
        with pytest.warns(RuntimeWarning, match="python -m mpi4py"):  # a real job would be
            comm = distributed.get_communicator(backend, "nccl", mpi_comm=TwinMPIComm())
        assert isinstance(comm, distributed.NCCLCommunicator)
        reads = fit_data_parallel(cp, comm)
        assert reads.reads == [1] * EPOCHS, cp.emulation.events("host_read")
        with cp.cuda.Device(0):  # a caller on GPU 0: the call still runs on GPU 1's stream
            comm.allreduce_sum(backend.asarray(np.ones(4, dtype=np.float32)))
            comm.barrier()
        calls = cp.cuda.nccl.calls
        assert calls and {(device, buffer) for _, device, buffer in calls} == {(1, 1)}
        assert cp.emulation.events("sync")[-1].startswith("sync: stream synchronize on cupy:1")
        with cp.cuda.Device(0):
            elsewhere = cp.zeros(4, dtype=cp.float32)
        with pytest.raises(ValueError, match="serves GPU 1; the buffer is on GPU 0"):
            comm.allreduce_sum(elsewhere)
        assert cp.emulation.counts["cross_device"] == 0


def test_rank_backend_with_tf32_on_gpu_1(cp: Any) -> None:
    mpi_or_skip()
    backend = distributed.rank_backend("cupy:1", tf32=True, mpi_comm=TwinMPIComm())
    assert backend.spec == "cupy:1" and backend.tf32 is True
    assert cp.emulation.compute_type_calls[-1][1] == 1


def test_the_emulation_would_catch_an_allocation_on_the_wrong_gpu(cp: Any) -> None:
    """What these tests guard against: a buffer made without the model's device current."""
    model = model_for("ce", "cupy:1")
    model.layers[0]._ws["z"] = cp.empty((BATCH, 8), dtype=cp.float32)  # made on GPU 0
    cp.emulation.reset_counts()
    model.forward(data()[0][:BATCH])
    assert cp.emulation.counts["cross_device"] >= 1
    assert "gpunn" + os.sep + "nn" + os.sep + "dense.py" in cp.emulation.events("cross_device")[0]


def test_the_softmax_kernel_is_looked_up_once_per_dtype_for_every_gpu(cp: Any) -> None:
    """``RawModule.get_function`` builds a new RawKernel (hashing the whole source) per call;
    gpunn keeps one per dtype, and CuPy's RawKernel loads itself on each device it runs on."""
    rng = np.random.default_rng(0)
    for _ in range(3):
        for device in (0, 1):
            for dtype in ("float32", "float64"):
                with cp.cuda.Device(device):
                    fused = gpunn.kernels.fused("softmax_cross_entropy", cp)
                    z = cp.asarray(rng.standard_normal((4, 5)), dtype=dtype)
                    with pytest.raises(fake_cupy.EmulatedKernelError):
                        fused(z, cp.asarray(np.array([0, 1, 2, 3])), xp=cp)
    assert cp.emulation.counts["get_function"] == 2, cp.emulation.events("get_function")
    assert {d for _, d in cp.emulation.kernel_calls} == {0, 1}
    assert cp.emulation.counts["cross_device"] == 0


def test_inputs_already_on_gpu_1_are_checked_once_then_read_once_per_epoch(cp: Any) -> None:
    model = model_for("ce", "cupy:1")
    X, y = data()
    backend = model.backend
    Xd, yd = backend.asarray(X, dtype="float32"), backend.asarray(y)
    reads = ReadsPerEpoch(cp.emulation)
    cp.emulation.reset_counts()
    model.fit(
        Xd,
        yd,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.Adam(1e-2),
        epochs=EPOCHS,
        batch_size=BATCH,
        verbose=0,
        callbacks=[reads],
    )
    assert reads.reads == [1] * EPOCHS
    # before the first epoch: X's count of non-finite values, the labels' minimum and maximum
    assert cp.emulation.counts["host_read"] - EPOCHS == 3, cp.emulation.events("host_read")
    assert cp.emulation.counts["upload"] == EPOCHS  # only each epoch's batch order (host ints)
    assert_all_on(cp, 1)
