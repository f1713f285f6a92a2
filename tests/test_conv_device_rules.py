"""A CNN on GPU 1 of an emulated two-GPU machine: every array on its device, reads counted.

``gpunn.testing.fake_cupy`` stands in for ``cupy`` and enforces CuPy's device rules (see
tests/test_device_rules.py for the MLP). Here a CNN with every new layer kind trains, evaluates,
predicts, saves, loads and resumes on ``"cupy:1"`` while the caller leaves device 0 current:
no cross-device operation, nothing allocated on device 0, one host read per epoch of ``fit``,
one per ``evaluate``, none in ``predict``. Nothing here is a GPU result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gpunn
from gpunn import checkpoint
from gpunn.testing import fake_cupy

pytestmark = pytest.mark.cuda_on_cpu

EPOCHS, BATCH = 2, 16


@pytest.fixture
def cp(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Two emulated GPUs, peer access on (mistakes are counted), fused kernels off, device 0
    current."""
    monkeypatch.setenv("GPUNN_FUSED", "0")
    with fake_cupy.installed(devices=2, peer_access=True) as module:
        yield module


def cnn(backend: Any) -> gpunn.Sequential:
    layers = [
        gpunn.Conv2D(1, 3, 3, padding=1),
        gpunn.BatchNorm2D(3),
        gpunn.ReLU(),
        gpunn.MaxPool2D(2),
        gpunn.Conv2D(3, 4, 3, padding=1),
        gpunn.ReLU(),
        gpunn.MaxPool2D(2),  # fused with the conv
        gpunn.AvgPool2D(1),
        gpunn.Flatten(),
        gpunn.Dense(16, 8),
        gpunn.BatchNorm1D(8),
        gpunn.Tanh(),
        gpunn.Dense(8, 3),
    ]
    return gpunn.Sequential(layers, backend=backend, seed=1)  # input shape learnt from the data


def data(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 8, 8)), rng.integers(0, 3, n)


def assert_all_on(cp: Any, device: int) -> None:
    emu = cp.emulation
    wrong = emu.events("cross_device") + emu.events("cross_device_copy")
    assert not wrong, "\n".join(wrong[:20])
    assert set(emu.allocations) <= {device}, dict(emu.allocations)


def test_cnn_fit_evaluate_predict_on_gpu_1_stay_there_and_read_once_per_epoch(cp: Any) -> None:
    emu = cp.emulation
    backend = gpunn.get_backend("cupy:1")
    emu.reset_counts()
    model = cnn(backend)
    X, y = data()
    history = model.fit(
        X,
        y,
        loss=gpunn.SoftmaxCrossEntropy(),
        optimizer=gpunn.Adam(1e-2),
        epochs=EPOCHS,
        batch_size=BATCH,
        verbose=0,
    )
    assert emu.counts["host_read"] == EPOCHS, emu.events("host_read")
    assert all(np.isfinite(history["loss"])) and model.input_shape == (1, 8, 8)
    assert model.flat_state.device.id == 1
    before = emu.counts["host_read"]
    model.evaluate(X, y)
    assert emu.counts["host_read"] - before == 1
    before = emu.counts["host_read"]
    out = model.predict(X)
    assert emu.counts["host_read"] == before and out.device.id == 1 and out.shape == (40, 3)
    assert cp.cuda.runtime.getDevice() == 0
    assert_all_on(cp, 1)


def test_cnn_save_load_resume_on_gpu_1_equals_the_uninterrupted_run(
    cp: Any, tmp_path: Path
) -> None:
    X, y = data()
    kw = dict(loss=gpunn.SoftmaxCrossEntropy(), batch_size=BATCH, verbose=0, seed=2)
    straight = cnn("cupy:1")
    straight.fit(X, y, optimizer=gpunn.SGD(0.05, momentum=0.9), epochs=2, **kw)
    first, opt = cnn("cupy:1"), gpunn.SGD(0.05, momentum=0.9)
    first.fit(X, y, optimizer=opt, epochs=1, **kw)
    path = checkpoint.save(first, tmp_path / "cnn.safetensors", opt, epoch=1)
    cp.emulation.reset_counts()
    resumed, opt2, info = checkpoint.load_with_optimizer(path, backend="cupy:1")
    resumed.fit(X, y, optimizer=opt2, epochs=1, initial_epoch=info["epoch"], **kw)
    for name in ("flat_params", "flat_state"):
        np.testing.assert_array_equal(
            getattr(resumed, name).get(), getattr(straight, name).get(), err_msg=name
        )
    assert_all_on(cp, 1)


def test_to_gpu_1_moves_parameters_and_running_statistics(cp: Any) -> None:
    model = cnn("numpy")
    X, _ = data(8)
    model.forward(X)  # the running statistics move away from 0 and 1
    cp.emulation.reset_counts()
    on_gpu = model.to("cupy:1")
    assert on_gpu.flat_params.device.id == 1 and on_gpu.flat_state.device.id == 1
    np.testing.assert_array_equal(on_gpu.flat_state.get(), model.flat_state)
    assert on_gpu.input_shape == (1, 8, 8)
    assert_all_on(cp, 1)
