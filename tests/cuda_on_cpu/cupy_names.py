"""Check that every CUDA-specific CuPy attribute a package uses exists in the installed CuPy.

NumPy-compatible names (``xp.exp``, ``xp.float32``) are left to the backend parity tests; this
checks the rest: ``cupy.cuda.*``, ``cupy._core.*``, ``RawModule``, ``ElementwiseKernel``,
``get_default_memory_pool``, ... A misspelt or removed name there would otherwise only fail on
a GPU machine.

1. :func:`collect_uses` walks the package's source with :mod:`ast` (nothing is imported) and
   records attribute chains rooted at CuPy: ``cupy``/``xp`` names, any ``.xp`` attribute
   (``self.xp``, ``backend.xp``), ``import cupy...`` aliases, ``importlib.import_module("cupy")``
   and ``import_module(f"{xp.__name__}.cuda.nccl")``, functions that return one of those (by
   name, across the package), local or ``self.`` aliases (``cublas = xp.cuda.cublas``),
   ``getattr(x, "name"[, default])`` / ``hasattr(x, "name")``, and ``getattr(x, n) for n in
   names`` where ``names`` is a tuple or list of strings in the same function.
   A call is a ``()`` segment: ``cupy.cuda.Device().synchronize`` is looked up on the class.
2. :func:`check_uses` resolves each chain with ``getattr`` on the installed CuPy, importing
   submodules as needed. Submodules whose C library is missing here (``cupy.cuda.nccl`` needs
   libnccl, ``cupy.cuda.cublas`` libcublas) are made importable by :func:`stub_missing_libraries`:
   for each CuPy extension module whose ``DT_NEEDED`` library cannot be loaded, a stub library
   with that soname, exporting every symbol the extension imports from it (``nm -D``, with
   their symbol versions) as an empty function, is built with ``gcc`` and loaded first. The
   real extension module then imports and its real names are checked; nothing is called.
   Stubs stay in the process: run the check in a subprocess (``python cupy_names.py``), as the
   tests do. Without gcc/nm/readelf, or with ``--no-stubs``, such chains are reported
   "unimportable", never passed.

Limits: the scan is static (a name computed at run time, or a module passed through a
container, is not seen); a chain through the result of a function call is followed only for the
functions in :data:`RETURNS` (others are reported "unchecked"); an attribute that a Python class
sets in ``__init__`` counts when the class's docstring documents it.

Run: ``python cupy_names.py [PACKAGE_DIR ...] [--json] [--no-stubs]``; exit status 1 if a name is
missing.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import ctypes
import glob
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Chain = tuple[str, ...]
CALL = "()"

#: what some CuPy functions return, so that attributes of the result can be checked too
#: (keys and values are chains joined with "."; a value names a class)
RETURNS = {
    "cupy.get_default_memory_pool": "cupy.cuda.MemoryPool",
    "cupy.get_default_pinned_memory_pool": "cupy.cuda.PinnedMemoryPool",
    "cupy.cuda.get_current_stream": "cupy.cuda.Stream",
    "cupy.cuda.alloc_pinned_memory": "cupy.cuda.PinnedMemoryPointer",
    "cupy.cuda.alloc": "cupy.cuda.MemoryPointer",
    "cupy.RawModule.().get_function": "cupy.RawKernel",
    "cupy.cuda.runtime.getDeviceProperties": "builtins.dict",
}


@dataclass(frozen=True)
class Use:
    """One place a package uses a CuPy attribute chain."""

    chain: Chain  # ("cupy", "cuda", "Device", "()", "synchronize")
    file: str
    line: int

    @property
    def name(self) -> str:
        return ".".join(self.chain)


@dataclass(frozen=True)
class Finding:
    """The outcome of resolving one chain against the installed CuPy."""

    chain: str
    status: str  # "ok", "missing", "unimportable" (library missing) or "unchecked"
    detail: str  # for "missing": the first segment that does not exist; else the reason
    where: tuple[str, ...]  # "file:line" of every use


# ------------------------------------------------------------------------------------------
# 1. Collecting uses from the source
# ------------------------------------------------------------------------------------------


class _Resolver:
    """Maps expressions to CuPy chains, given the aliases known at that point."""

    def __init__(self, returns: dict[str, Chain]) -> None:
        self.returns = returns  # function name -> chain its return value resolves to
        self.self_attrs: dict[str, Chain] = {}  # "comm" -> chain, within the current class

    def chain(self, node: ast.AST, env: dict[str, Chain]) -> Chain | None:
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            return ("cupy",) if node.id == "xp" else None
        if isinstance(node, ast.Attribute):
            if node.attr == "xp":  # self.xp, backend.xp, self.backend.xp: the array module
                return ("cupy",)
            is_self = isinstance(node.value, ast.Name) and node.value.id == "self"
            if is_self and node.attr in self.self_attrs:
                return self.self_attrs[node.attr]
            base = self.chain(node.value, env)
            return None if base is None else (*base, node.attr)
        if isinstance(node, ast.Call):
            return self._call(node, env)
        if isinstance(node, ast.IfExp):  # x if cond else y: whichever side is CuPy
            return self.chain(node.body, env) or self.chain(node.orelse, env)
        return None

    def _call(self, node: ast.Call, env: dict[str, Chain]) -> Chain | None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "import_module" and node.args:
            return self._module_name(node.args[0], env)
        if name in ("getattr", "hasattr") and isinstance(func, ast.Name) and len(node.args) >= 2:
            # getattr(x, "name"[, default]) is x.name (hasattr's result is a bool: no chain)
            base, attr = self.chain(node.args[0], env), node.args[1]
            if base is None or not isinstance(attr, ast.Constant) or name == "hasattr":
                return None
            return (*base, str(attr.value))
        if isinstance(func, ast.Name) and func.id in self.returns and func.id not in env:
            return self.returns[func.id]
        base = self.chain(func, env)
        return None if base is None else (*base, CALL)

    def _module_name(self, arg: ast.AST, env: dict[str, Chain]) -> Chain | None:
        """``"cupy.cuda.nccl"`` or ``f"{xp.__name__}.cuda.nccl"`` -> ("cupy", "cuda", "nccl")."""
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            parts = tuple(arg.value.split("."))
            return parts if parts[0] == "cupy" else None
        if isinstance(arg, ast.JoinedStr) and arg.values:
            head, *rest = arg.values
            if not (isinstance(head, ast.FormattedValue) and isinstance(head.value, ast.Attribute)):
                return None
            if head.value.attr != "__name__" or self.chain(head.value.value, env) != ("cupy",):
                return None
            tail = "".join(v.value for v in rest if isinstance(v, ast.Constant))
            return ("cupy", *filter(None, tail.split(".")))
        return None


def _imports(tree: ast.Module) -> dict[str, Chain]:
    """Names bound to CuPy modules by import statements anywhere in the file."""
    env: dict[str, Chain] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "cupy":
                    if alias.asname:
                        env[alias.asname] = tuple(alias.name.split("."))
                    else:
                        env["cupy"] = ("cupy",)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cupy":
            for alias in node.names:
                env[alias.asname or alias.name] = (*node.module.split("."), alias.name)
    return env


def _function_returns(trees: Sequence[ast.Module]) -> dict[str, Chain]:
    """Function name -> chain, for functions whose ``return`` resolves to CuPy (two passes,
    so a function returning another such function's result is found too)."""
    returns: dict[str, Chain] = {}
    for _ in range(2):
        resolver = _Resolver(returns)
        for tree in trees:
            env = _imports(tree)
            for fn in ast.walk(tree):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.Return) and node.value is not None:
                        chain = resolver.chain(node.value, env)
                        if chain is not None:
                            returns[fn.name] = chain
    return returns


