"""The pure math of gpunn: every forward/backward pair and update rule, as plain functions.

This folder is the bottom floor of the package. Its modules import nothing from gpunn (and
never NumPy or CuPy themselves): each function receives the array module as ``xp`` and runs
unchanged on NumPy and CuPy. Nothing here knows about GPUs, layers, workspaces or fused
kernels; those live in the floors above (``gpunn.kernels``, ``gpunn.nn``).

Read it in this order:

1. ``dense``        z = x @ W + b and its gradients
2. ``activations``  ReLU, LeakyReLU, sigmoid, tanh, softmax
3. ``losses``       softmax cross-entropy, binary cross-entropy, mean squared error
4. ``optim``        the SGD and Adam/AdamW update rules of torch.optim
5. ``dropout``      inverted dropout
6. ``network``      the tutorial's 2-layer network, built from the above
7. ``conv``         2-D convolution as im2col + one GEMM, and col2im for its backward
8. ``pool``         max and average pooling over 2-D windows
9. ``conv_pool``    a convolution and its 2x2 max-pool regrouped as one GEMM (a faster form)
10. ``batchnorm``   batch normalisation per channel, with PyTorch's running statistics
11. ``flatten``     (N, C, H, W) -> (N, C*H*W) in C order

A new layer's math goes here first: ``thing_forward`` with ``thing_backward`` directly below it,
the derivative in a comment, and a float64 gradient check in the tests.
"""

from gpunn.math.activations import (
    leaky_relu_backward,
    leaky_relu_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    softmax_backward,
    softmax_forward,
    tanh_backward,
    tanh_forward,
)
from gpunn.math.batchnorm import (
    batch_norm_backward,
    batch_norm_forward,
    batch_norm_update_running,
)
from gpunn.math.conv import col2im, conv2d_backward, conv2d_forward, im2col
from gpunn.math.conv_pool import conv2d_maxpool2_backward, conv2d_maxpool2_forward
from gpunn.math.dense import dense_backward, dense_forward
from gpunn.math.dropout import dropout_backward, dropout_forward, dropout_mask
from gpunn.math.flatten import flatten_backward, flatten_forward
from gpunn.math.losses import (
    binary_cross_entropy_backward,
    binary_cross_entropy_forward,
    mean_squared_error_backward,
    mean_squared_error_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from gpunn.math.optim import adam_update, sgd_update
from gpunn.math.pool import (
    avg_pool2d_backward,
    avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)

__all__ = [
    "adam_update",
    "avg_pool2d_backward",
    "avg_pool2d_forward",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_norm_update_running",
    "binary_cross_entropy_backward",
    "binary_cross_entropy_forward",
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_maxpool2_backward",
    "conv2d_maxpool2_forward",
    "dense_backward",
    "dense_forward",
    "dropout_backward",
    "dropout_forward",
    "dropout_mask",
    "flatten_backward",
    "flatten_forward",
    "im2col",
    "leaky_relu_backward",
    "leaky_relu_forward",
    "mean_squared_error_backward",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "mean_squared_error_forward",
    "relu_backward",
    "relu_forward",
    "sgd_update",
    "sigmoid_backward",
    "sigmoid_forward",
    "softmax_backward",
    "softmax_forward",
    "softmax_cross_entropy_backward",
    "softmax_cross_entropy_forward",
    "tanh_backward",
    "tanh_forward",
]
