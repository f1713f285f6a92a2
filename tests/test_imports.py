"""Tests that only gpunn/backend.py imports CuPy and that the math modules never import NumPy.

The math receives ``xp`` from a Backend, so the same code runs on NumPy and CuPy. Host-side
modules (data files, checkpoints, benchmarks...) may use NumPy directly: they are the ones
pyproject.toml exempts from ruff's banned-import rule (TID251), which this test reads.
"""

from __future__ import annotations

import ast
import fnmatch
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gpunn"
# modules that hold the math: they must exist and must never import numpy or cupy
MATH = ("activations", "layer", "layers", "losses", "model", "optim", "testing")
ARRAY_LIBRARIES = ("numpy", "cupy", "cupyx", "cupy_backends")


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


def test_the_walk_finds_the_package():
    names = {rel(p) for p in sources()}
    assert "gpunn/backend.py" in names
    for module in MATH:
        assert f"gpunn/{module}.py" in names


def test_math_modules_are_not_exempt_in_pyproject():
    patterns = host_side_patterns()
    assert is_host_side(PACKAGE / "backend.py", patterns)
    for module in MATH:
        assert not is_host_side(PACKAGE / f"{module}.py", patterns), module


def test_only_backend_imports_cupy():
    offenders = [
        f"{rel(path)}:{line} imports {module}"
        for path in sources()
        if path.name != "backend.py" or path.parent != PACKAGE
        for module, line in static_imports(path)
        if module in ARRAY_LIBRARIES[1:]
    ]
    assert not offenders, offenders


def test_only_backend_imports_cupy_dynamically():
    offenders = [
        f"{rel(path)}:{line} imports {module} by name"
        for path in sources()
        if path.name != "backend.py" or path.parent != PACKAGE
        for module, line in dynamic_imports(path)
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
    assert {f"gpunn/{m}.py" for m in MATH} <= set(checked)
    assert not offenders, offenders


def test_the_scanner_sees_every_kind_of_import(tmp_path):
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
