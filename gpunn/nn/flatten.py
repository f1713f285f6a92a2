"""Flatten: (N, C, H, W) -> (N, C*H*W) in C order, PyTorch's (math in ``gpunn.math.flatten``)."""

from __future__ import annotations

from gpunn.math.flatten import flatten_backward, flatten_forward
from gpunn.nn.layer import Array, Layer


class Flatten(Layer):
    """Joins each sample's axes into one, the last varying fastest (as ``torch.flatten(x, 1)``).

    A view when the input is C-ordered; a batch-innermost input (from a Conv2D or a pool) is
    copied once into a C-ordered workspace, the one transposing copy of a CNN's forward pass.
    """

    kind = "Flatten"
    keeps_shape = False

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        size = 1
        for d in in_shape:
            size *= d
        return (size,)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self.x_shape = x.shape
        if x.flags.c_contiguous:
            return flatten_forward(x, xp=self.xp)  # a view
        out = self.workspace("y", (x.shape[0], *self.output_shape(x.shape[1:])))
        return flatten_forward(x, xp=self.xp, out=out)

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array:
        return flatten_backward(dy, self.x_shape, xp=self.xp)
