"""The Layer base class: parameters as views into the model's flat buffer, reusable workspaces.

A layer owns no arrays of its own until a :class:`~gpunn.model.Sequential` binds it to a
backend. Binding hands it ``xp`` and its parameters and gradients as views into two flat
buffers (one for all parameters, one for all gradients), so an optimizer updates the whole
model with one vectorised expression.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gpunn import kernels

Array = Any  # a numpy.ndarray or a cupy.ndarray: the same code handles both


class Layer:
    """Base class: ``forward(x, training)`` and ``backward(dy, need_dx)`` over whole batches."""

    kind: ClassVar[str] = "Layer"
    #: how a Dense layer *before* this one should be initialised ("he" or "glorot")
    init_hint: ClassVar[str | None] = None
    #: forward returns a workspace of this layer that it never reads again, so the layer
    #: after it may overwrite that output in place (see ``Sequential``)
    returns_scratch_output: ClassVar[bool] = False
    #: backward returns a workspace of this layer that it never reads again, so the layer
    #: before may overwrite that gradient in place
    returns_scratch_grad: ClassVar[bool] = False
    #: the activation's name in gpunn.kernels ("relu", ...); None for other layers
    act: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.xp: Any = None
        self.dtype: Any = None
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self._ws: dict[str, Array] = {}
        #: set by Sequential when forward's input is the previous layer's scratch output, and
        #: when backward's gradient is the next layer's scratch: a layer may then write over it
        self.may_overwrite_x = False
        self.may_overwrite_dy = False
        #: set by Sequential on an activation right after a Dense layer: that Dense layer left
        #: its bias for this layer to add, in the same pass as the activation
        self.bias_from: Layer | None = None

    # --- parameters -------------------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of each parameter (empty for layers without parameters)."""
        return {}

    def init_params(self, rng: Any, init: str) -> dict[str, Any]:
        """Initial values (host arrays drawn from ``rng``); parameters left out start at zero."""
        return {}

    def bind(self, xp: Any, dtype: Any, params: dict[str, Array], grads: dict[str, Array]) -> None:
        """Attach the array module and the views into the model's flat buffers."""
        self.xp, self.dtype = xp, dtype
        self.params, self.grads = params, grads
        self._ws = {}

    def config(self) -> dict[str, Any]:
        """The constructor arguments: ``type(layer)(**layer.config())`` rebuilds the layer."""
        return {}

    # --- computation ------------------------------------------------------------------------
    def forward(self, x: Array, *, training: bool = True) -> Array:
        raise NotImplementedError

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array | None:
        raise NotImplementedError

    def output_width(self, in_width: int) -> int:
        """Features per sample that come out when ``in_width`` go in."""
        return in_width

    def bias_and_activation(
        self, z: Array, out: Array, *, keep_z: bool, slope: float = 0.0
    ) -> Array:
        """a = act(z + b) with b the bias of ``bias_from``: one fused kernel on CuPy.

        With ``keep_z`` z becomes z + b (for a backward that needs the pre-activation).
        """
        forward = kernels.get("bias_activation_forward", self.xp)
        b = self.bias_from.params["b"]
        return forward(z, b, self.act, slope=slope, xp=self.xp, out=out, keep_z=keep_z)

    # --- workspace ----------------------------------------------------------------------------
    def workspace(self, name: str, shape: tuple[int, ...]) -> Array:
        """A scratch array reused across steps while the shape stays the same.

        Reusing the activation and gradient arrays of the previous step (and writing into them
        with ``out=``) avoids an allocation per operation per step. The contents are only valid
        until the layer's next forward/backward.
        """
        buf = self._ws.get(name)
        if buf is None or buf.shape != shape:
            buf = self.xp.empty(shape, dtype=self.dtype)
            self._ws[name] = buf
        return buf

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
