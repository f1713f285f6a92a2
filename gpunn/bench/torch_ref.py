"""The PyTorch anchor: the same MLP, weights, batch and optimizer with ``torch.nn`` + autograd.

PyTorch is optional and never a dependency: :func:`load_torch` imports it lazily and returns
``(None, reason)`` when it is missing. Weights are copied from the gpunn model (torch's
``Linear.weight`` is (out, in), the transpose of gpunn's ``W``), so both start from the same
point; the optimizer is ``torch.optim.SGD`` / ``Adam`` with the same hyperparameters.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["TorchWorkload", "load_torch", "torch_devices"]


def load_torch() -> tuple[Any, str]:
    """``(torch, "")``, or ``(None, why)`` when PyTorch cannot be imported."""
    try:
        return importlib.import_module("torch"), ""
    except ImportError as exc:
        return None, f"PyTorch is not installed ({exc}); install it to compare: pip install torch"
    except Exception as exc:  # a broken install can raise anything at import
        return None, f"PyTorch failed to import: {type(exc).__name__}: {exc}"


def torch_devices(torch: Any, want_cuda: bool) -> list[str]:
    """``["cpu"]``, plus ``"cuda:0"`` when asked for and CUDA is usable in this torch."""
    devices = ["cpu"]
    if want_cuda and torch.cuda.is_available():
        devices.append("cuda:0")
    return devices


class TorchWorkload:
    """torch.nn.Sequential(Linear, ReLU, ..., Linear) + CrossEntropyLoss + torch.optim."""

    def __init__(
        self,
        torch: Any,
        state: dict[str, np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
        *,
        device: str = "cpu",
        optimizer: str = "sgd",
        lr: float = 0.01,
    ) -> None:
        nn = torch.nn
        self.torch = torch
        self.device = torch.device(device)
        dtype = getattr(torch, str(x.dtype))
        keys = sorted({k.split(".")[0] for k in state}, key=int)  # Dense layer indices
        layers: list[Any] = []
        for j, key in enumerate(keys):
            W, b = state[f"{key}.W"], state[f"{key}.b"]
            lin = nn.Linear(W.shape[0], W.shape[1], device=self.device, dtype=dtype)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
            if j < len(keys) - 1:
                layers.append(nn.ReLU())
        self.model = nn.Sequential(*layers)
        self.loss = nn.CrossEntropyLoss()
        params = self.model.parameters()
        if optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=lr)
        else:
            self.opt = torch.optim.Adam(params, lr=lr)
        self.x = torch.from_numpy(x).to(self.device)
        self.y = torch.from_numpy(y).to(self.device)

    def train_step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss(self.model(self.x), self.y).backward()
        self.opt.step()

    def infer(self) -> None:
        with self.torch.inference_mode():
            self.model(self.x)

    @property
    def sync(self) -> Callable[[], None]:
        if self.device.type == "cuda":
            return self.torch.cuda.synchronize
        return _no_sync

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def gpu_memory(self) -> tuple[int | None, int | None]:
        """(peak bytes allocated, peak bytes reserved) on the GPU, or (None, None) on the CPU."""
        if self.device.type != "cuda":
            return None, None
        cuda = self.torch.cuda
        return int(cuda.max_memory_allocated(self.device)), int(
            cuda.max_memory_reserved(self.device)
        )


def _no_sync() -> None:
    """The CPU runs PyTorch ops synchronously: nothing to wait for."""
