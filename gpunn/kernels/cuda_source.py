"""CUDA C text of the fused kernels: the .cu files shipped in this package, and the elementwise
kernels rendered as standalone CUDA or host C++ (to run their math on the CPU in the tests).

The RawKernel bodies live in ``gpunn/kernels/*.cu`` and are read with ``importlib.resources``, so
CuPy runs exactly the file that the tests compile (with NVRTC, as CuPy does) and run on the CPU
(under a CUDA shim). The ``ElementwiseKernel`` operations are kept as data
(:class:`~gpunn.kernels.spec.Elementwise`); :func:`render_cuda` wraps one in a complete
``__global__`` function (one thread per element) so the CUDA shim can run the same operation
text, and :func:`render_host` wraps it in a plain C++ loop.
"""

from __future__ import annotations

from importlib import resources

from gpunn.kernels.spec import Elementwise

#: C type for each dtype name that may appear in a parameter list (T is substituted per dtype)
C_TYPES = {
    "float32": "float",
    "float64": "double",
    "int32": "int",
    "int64": "long long",
    "bool": "bool",
}


def read_cu(filename: str) -> str:
    """The text of ``gpunn/kernels/<filename>`` (a .cu file shipped as package data)."""
    return resources.files("gpunn.kernels").joinpath(filename).read_text(encoding="utf-8")


def cu_files() -> list[str]:
    """Names of every .cu file in the package, sorted."""
    root = resources.files("gpunn.kernels")
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".cu"))


def parse_params(params: str) -> list[tuple[str, str]]:
    """``"T z, int32 flag"`` -> ``[("T", "z"), ("int32", "flag")]`` (CuPy's parameter syntax)."""
    out = []
    for item in params.split(","):
        words = item.split()
        if len(words) != 2:
            raise ValueError(f"unsupported ElementwiseKernel parameter {item.strip()!r}")
        type_name, name = words
        if type_name != "T" and type_name not in C_TYPES:
            raise ValueError(f"unsupported parameter type {type_name!r} in {item.strip()!r}")
        out.append((type_name, name))
    return out


def _c_type(type_name: str, dtype: str) -> str:
    return C_TYPES[dtype] if type_name == "T" else C_TYPES[type_name]


def _element_body(src: Elementwise, dtype: str, indent: str) -> str:
    """Bind each parameter to element i (inputs by value, outputs by reference), then the op."""
    lines = [f"typedef {C_TYPES[dtype]} T;"]
    for type_name, name in parse_params(src.in_params):
        lines.append(f"[[maybe_unused]] const {_c_type(type_name, dtype)} {name} = {name}_in[i];")
    for type_name, name in parse_params(src.out_params):
        lines.append(f"{_c_type(type_name, dtype)}& {name} = {name}_out[i];")
    lines.append(src.operation.strip())
    return "\n".join(indent + line for line in "\n".join(lines).splitlines())


def _signature(src: Elementwise, dtype: str) -> str:
    args = [f"const {_c_type(t, dtype)}* {n}_in" for t, n in parse_params(src.in_params)] + [
        f"{_c_type(t, dtype)}* {n}_out" for t, n in parse_params(src.out_params)
    ]
    return ", ".join(args + ["long long n_elements"])


def kernel_symbol(src: Elementwise, dtype: str) -> str:
    """The C symbol of ``src`` rendered for ``dtype``, e.g. ``gpunn_sgd_plain_float32``."""
    return f"{src.name}_{dtype}"


def render_cuda(src: Elementwise, dtype: str) -> str:
    """``src`` as a complete CUDA kernel: one thread per element, every argument an array.

    CuPy's own wrapper also allows scalars and broadcasting (and indexes strided arrays); the
    per-element code is the same.
    """
    return (
        f'extern "C" __global__ void {kernel_symbol(src, dtype)}({_signature(src, dtype)}) {{\n'
        "    const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;\n"
        "    if (i >= n_elements) return;\n"
        f"{_element_body(src, dtype, '    ')}\n"
        "}\n"
    )


HOST_PRELUDE = """#include <algorithm>
#include <cmath>
using namespace std;  // exp, fabs, log1p, tanh, sqrt, max: the float and double overloads
"""


def render_host(src: Elementwise, dtype: str) -> str:
    """``src`` as a plain C++ loop over n_elements (compile it after HOST_PRELUDE)."""
    return (
        f'extern "C" void {kernel_symbol(src, dtype)}({_signature(src, dtype)}) {{\n'
        "    for (long long i = 0; i < n_elements; ++i) {\n"
        f"{_element_body(src, dtype, '        ')}\n"
        "    }\n"
        "}\n"
    )
