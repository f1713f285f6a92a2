"""The package's import graph, read with ``ast`` (nothing is run): imports go one way only.

gpunn is built in floors (see ``gpunn/__init__.py``): the pure math at the bottom imports
nothing of gpunn; the fused kernels import the math they repeat; layers, losses and optimizers
import both; the model sits above them; training and checkpoints above the model; then the
public names of ``gpunn`` itself, and the tools (CLI, benchmarks, data sets) at the top.

These tests build the graph of every import statement in the package, *including imports
inside functions* (a late import that dodges a circle is still a circle), and fail on any
circle and on any import that points up a floor. The only exceptions are named below: the thin
``Sequential.fit``/``save``-style conveniences.

They also keep the array libraries where they belong: only ``gpunn/backend.py`` imports CuPy,
and the modules that hold the math never import NumPy (the host-side modules that may are the
ones pyproject.toml exempts from ruff's banned-import rule TID251).
"""

from __future__ import annotations

import ast
import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gpunn"
ARRAY_LIBRARIES = ("numpy", "cupy", "cupyx", "cupy_backends")

#: floor -> module prefixes, lowest floor first (a module takes the floor of its longest prefix)
FLOORS: dict[int, tuple[str, ...]] = {
    0: ("gpunn.math", "gpunn.backend", "gpunn._version", "gpunn.errors"),
    1: ("gpunn.kernels",),
    2: ("gpunn.nn",),
    3: ("gpunn.model",),
    4: ("gpunn.training", "gpunn.checkpoint"),
    5: ("gpunn",),  # the package itself: the public names, re-exported (exactly "gpunn")
    6: (
        "gpunn.cli",
        "gpunn.__main__",
        "gpunn.bench",
        "gpunn.datasets",
        "gpunn.info",
        "gpunn.plots",
        "gpunn.presets",
        "gpunn.testing",
        "gpunn.sklearn",
    ),
}

#: (importing module, function, imported module): the conveniences that may point up a floor.
#: Each is an import *inside* that function, so importing the model never imports training.
CONVENIENCES = {
    ("gpunn.model", "Sequential.fit", "gpunn.training"),
    ("gpunn.model", "Sequential.evaluate", "gpunn.training"),
    ("gpunn.model", "Sequential.predict", "gpunn.training"),
    ("gpunn.model", "Sequential.predict_proba", "gpunn.training"),
    ("gpunn.model", "Sequential.save", "gpunn.checkpoint"),
}

#: modules that hold the math or run it on either backend: never NumPy or CuPy imports
ARRAY_FREE = ("gpunn.math", "gpunn.kernels", "gpunn.nn", "gpunn.model", "gpunn.testing.gradients")


# ------------------------------------------------------------------------------------------
# The scanner
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    importer: str  # module name, e.g. "gpunn.nn.dense"
    imported: str  # module name (a module of the package where one matches)
    line: int
    function: str  # "" at module level, else the enclosing "Class.method" / "function"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package: Path) -> dict[str, Path]:
    """Module name -> file for every .py file of ``package``."""
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def _scopes(tree: ast.AST) -> dict[ast.AST, str]:
    """Each node -> the qualified name of the function it sits in ("" at module level)."""
    where: dict[ast.AST, str] = {}

    def visit(node: ast.AST, scope: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                where[child] = scope
                visit(child, name, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                where[child] = scope
                visit(child, scope, f"{prefix}{child.name}.")
            else:
                where[child] = scope
                visit(child, scope, prefix)

    visit(tree, "", "")
    return where


def imports_of(name: str, path: Path, modules: set[str]) -> list[Import]:
    """Every import of a module in ``modules`` made by file ``path`` (module ``name``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    scopes = _scopes(tree)
    is_package = path.name == "__init__.py"
    found = []

    def add(target: str, node: ast.AST) -> None:
        found.append(Import(name, target, node.lineno, scopes.get(node, "")))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:
                    add(full, node)  # a submodule: from gpunn.nn import dense
                elif base in modules:
                    add(base, node)  # a name defined in (or re-exported by) module base
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            dynamic = called in ("import_module", "__import__") and isinstance(arg, ast.Constant)
            if dynamic and arg.value in modules:
                add(arg.value, node)
    return [i for i in found if i.imported != i.importer]


def import_graph(package: Path) -> list[Import]:
    modules = package_modules(package)
    return [i for name, path in modules.items() for i in imports_of(name, path, set(modules))]


def find_cycle(edges: list[tuple[str, str]]) -> list[str] | None:
    """One circle in the directed graph as [a, b, ..., a], or None."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def floor_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, floor)
    for floor, prefixes in FLOORS.items():
        for prefix in prefixes:
            below = prefix != "gpunn" and module.startswith(prefix + ".")
            if (module == prefix or below) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), floor)
    return None if best is None else best[1]


