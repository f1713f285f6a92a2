"""The Layer base class: parameters as views into the model's flat buffer, reusable workspaces.

A layer owns no arrays of its own until a :class:`~gpunn.model.Sequential` binds it to a
backend. Binding hands it ``xp`` and its parameters and gradients as views into two flat
buffers (one for all parameters, one for all gradients), so an optimizer updates the whole
model with one vectorised expression. State that is not trained (BatchNorm's running
statistics) lives in a third flat buffer, out of the optimizer's reach (:meth:`Layer.bind_state`).
Once every layer is bound, the model tells each layer who its neighbours are
(:meth:`Layer.connect`), so that layers can share work safely.
"""

from __future__ import annotations

from typing import Any, ClassVar

Array = Any  # a numpy.ndarray or a cupy.ndarray: the same code handles both


class Layer:
    """Base class: ``forward(x, training)`` and ``backward(dy, need_dx)`` over whole batches."""

    kind: ClassVar[str] = "Layer"
    #: how a Dense layer *before* this one should be initialised ("he" or "glorot")
    init_hint: ClassVar[str | None] = None
    #: forward returns a workspace of this layer that it never reads again, so the layer
    #: after it may overwrite that output in place
    returns_scratch_output: ClassVar[bool] = False
    #: backward returns a workspace of this layer that it never reads again, so the layer
    #: before may overwrite that gradient in place
    returns_scratch_grad: ClassVar[bool] = False
    #: axes of one sample the layer takes (Dense 1, Conv2D 3); None: any number
    input_rank: ClassVar[int | None] = None
    #: one sample comes out with the shape it went in (activations, Dropout, BatchNorm)
    keeps_shape: ClassVar[bool] = True

    def __init__(self) -> None:
        self.xp: Any = None
        self.dtype: Any = None
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.state: dict[str, Array] = {}
        self._ws: dict[str, Array] = {}

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

    # --- state that is not trained (running statistics) ------------------------------------
    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of each state array (empty for layers without state)."""
        return {}

    def init_state(self) -> dict[str, Any]:
        """Initial state values (host arrays); state left out starts at zero."""
        return {}

    def bind_state(self, state: dict[str, Array]) -> None:
        """Attach the views into the model's flat state buffer (after :meth:`bind`)."""
        self.state = state

    def connect(self, prev: Layer | None, nxt: Layer | None) -> None:
        """Called once the whole model is bound, with the layers before and after this one.

        The default does nothing. A layer that can save work given its neighbours (an activation
        adding the previous Dense layer's bias in its own pass, or working in place on a
        neighbour's scratch array) arranges it here, where both sides of the deal are known.
        """

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

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one sample's output for one sample of shape ``in_shape`` (no batch
        axis); ValueError saying why when the layer cannot take such a sample. The default
        keeps every axis but the last, whose width ``output_width`` gives; a layer that changes
        other axes (a convolution) overrides this."""
        return (*in_shape[:-1], self.output_width(in_shape[-1]))

    def describe(self) -> str:
        """A short label for ``Sequential.summary``: the kind and the settings that are set."""
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if v is not None)
        return f"{self.kind}({args})" if args else self.kind

    # --- workspace ----------------------------------------------------------------------------
    def workspace(
        self,
        name: str,
        shape: tuple[int, ...],
        *,
        order: tuple[int, ...] | None = None,
        dtype: Any = None,
        zero: bool = False,
    ) -> Array:
        """A scratch array reused across steps while the shape stays the same.

        Reusing the activation and gradient arrays of the previous step (and writing into them
        with ``out=``) avoids an allocation per operation per step. The contents are only valid
        until the layer's next forward/backward. ``order`` stores the axes in memory in that
        order, outermost first (``(1, 2, 3, 0)`` keeps an (N, C, H, W) array as (C, H, W, N));
        the array returned always has ``shape``. ``dtype`` defaults to the model's; ``zero``
        fills a new buffer with zeros (a reused one keeps what the layer left in it).
        """
        if order is None and dtype is None and not zero:  # the common case, kept cheap
            buf = self._ws.get(name)
            if buf is None or buf.shape != shape:
                buf = self._ws[name] = self.xp.empty(shape, dtype=self.dtype)
            return buf
        order = tuple(range(len(shape))) if order is None else tuple(order)
        dtype = self.dtype if dtype is None else self.xp.dtype(dtype)
        key = f"{name}@{order}"
        buf = self._ws.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            make = self.xp.zeros if zero else self.xp.empty
            stored = make(tuple(shape[axis] for axis in order), dtype=dtype)
            buf = stored.transpose(_inverse(order))  # (shape) view of the stored memory
            self._ws[key] = buf
        return buf

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def memory_order(a: Array) -> tuple[int, ...]:
    """The axes of ``a`` from the largest stride to the smallest (C order: 0, 1, 2, ...).

    ``Layer.workspace(..., order=memory_order(a))`` gives a scratch array stored like ``a``, so
    an elementwise pass over both streams through memory in step.
    """
    strides = a.strides
    return tuple(sorted(range(a.ndim), key=lambda axis: (-abs(strides[axis]), axis)))


def _inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``order`` (for transposing stored memory back)."""
    inverse = [0] * len(order)
    for position, axis in enumerate(order):
        inverse[axis] = position
    return tuple(inverse)
