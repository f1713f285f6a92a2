"""The PyTorch anchor: the same network, weights, batch and optimizer with ``torch.nn`` + autograd.

PyTorch is optional and never a dependency: :func:`load_torch` imports it lazily and returns
``(None, reason)`` when it is missing. :func:`torch_network` builds the ``torch.nn`` twin of a
list of gpunn layers, layer for layer (Dense -> Linear, Conv2D -> Conv2d, MaxPool2D ->
MaxPool2d, Flatten -> Flatten, ReLU -> ReLU, ...), with the gpunn model's weights copied in
(torch's ``Linear.weight`` is (out, in), the transpose of gpunn's ``W``; a ``Conv2D.W`` is
(out, in, kh, kw) in both), so both start from the same point; the optimizer is
``torch.optim.SGD`` / ``Adam`` with the same hyperparameters. This is PyTorch *eager*: no
``torch.compile``, no channels-last, the defaults a user gets.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["TorchWorkload", "load_torch", "torch_devices", "torch_network"]


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


def torch_network(
    torch: Any,
    layers: Sequence[Any],
    tensors: dict[str, np.ndarray],
    *,
    device: str = "cpu",
    dtype: str = "float32",
) -> Any:
    """``torch.nn.Sequential`` twin of gpunn ``layers`` holding the weights and BatchNorm running
    statistics ``tensors`` (keys ``"<layer index>.<name>"``, as ``Sequential.state_dict`` gives
    them); ValueError for a layer kind with no counterpart here."""
    nn = torch.nn
    made = {"device": torch.device(device), "dtype": getattr(torch, dtype)}

    def copy(target: Any, key: str, transpose: bool = False) -> None:
        value = np.asarray(tensors[key])
        value = np.ascontiguousarray(value.T if transpose else value, dtype=dtype)
        with torch.no_grad():
            target.copy_(torch.from_numpy(value))

    modules: list[Any] = []
    for i, layer in enumerate(layers):
        kind, cfg = layer.kind, layer.config()
        if kind == "Dense":
            module = nn.Linear(cfg["in_features"], cfg["out_features"], **made)
            copy(module.weight, f"{i}.W", transpose=True)  # gpunn (in, out), torch (out, in)
            copy(module.bias, f"{i}.b")
        elif kind == "Conv2D":
            module = nn.Conv2d(
                cfg["in_channels"],
                cfg["out_channels"],
                _pair(cfg["kernel_size"]),
                stride=_pair(cfg["stride"]),
                padding=_pair(cfg["padding"]),
                **made,
            )
            copy(module.weight, f"{i}.W")  # (out, in, kh, kw) in both
            copy(module.bias, f"{i}.b")
        elif kind in ("MaxPool2D", "AvgPool2D"):
            pool = nn.MaxPool2d if kind == "MaxPool2D" else nn.AvgPool2d
            stride = cfg["stride"] if cfg["stride"] is not None else cfg["kernel_size"]
            module = pool(_pair(cfg["kernel_size"]), stride=_pair(stride))
        elif kind in ("BatchNorm1D", "BatchNorm2D"):
            norm = nn.BatchNorm1d if kind == "BatchNorm1D" else nn.BatchNorm2d
            size = cfg.get("num_features", cfg.get("num_channels"))
            module = norm(size, eps=cfg["eps"], momentum=cfg["momentum"], **made)
            copy(module.weight, f"{i}.gamma")
            copy(module.bias, f"{i}.beta")
            if f"{i}.running_mean" in tensors:
                copy(module.running_mean, f"{i}.running_mean")
                copy(module.running_var, f"{i}.running_var")
        elif kind == "Flatten":
            module = nn.Flatten()
        elif kind == "ReLU":
            module = nn.ReLU()
        elif kind == "LeakyReLU":
            module = nn.LeakyReLU(cfg["slope"])
        elif kind in ("Sigmoid", "Tanh"):
            module = getattr(nn, kind)()
        elif kind == "Dropout":
            module = nn.Dropout(cfg["p"])
        else:
            raise ValueError(f"no PyTorch counterpart for a gpunn {kind} layer in the benchmark")
        modules.append(module)
    return nn.Sequential(*modules)


def _pair(value: Any) -> tuple[int, int]:
    """A gpunn config value (an int or a [rows, columns] list) as torch's (int, int)."""
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class TorchWorkload:
    """The torch.nn twin of a gpunn network + CrossEntropyLoss + torch.optim, on one batch.

    ``state`` holds the gpunn model's initial weights (``Sequential.state_dict()``); ``layers``
    are its layers (default: Dense layers with ReLU between them, read from the ``"<i>.W"``
    keys of ``state``).
    """

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
        layers: Sequence[Any] | None = None,
    ) -> None:
        self.torch = torch
        self.device = torch.device(device)
        if layers is None:
            layers, state = _mlp(state)
        self.model = torch_network(torch, layers, state, device=device, dtype=str(x.dtype))
        self.model.train()
        self.loss = torch.nn.CrossEntropyLoss()
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


def _mlp(state: dict[str, np.ndarray]) -> tuple[list[Any], dict[str, np.ndarray]]:
    """Stand-ins for Dense, ReLU, ..., Dense read from the ``"<i>.W"`` shapes of ``state``, and
    the weights keyed by those layers' indices (Dense j is layer 2j)."""
    keys = sorted({k.split(".")[0] for k in state}, key=int)  # Dense layer indices
    layers: list[Any] = []
    params: dict[str, np.ndarray] = {}
    for j, key in enumerate(keys):
        n_in, n_out = state[f"{key}.W"].shape
        if j:
            layers.append(_Spec("ReLU", {}))
        params[f"{len(layers)}.W"], params[f"{len(layers)}.b"] = (
            state[f"{key}.W"],
            state[f"{key}.b"],
        )
        layers.append(_Spec("Dense", {"in_features": n_in, "out_features": n_out}))
    return layers, params


class _Spec:
    """A layer's kind and config, all :func:`torch_network` reads of a gpunn layer."""

    def __init__(self, kind: str, config: dict[str, Any]) -> None:
        self.kind, self._config = kind, config

    def config(self) -> dict[str, Any]:
        return self._config


def _no_sync() -> None:
    """The CPU runs PyTorch ops synchronously: nothing to wait for."""
