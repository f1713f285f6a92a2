"""Test tools for gpunn and for code built on it.

* ``gradients``  the float64 central-difference checker every layer and loss must pass
* ``fake_cupy``  a device-rule emulation of CuPy: runs the GPU code path on the CPU and counts
                 what would go wrong there (cross-device operations, host reads)
* ``ftz``        expected values as a GPU computes them, float32 subnormals flushed to zero

``fake_cupy`` and ``ftz`` are imported on their own (``from gpunn.testing import fake_cupy``).
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