def _assignments(scope: ast.AST) -> Iterator[tuple[ast.expr, ast.expr]]:
    """(target, value) of the plain assignments in ``scope``, in source order."""
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                yield target, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            yield node.target, node.value


def _string_tuples(scope: ast.AST) -> dict[str, tuple[str, ...]]:
    """Names bound in ``scope`` to a tuple or list of string constants, and the loop variables
    of comprehensions over such a name (``for n in names``)."""
    consts: dict[str, tuple[str, ...]] = {}
    for target, value in _assignments(scope):
        if isinstance(target, ast.Name) and isinstance(value, ast.Tuple | ast.List):
            items = [e.value for e in value.elts if isinstance(e, ast.Constant)]
            if items and len(items) == len(value.elts) and all(isinstance(v, str) for v in items):
                consts[target.id] = tuple(items)
    for node in ast.walk(scope):
        if not (isinstance(node, ast.comprehension) and isinstance(node.target, ast.Name)):
            continue
        if isinstance(node.iter, ast.Name) and node.iter.id in consts:
            consts[node.target.id] = consts[node.iter.id]
    return consts


def _named_lookups(
    scope: ast.AST, env: dict[str, Chain], resolver: _Resolver
) -> Iterator[tuple[ast.Call, Chain]]:
    """``hasattr(x, "name")``, and ``getattr``/``hasattr(x, n)`` with ``n`` running over a tuple
    of strings (:func:`_string_tuples`): one chain per name, when x is CuPy."""
    consts = _string_tuples(scope)
    for node in ast.walk(scope):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id not in ("getattr", "hasattr") or len(node.args) < 2:
            continue
        attr = node.args[1]
        if isinstance(attr, ast.Constant) and isinstance(attr.value, str):
            if node.func.id == "getattr":
                continue  # the resolver follows getattr with a constant itself
            names: tuple[str, ...] = (attr.value,)
        elif isinstance(attr, ast.Name) and attr.id in consts:
            names = consts[attr.id]
        else:
            continue
        base = resolver.chain(node.args[0], env)
        if base is not None:
            for name in names:
                yield node, (*base, name)


