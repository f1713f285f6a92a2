"""BatchNorm1D and BatchNorm2D: batch normalisation layers (math in ``gpunn.math.batchnorm``).

Parameters ``gamma`` (scale, starts at 1) and ``beta`` (shift, starts at 0) are trained; the
running mean and variance are *state*: views into the model's flat state buffer, updated by
every training forward with PyTorch's rule, used by inference (``training=False``), saved in
checkpoints and moved by ``Sequential.to``, but never touched by an optimizer.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gpunn.math.batchnorm import (
    batch_norm_backward,
    batch_norm_forward,
    batch_norm_update_running,
)
from gpunn.nn.layer import Array, Layer


class BatchNorm(Layer):
    """Base of BatchNorm1D/2D: per-channel statistics over every axis but the channel axis."""

    #: what the constructor calls the channel count ("num_features" or "num_channels")
    size_name: ClassVar[str]
    #: the axis of one sample's shape that holds the channels
    channel_axis: ClassVar[int] = 0
    # y and dx are new arrays every step, which this layer never reads again
    returns_scratch_output = True
    returns_scratch_grad = True

    def __init__(self, size: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(
                f"{self.kind} {self.size_name} must be a positive integer, got {size!r}"
            )
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise ValueError(f"{self.kind} momentum must be a number in [0, 1], got {momentum!r}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"{self.kind} momentum must be a number in [0, 1], got {momentum!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"{self.kind} eps must be a positive number, got {eps!r}")
        self.size, self.momentum, self.eps = size, float(momentum), float(eps)

    def config(self) -> dict[str, Any]:
        return {self.size_name: self.size, "momentum": self.momentum, "eps": self.eps}

    def describe(self) -> str:
        return self.kind  # the size shows in the summary's shapes

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"gamma": (self.size,), "beta": (self.size,)}

    def init_params(self, rng: Any, init: str) -> dict[str, Any]:
        return {"gamma": [1.0] * self.size}  # beta starts at zero

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"running_mean": (self.size,), "running_var": (self.size,)}

    def init_state(self) -> dict[str, Any]:
        return {"running_var": [1.0] * self.size}  # running_mean starts at zero

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if in_shape[self.channel_axis] != self.size:
            raise ValueError(
                f"expects {self.size} channels (axis 1 of the input) but gets "
                f"{in_shape[self.channel_axis]}"
            )
        return in_shape

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self.training = training
        y, self.cache = batch_norm_forward(
            x,
            self.params["gamma"],
            self.params["beta"],
            xp=self.xp,
            eps=self.eps,
            training=training,
            running_mean=self.state["running_mean"],
            running_var=self.state["running_var"],
        )
        if training:
            count = x.size // x.shape[1]  # values per channel
            batch_norm_update_running(
                self.state["running_mean"],
                self.state["running_var"],
                self.cache,
                count,
                xp=self.xp,
                momentum=self.momentum,
            )
        return y

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        return batch_norm_backward(
            dy,
            self.cache,
            self.params["gamma"],
            xp=self.xp,
            dgamma=self.grads["gamma"],
            dbeta=self.grads["beta"],
            training=self.training,
        )

    def min_train_batch(self, sample_shape: tuple[int, ...]) -> int:
        """The fewest samples a training batch may have: 2 unless a sample holds more than one
        value per channel (BatchNorm2D on maps larger than 1x1)."""
        per_sample = 1
        for d in sample_shape[1:]:
            per_sample *= d
        return 1 if per_sample > 1 else 2


class BatchNorm1D(BatchNorm):
    """Batch normalisation of (N, F) features, statistics over the batch
    (``torch.nn.BatchNorm1d``)."""

    kind = "BatchNorm1D"
    size_name = "num_features"
    input_rank = 1

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__(num_features, momentum, eps)


class BatchNorm2D(BatchNorm):
    """Batch normalisation of (N, C, H, W) maps, statistics per channel over the batch and every
    pixel (``torch.nn.BatchNorm2d``)."""

    kind = "BatchNorm2D"
    size_name = "num_channels"
    input_rank = 3

    def __init__(self, num_channels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__(num_channels, momentum, eps)
