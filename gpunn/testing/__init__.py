"""Test tools for gpunn and for code built on it: the float64 gradient checker (``gradients``)
and a device-rule emulation of CuPy (``fake_cupy``, imported on its own: ``from gpunn.testing
import fake_cupy``), which runs the GPU code path on the CPU and counts what would go wrong.

Every layer and loss must pass the central-difference check of :mod:`gpunn.testing.gradients`.
This folder is one of the tools at the top of the package: it may import anything below it.
"""

from gpunn.testing.gradients import (
    check_function_gradients,
    check_layer_gradients,
    check_loss_gradients,
    check_model_gradients,
    numerical_gradient,
    relative_error,
)

__all__ = [
    "check_function_gradients",
    "check_layer_gradients",
    "check_loss_gradients",
    "check_model_gradients",
    "numerical_gradient",
    "relative_error",
]