def _collect_file(path: Path, tree: ast.Module, returns: dict[str, Chain], root: Path) -> list[Use]:
    resolver = _Resolver(returns)
    module_env = _imports(tree)
    uses: list[Use] = []
    rel = str(path.relative_to(root.parent))

    def scan(scope: ast.AST, env: dict[str, Chain]) -> None:
        env = dict(env)
        for target, value in _assignments(scope):  # local aliases: cublas = xp.cuda.cublas
            chain = resolver.chain(value, env)
            if isinstance(target, ast.Name) and chain is not None:
                env[target.id] = chain
        found = []
        for node in ast.walk(scope):
            if isinstance(node, ast.Attribute | ast.Call):
                chain = resolver.chain(node, env)
                if chain is not None and len(chain) > 1:
                    found.append((node, chain))
        for node, chain in found:  # keep the longest chain at each place
            line = getattr(node, "lineno", 0)
            if not any(
                c[: len(chain)] == chain and c != chain for n, c in found if n.lineno == line
            ):
                uses.append(Use(chain, rel, line))
        for node, chain in _named_lookups(scope, env, resolver):
            uses.append(Use(chain, rel, node.lineno))

    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    in_class = {id(m) for c in classes for m in ast.walk(c)}
    for cls in classes:  # self.X = <CuPy> anywhere in the class: an alias in all its methods
        resolver.self_attrs = {}
        for target, value in _assignments(cls):
            chain = resolver.chain(value, module_env)
            is_self = isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
            if chain is not None and is_self and target.value.id == "self":  # type: ignore[union-attr]
                resolver.self_attrs[target.attr] = chain  # type: ignore[union-attr]
        scan(cls, module_env)
    resolver.self_attrs = {}
    for node in tree.body:
        if id(node) not in in_class:
            scan(node, module_env)
    return uses


def collect_uses(package_dir: str | Path) -> list[Use]:
    """Every CuPy attribute chain used in the ``.py`` files under ``package_dir``."""
    root = Path(package_dir).resolve()
    files = sorted(root.rglob("*.py"))
    trees = [ast.parse(f.read_text(encoding="utf-8"), str(f)) for f in files]
    returns = _function_returns(trees)
    uses = {
        u for f, t in zip(files, trees, strict=True) for u in _collect_file(f, t, returns, root)
    }
    return sorted(uses, key=lambda u: (u.name, u.file, u.line))


def cuda_specific(uses: Sequence[Use]) -> list[Use]:
    """The uses whose first attribute is not a NumPy name (those are checked elsewhere)."""
    import numpy

    return [
        u
        for u in uses
        if u.chain[0] == "cupy"
        and not u.chain[1].startswith("__")
        and (u.chain[1] in ("cuda", "_core") or not hasattr(numpy, u.chain[1]))
    ]


# ------------------------------------------------------------------------------------------
# 2. Making CuPy's extension modules importable without their libraries
# ------------------------------------------------------------------------------------------


