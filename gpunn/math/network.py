"""The tutorial's network, written out with the functions of this folder and nothing else.

Three inputs, four sigmoid hidden units, one output, log loss, full-batch gradient descent:
the 2-layer network of the classic "neural network from scratch" tutorial. Read it as the map
of everything else in gpunn: ``Sequential`` runs exactly these calls for a stack of layers,
keeps the arrays between forward and backward in the layer objects, and hands the update to an
optimizer; the fused GPU kernels are faster forms of the same lines.

    z1 = X @ W1 + b1      a1 = sigmoid(z1)      z2 = a1 @ W2 + b2      L = bce(z2, y)
    dz2 = dL/dz2          da1 = dz2 @ W2^T      dz1 = da1 * a1 (1 - a1)
"""

from __future__ import annotations

from typing import Any

from gpunn.math.activations import sigmoid_backward, sigmoid_forward
from gpunn.math.dense import dense_backward, dense_forward
from gpunn.math.losses import binary_cross_entropy_backward, binary_cross_entropy_forward
from gpunn.math.optim import sgd_update

Array = Any  # a numpy.ndarray or a cupy.ndarray
Params = dict[str, Array]  # "W1" (3, 4), "b1" (4,), "W2" (4, 1), "b2" (1,)


def forward(params: Params, X: Array, *, xp: Any) -> tuple[Array, Array]:
    """(logits z2 (N, 1), hidden activations a1 (N, 4)) for inputs X (N, 3)."""
    z1 = dense_forward(X, params["W1"], params["b1"], xp=xp)  # (N, 4)
    a1 = sigmoid_forward(z1, xp=xp)  # (N, 4)
    z2 = dense_forward(a1, params["W2"], params["b2"], xp=xp)  # (N, 1)
    return z2, a1


def backward(params: Params, X: Array, a1: Array, dz2: Array, *, xp: Any) -> Params:
    """Gradients of the loss for every parameter, from dL/dz2 (N, 1), back through the net."""
    grads = {name: xp.empty_like(value) for name, value in params.items()}
    da1 = dense_backward(  # (N, 4); fills dL/dW2 (4, 1) and dL/db2 (1,)
        dz2, a1, params["W2"], xp=xp, dW=grads["W2"], db=grads["b2"]
    )
    dz1 = sigmoid_backward(da1, a1, xp=xp)  # (N, 4): sigmoid' = a (1 - a)
    dense_backward(dz1, X, params["W1"], xp=xp, dW=grads["W1"], db=grads["b1"], need_dx=False)
    return grads


def train_step(params: Params, X: Array, y: Array, *, lr: float, xp: Any) -> Array:
    """One full-batch gradient-descent step on (X (N, 3), y (N, 1) of 0/1); returns the loss
    before the step (a 0-d array). The parameters are updated in place."""
    z2, a1 = forward(params, X, xp=xp)
    loss = binary_cross_entropy_forward(z2, y, xp=xp)  # mean log loss of sigmoid(z2)
    dz2 = binary_cross_entropy_backward(z2, y, xp=xp)  # (N, 1) = (sigmoid(z2) - y) / N
    for name, grad in backward(params, X, a1, dz2, xp=xp).items():
        sgd_update(params[name], grad, None, lr=lr, xp=xp)  # p -= lr * grad
    return loss