def is_convenience(i: Import) -> bool:
    return any(
        i.importer == a and i.function == f and (i.imported == b or i.imported.startswith(b + "."))
        for a, f, b in CONVENIENCES
    )


GRAPH = import_graph(PACKAGE)


# ------------------------------------------------------------------------------------------
# The package's graph
# ------------------------------------------------------------------------------------------


def test_the_scan_sees_the_package_and_its_late_imports():
    importers = {i.importer for i in GRAPH}
    assert {"gpunn", "gpunn.model", "gpunn.nn.dense", "gpunn.kernels.activation"} <= importers
    late = {(i.importer, i.function, i.imported) for i in GRAPH if i.function}
    assert ("gpunn.model", "Sequential.save", "gpunn.checkpoint") in late


def test_no_import_circle_in_the_package():
    edges = [(i.importer, i.imported) for i in GRAPH if not is_convenience(i)]
    cycle = find_cycle(edges)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_every_module_has_a_floor():
    unplaced = sorted({m for m in package_modules(PACKAGE) if floor_of(m) is None})
    assert not unplaced, f"place these modules in FLOORS: {unplaced}"


def test_imports_run_downwards():
    upward = [
        f"{i.importer}:{i.line} ({i.function or 'module level'}) imports {i.imported}, "
        f"floor {floor_of(i.imported)} above {floor_of(i.importer)}"
        for i in GRAPH
        if floor_of(i.imported) > floor_of(i.importer) and not is_convenience(i)
    ]
    assert not upward, upward


def test_the_conveniences_are_late_and_only_those():
    conveniences = [i for i in GRAPH if is_convenience(i)]
    assert {(i.importer, i.function, i.imported) for i in conveniences} == CONVENIENCES
    assert all(i.function for i in conveniences)  # never at module level


def test_the_pure_math_imports_nothing_from_gpunn():
    offenders = [
        f"{i.importer}:{i.line} imports {i.imported}"
        for i in GRAPH
        if i.importer.startswith("gpunn.math") and not i.imported.startswith("gpunn.math")
    ]
    assert not offenders, offenders


def test_nothing_below_the_kernels_imports_them():
    offenders = [
        f"{i.importer}:{i.line} imports {i.imported}"
        for i in GRAPH
        if i.imported.startswith("gpunn.kernels") and floor_of(i.importer) < 1
    ]
    assert not offenders, offenders


def test_each_folder_says_what_it_holds():
    for init in sorted(PACKAGE.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 8, f"{init} needs a docstring saying what it holds"


# ------------------------------------------------------------------------------------------
# The scanner itself: it must find what it is meant to find
# ------------------------------------------------------------------------------------------


def make_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_scanner_finds_a_circle_made_by_a_late_import(tmp_path):
    root = make_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import thing\n",
            "b.py": "def thing():\n    from pkg import a\n    return a\n",
            "c.py": "from . import a\nimport pkg.b\nimportlib.import_module('pkg.a')\n",
        },
    )
    graph = import_graph(root)
    edges = {(i.importer, i.imported, i.function) for i in graph}
    assert edges == {
        ("pkg.a", "pkg.b", ""),
        ("pkg.b", "pkg.a", "thing"),
        ("pkg.c", "pkg.a", ""),
        ("pkg.c", "pkg.b", ""),
    }
    assert find_cycle([(i.importer, i.imported) for i in graph]) == ["pkg.a", "pkg.b", "pkg.a"]
    assert find_cycle([("x", "y"), ("y", "z"), ("x", "z")]) is None