def _cupy_extensions() -> list[str]:
    import cupy
    import cupy_backends

    roots = [os.path.dirname(cupy.__file__), os.path.dirname(cupy_backends.__file__)]
    return sorted(
        f for r in roots for f in glob.glob(os.path.join(r, "**", "*.so"), recursive=True)
    )


def _loadable(soname: str) -> bool:
    """Whether the real library loads: by soname, or as CuPy finds it (``cuda.pathfinder``,
    which also searches the nvidia-* pip wheels: e.g. libnvrtc must never be stubbed)."""
    try:
        ctypes.CDLL(soname)
        return True
    except OSError:
        pass
    try:
        from cuda import pathfinder

        pathfinder.load_nvidia_dynamic_lib(soname[3:].split(".so")[0])  # libnvrtc.so.13: nvrtc
        return True
    except Exception:
        return False


def _needed(extension: str) -> list[str]:
    out = subprocess.run(["readelf", "-d", extension], capture_output=True, text=True).stdout
    return [
        line.split("[", 1)[1].split("]", 1)[0] for line in out.splitlines() if "(NEEDED)" in line
    ]


def stub_missing_libraries() -> dict[str, int]:
    """Build and load a stub for each library CuPy's extensions need that cannot be loaded.

    Returns {soname: number of stubbed symbols}. Needs ``gcc``, ``nm`` and ``readelf``; returns
    {} without them. The stubs only satisfy the dynamic linker: calling into them would return
    0 and do nothing, so use them for reading module attributes only. They are built in a
    temporary folder, removed once they are loaded (the loader keeps them by soname).
    """
    if not all(shutil.which(tool) for tool in ("gcc", "nm", "readelf")):
        return {}
    with tempfile.TemporaryDirectory(prefix="cupy_stubs_") as workdir:
        built = _build_stubs(workdir)
        _import_backend_libs()
    return built


def _build_stubs(workdir: str) -> dict[str, int]:
    process = ctypes.CDLL(None)
    wanted: dict[str, dict[str, str]] = {}  # soname -> {symbol: version ("" if none)}
    for ext in _cupy_extensions():
        missing = [s for s in _needed(ext) if not _loadable(s)]
        if not missing:
            continue
        nm = subprocess.run(["nm", "-D", "--undefined-only", ext], capture_output=True, text=True)
        for token in nm.stdout.split():
            name, _, version = token.partition("@")
            if token in ("U", "w") or version.startswith(("GLIBC", "GCC", "CXXABI", "GLIBCXX")):
                continue
            if not version and hasattr(process, name):  # Python's C API and the like
                continue
            for soname in missing:  # versioned: its library; unversioned: every missing one
                if not version or version == soname:
                    wanted.setdefault(soname, {})[name] = version
    built = {}
    for soname, symbols in wanted.items():
        base = os.path.join(workdir, soname)
        with open(base + ".c", "w") as c_file:
            c_file.writelines(f"int {name}(void) {{ return 0; }}\n" for name in sorted(symbols))
        versions = sorted({v for v in symbols.values() if v})
        with open(base + ".map", "w") as map_file:
            map_file.write(
                "".join(f"{v} {{ global: *; }};\n" for v in versions) or "{ global: *; };\n"
            )
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-o", base, f"-Wl,-soname,{soname}",
             f"-Wl,--version-script={base}.map", base + ".c"],
            check=True,
        )  # fmt: skip
        ctypes.CDLL(base, mode=ctypes.RTLD_GLOBAL)  # later dlopen(soname) finds it by soname
        built[soname] = len(symbols)
    return built


def _import_backend_libs() -> None:
    """Import every ``cupy_backends.cuda.libs`` extension directly: ``cupy.cuda.cublas`` goes
    through ``cuda.pathfinder``, which looks for the real files; once the submodule is
    imported, the attribute lookup finds it without searching."""
    import cupy_backends.cuda.libs as libs

    for path in glob.glob(os.path.join(os.path.dirname(libs.__file__), "*.so")):
        name = os.path.basename(path).split(".")[0]
        with contextlib.suppress(Exception):
            importlib.import_module(f"cupy_backends.cuda.libs.{name}")


# ------------------------------------------------------------------------------------------
# 3. Resolving the chains
# ------------------------------------------------------------------------------------------


