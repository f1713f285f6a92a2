"""The one dispatch point for gpunn's fused GPU kernels: ``get(name, xp)`` returns a callable.

On CuPy (unless ``GPUNN_FUSED=0``) it is the fused kernel; everywhere else, and whenever the fused
kernel cannot be trusted, it is the *reference*: a plain composition of the ``gpunn.math``
functions whose math the kernel repeats. Both forms take the same arguments, so a call site reads

    loss, dlogits = kernels.get("softmax_cross_entropy", xp)(logits, y, xp=xp)

Safety: the first time a process asks for a fused kernel on a device, the kernel is run on small
fixed inputs beside its reference (the *self-check*). If it fails to compile, raises, or disagrees,
gpunn warns once, naming the kernel and the error, and uses the reference from then on. Results
are cached per (kernel, device); ``outcomes()`` reports them.

Kernels (``NAMES``):

=========================== =================================================================
bias_activation_forward     ``(z, b, act, *, slope, xp, out, keep_z) -> a``   a = act(z + b)
activation_backward         ``(da, s, act, *, slope, xp, out) -> dz``
softmax_cross_entropy       ``(z, y, *, xp) -> (loss, dz)``   forward and backward together
binary_cross_entropy        ``(z, y, *, xp) -> (loss, dz)``
sgd_update                  same signature as ``gpunn.math.optim.sgd_update`` (in place)
adam_update                 same signature as ``gpunn.math.optim.adam_update`` (in place)
col2im                      same signature as ``gpunn.math.conv.col2im``
max_pool2d_backward         same signature as ``gpunn.math.pool.max_pool2d_backward``
=========================== =================================================================
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpunn.kernels import activation, bce, updates
from gpunn.kernels.activation import ACTIVATION_BACKWARD, BIAS_ACTIVATION_FORWARD
from gpunn.kernels.bce import BINARY_CROSS_ENTROPY
from gpunn.kernels.conv import COL2IM, MAX_POOL2D_BACKWARD
from gpunn.kernels.softmax_xent import SOFTMAX_CROSS_ENTROPY
from gpunn.kernels.spec import Elementwise, Impl, KernelSpec, compare
from gpunn.kernels.updates import ADAM_UPDATE, SGD_UPDATE

__all__ = [
    "ELEMENTWISE_SOURCES",
    "ENV_VAR",
    "NAMES",
    "KernelSpec",
    "Outcome",
    "fused",
    "fused_enabled",
    "get",
    "outcomes",
    "reference",
    "register_fused",
    "reset",
    "self_check_all",
    "spec",
]

ENV_VAR = "GPUNN_FUSED"

_SPECS: dict[str, KernelSpec] = {
    s.name: s
    for s in (
        BIAS_ACTIVATION_FORWARD,
        ACTIVATION_BACKWARD,
        SOFTMAX_CROSS_ENTROPY,
        BINARY_CROSS_ENTROPY,
        SGD_UPDATE,
        ADAM_UPDATE,
        COL2IM,
        MAX_POOL2D_BACKWARD,
    )
}
NAMES: tuple[str, ...] = tuple(_SPECS)

#: every ElementwiseKernel source (the RawKernel sources are the package's .cu files)
ELEMENTWISE_SOURCES: tuple[Elementwise, ...] = (*activation.SOURCES, *bce.SOURCES, *updates.SOURCES)

#: (kernel name, array-module name) -> builder of the fused implementation for that module
_FUSED: dict[tuple[str, str], Callable[[Any], Impl]] = {
    (s.name, "cupy"): s.build_fused for s in _SPECS.values()
}


@dataclass(frozen=True)
class Outcome:
    """What ``get`` decided for one kernel on one device, and why."""

    name: str
    device: str  # e.g. "cupy:0", or the array module's name
    status: str  # "fused", "failed" (self-check failed: the reference is used) or "reference"
    reason: str = ""  # why not fused; for "failed" the error
    max_rel_error: float | None = None  # worst self-check error when it ran to the end


_checked: dict[tuple[str, str], tuple[Impl, Outcome]] = {}  # (name, device): after self-check
_resolved: dict[tuple[str, str, int | None, bool], Impl] = {}  # fast path of get()
_runtimes: dict[int, Any] = {}  # id(xp) -> xp.cuda.runtime, or None for a CPU module
_enabled: bool | None = None  # GPUNN_FUSED, once read


def fused_enabled() -> bool:
    """False when the environment sets ``GPUNN_FUSED`` to 0 / false / no / off.

    Read once per process, on first use, and again after :func:`reset` (reading the environment
    at every call would cost more than the rest of ``get``).
    """
    global _enabled
    if _enabled is None:
        _enabled = os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")
    return _enabled


def spec(name: str) -> KernelSpec:
    """The :class:`KernelSpec` of kernel ``name``; KeyError listing the known names."""
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"no kernel named {name!r}; known kernels: {', '.join(NAMES)}") from None


def reference(name: str) -> Impl:
    """The reference implementation of ``name`` (plain composition of core functions)."""
    return spec(name).reference


def fused(name: str, xp: Any) -> Impl:
    """The fused implementation of ``name`` for ``xp``, *without* the self-check (for tests).

    Raises KeyError when there is none for this array module.
    """
    builder = _FUSED.get((spec(name).name, _module_name(xp)))
    if builder is None:
        raise KeyError(f"no fused {name!r} for array module {_module_name(xp)!r}")
    return builder(xp)


def get(name: str, xp: Any) -> Impl:
    """The implementation of kernel ``name`` to use with array module ``xp``.

    The fused one on CuPy when ``GPUNN_FUSED`` allows it and its self-check on this device passed,
    else the reference. Cheap (about a microsecond): call it at each use, or keep the result.
    """
    module, device_id, enabled = xp.__name__, _device_id(xp), fused_enabled()
    key = (name, module, device_id, enabled)
    impl = _resolved.get(key)
    if impl is None:
        device = module if device_id is None else f"{module}:{device_id}"
        impl = _resolved[key] = _resolve(name, xp, module, device, enabled)
    return impl


def _resolve(name: str, xp: Any, module: str, device: str, enabled: bool) -> Impl:
    s = spec(name)
    builder = _FUSED.get((name, module))
    if builder is None:
        return s.reference  # NumPy and any module without fused kernels: nothing to decide
    if not enabled:
        _checked.setdefault(
            (name, device), (s.reference, Outcome(name, device, "reference", f"{ENV_VAR}=0"))
        )
        return s.reference
    done = _checked.get((name, device))
    if done is None or done[1].reason == f"{ENV_VAR}=0":
        done = _self_check(s, builder, xp, device)
        _checked[(name, device)] = done
    return done[0]


def _self_check(s: KernelSpec, builder: Callable[[Any], Impl], xp: Any, device: str) -> Any:
    """Build the fused kernel and compare it with the reference on the probe inputs."""
    try:
        impl = builder(xp)
        err = compare(s.probe(impl, xp), s.probe(s.reference, xp), xp)
    except Exception as exc:  # compile errors, launch errors, mismatches: all mean "don't use"
        reason = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"gpunn: fused kernel {s.name!r} (repeats {' + '.join(s.repeats)}) failed its "
            f"self-check on {device} and is disabled; using the reference instead. {reason}",
            RuntimeWarning,
            stacklevel=4,
        )
        return s.reference, Outcome(s.name, device, "failed", reason)
    return impl, Outcome(s.name, device, "fused", "", err)


def outcomes() -> dict[str, Outcome]:
    """Every decision made so far, keyed ``"<kernel>@<device>"``."""
    return {f"{name}@{device}": out for (name, device), (_, out) in _checked.items()}


def self_check_all(xp: Any) -> dict[str, Outcome]:
    """Resolve every kernel for ``xp`` now (running the self-checks) and return the outcomes."""
    for name in NAMES:
        get(name, xp)
    device = _device(xp)
    return {k: v for k, v in outcomes().items() if v.device == device}


def register_fused(
    name: str, module: str, builder: Callable[[Any], Impl] | None
) -> Callable[[Any], Impl] | None:
    """Set (or with None remove) the fused builder of ``name`` for array module ``module``.

    Returns the builder it replaces (None if there was none), so a caller can put it back. This
    is how a test gives a fake array module a fake "fused" kernel to exercise the self-check.
    Forgets every earlier decision (:func:`reset`).
    """
    spec(name)
    previous = _FUSED.pop((name, module), None)
    if builder is not None:
        _FUSED[(name, module)] = builder
    reset()
    return previous


def reset() -> None:
    """Forget every decision and re-read ``GPUNN_FUSED`` at the next ``get`` (for tests)."""
    global _enabled
    _checked.clear()
    _resolved.clear()
    _runtimes.clear()
    _enabled = None


def _module_name(xp: Any) -> str:
    return getattr(xp, "__name__", type(xp).__name__)


def _device_id(xp: Any) -> int | None:
    """The current CUDA device for CuPy (any module with ``cuda.runtime``), else None."""
    key = id(xp)
    if key not in _runtimes:
        _runtimes[key] = getattr(getattr(xp, "cuda", None), "runtime", None)
    runtime = _runtimes[key]
    if runtime is None:
        return None
    try:
        return runtime.getDevice()
    except Exception:  # no usable device: there will be no fused kernel to check either
        return None


def _device(xp: Any) -> str:
    """``"cupy:<current device>"`` for CuPy, else the module's name (keys of ``outcomes()``)."""
    device_id = _device_id(xp)
    return _module_name(xp) if device_id is None else f"{_module_name(xp)}:{device_id}"