def test_the_scanner_names_the_enclosing_method(tmp_path):
    root = make_package(
        tmp_path,
        {
            "__init__.py": "",
            "m.py": "class K:\n    def save(self):\n        from pkg import n\n",
            "n.py": "",
        },
    )
    assert [(i.function, i.imported) for i in import_graph(root)] == [("K.save", "pkg.n")]


def test_floors_go_to_the_longest_prefix():
    assert floor_of("gpunn.math.dense") == 0
    assert floor_of("gpunn.kernels.spec") == 1
    assert floor_of("gpunn.training.loop") == 4
    assert floor_of("gpunn") == 5
    assert floor_of("gpunn.cli") == 6
    assert floor_of("gpunn.unplaced") is None
    assert floor_of("elsewhere") is None


# ------------------------------------------------------------------------------------------
# Array libraries: only the backend imports CuPy; the math imports neither
# ------------------------------------------------------------------------------------------


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def static_imports(path: Path) -> set[tuple[str, int]]:
    """(top-level module, line) for every import statement, including ones inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def dynamic_imports(path: Path) -> set[tuple[str, int]]:
    """(module, line) for import_module("x") / __import__("x") calls with a constant name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        arg = node.args[0]
        is_name = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
        if name in ("import_module", "__import__") and is_name:
            found.add((arg.value.split(".")[0], node.lineno))
    return found


def host_side_patterns() -> list[str]:
    """Paths that pyproject.toml lets import numpy (per-file ignores of TID251)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    ignores = config["tool"]["ruff"]["lint"]["per-file-ignores"]
    return [pattern for pattern, rules in ignores.items() if "TID251" in rules]


def is_host_side(path: Path, patterns: list[str]) -> bool:
    name = rel(path)
    return any(
        fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name, pattern.replace("/**", "/*"))
        for pattern in patterns
    )


def array_free_files() -> list[Path]:
    return [
        path
        for name, path in package_modules(PACKAGE).items()
        if any(name == p or name.startswith(p + ".") for p in ARRAY_FREE)
    ]


def test_the_array_free_modules_exist_and_are_not_exempt_in_pyproject():
    patterns = host_side_patterns()
    files = {rel(p) for p in array_free_files()}
    assert {"gpunn/math/dense.py", "gpunn/nn/layer.py", "gpunn/model.py"} <= files
    assert is_host_side(PACKAGE / "backend.py", patterns)
    # the CuPy stand-in of the tests (floor 6, a tool) is NumPy underneath and imports no CuPy
    assert is_host_side(PACKAGE / "testing" / "fake_cupy.py", patterns)
    for path in array_free_files():
        assert not is_host_side(path, patterns), rel(path)


def test_only_backend_imports_cupy():
    offenders = [
        f"{rel(path)}:{line} imports {module}"
        for path in sources()
        if path != PACKAGE / "backend.py"
        for module, line in static_imports(path) | dynamic_imports(path)
        if module in ARRAY_LIBRARIES[1:]
    ]
    assert not offenders, offenders


def test_math_modules_import_neither_numpy_nor_cupy():
    patterns = host_side_patterns()
    checked, offenders = [], []
    for path in sources():
        if is_host_side(path, patterns):
            continue
        checked.append(rel(path))
        for module, line in static_imports(path) | dynamic_imports(path):
            if module in ARRAY_LIBRARIES:
                offenders.append(f"{rel(path)}:{line} imports {module}")
    assert {rel(p) for p in array_free_files()} <= set(checked)
    assert not offenders, offenders


def test_the_array_scanner_sees_every_kind_of_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import numpy as np\n"
        "from cupy import cuda\n"
        "import os.path\n"
        "def f():\n"
        "    import cupyx.scipy\n"
        "    return importlib.import_module('cupy')\n"
        "from . import sibling\n"
    )
    assert static_imports(sample) == {("numpy", 1), ("cupy", 2), ("os", 3), ("cupyx", 5)}
    assert dynamic_imports(sample) == {("cupy", 6)}