def _resolve_dotted(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def resolve(chain: Chain) -> tuple[str, str]:
    """("ok" | "missing" | "unimportable" | "unchecked", detail) for one chain."""
    obj: Any = importlib.import_module(chain[0])
    path = [chain[0]]
    for i, segment in enumerate(chain[1:], start=1):
        if segment == CALL:
            if i == len(chain) - 1:  # called, result unused here: the callee exists
                break
            if not inspect.isclass(obj):  # a function: its result is known only via RETURNS
                returned = RETURNS.get(".".join(path))
                if returned is None:
                    return "unchecked", f"the result of {'.'.join(path)}() (add it to RETURNS)"
                obj = _resolve_dotted(returned)
            path.append(CALL)  # a class: the instance's attributes are looked up on the class
            continue
        try:
            obj = getattr(obj, segment)
        except ImportError as exc:  # a lazily imported submodule whose library is missing
            return "unimportable", f"{'.'.join([*path, segment])}: {str(exc).splitlines()[0]}"
        except AttributeError:
            if path[-1] == CALL and inspect.isclass(obj):
                return _instance_attribute(obj, segment, ".".join([*path, segment]))
            if not inspect.ismodule(obj):
                return "missing", ".".join([*path, segment])
            try:
                obj = importlib.import_module(f"{obj.__name__}.{segment}")
            except ModuleNotFoundError:
                return "missing", ".".join([*path, segment])
            except ImportError as exc:
                return "unimportable", f"{'.'.join([*path, segment])}: {str(exc).splitlines()[0]}"
        path.append(segment)
        if inspect.ismodule(obj) and getattr(obj, "available", True) is False:
            return "unimportable", f"{'.'.join(path)}.available is False (library missing)"
    return "ok", ""


def _instance_attribute(cls: type, name: str, where: str) -> tuple[str, str]:
    """An attribute not on the class: certainly missing for an extension type without
    ``__dict__``; for other classes it may be set in ``__init__``: then it counts when the
    class documents it (CuPy's docstrings list attributes as ``~Class.name``)."""
    if not cls.__dictoffset__:  # type: ignore[attr-defined]
        return "missing", where
    if any(f".{name} " in (c.__doc__ or "") for c in cls.__mro__):
        return "ok", f"instance attribute documented by {cls.__name__}"
    return "unchecked", f"{where}: may be an instance attribute set in __init__"


def check_uses(uses: Sequence[Use]) -> list[Finding]:
    """Resolve every distinct chain of ``uses``; one Finding per chain, sorted by status."""
    by_chain: dict[Chain, list[str]] = {}
    for u in uses:
        by_chain.setdefault(u.chain, []).append(f"{u.file}:{u.line}")
    findings = []
    for chain, where in by_chain.items():
        status, detail = resolve(chain)
        findings.append(Finding(".".join(chain), status, detail, tuple(where)))
    order = {"missing": 0, "unimportable": 1, "unchecked": 2, "ok": 3}
    return sorted(findings, key=lambda f: (order[f.status], f.chain))


def main(argv: Sequence[str] | None = None) -> int:
    """Check the packages named (default: gpunn); exit status 1 if a name is missing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="*", help="package directories (default: gpunn's)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--no-stubs", action="store_true", help="no stub libraries")
    args = parser.parse_args(argv)
    if not args.packages:
        import gpunn

        args.packages = [os.path.dirname(gpunn.__file__)]
    import warnings

    import cupy

    warnings.simplefilter("ignore")  # CuPy warns about each library it cannot load
    uses = {package: cuda_specific(collect_uses(package)) for package in args.packages}
    stubs = {} if args.no_stubs else stub_missing_libraries()
    findings = {package: check_uses(package_uses) for package, package_uses in uses.items()}
    if args.json:
        report = {
            "cupy": cupy.__version__,
            "stubs": stubs,
            "packages": {p: [asdict(f) for f in found] for p, found in findings.items()},
        }
        print(json.dumps(report, indent=1))
    else:
        print(f"CuPy {cupy.__version__}; stub libraries: {stubs or 'none'}")
        for package, found in findings.items():
            print(f"{package}:")
            for f in found:
                print(f"  {f.status:12} {f.chain}  {f.detail}  ({', '.join(f.where[:3])})")
    missing = any(f.status == "missing" for found in findings.values() for f in found)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
