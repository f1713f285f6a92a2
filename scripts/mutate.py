"""Mutation testing: change the code one small thing at a time and check that a test notices.

A *mutant* is one module of gpunn with a single change: an operator swapped (``<`` for ``<=``,
``+`` for ``-``, ``and`` for ``or``), a number moved by one, a ``not`` dropped, a condition
negated, a slice bound shifted, or a statement dropped (a call, a ``raise``, an assignment to an
attribute or an element, ``break``). For every mutant the module's own test files (``TARGETS``)
run against it; the mutant is *killed* when they fail and *survives* when they stay green,
which means the tests would not notice that change. Every change is made in a scratch copy of
the project, never in the working tree. Docstrings, annotations, decorators and message text
(f-strings) are left alone, and so are the few functions in ``EXCLUDED`` (with the reason).

Each mutant runs in a child forked from this process, which has imported the test
dependencies once (NumPy, pytest, torch, ...), so a mutant costs only its tests: POSIX only.

Running every test of a module's files on each of its ~1,400 mutants would take most of a day
on two cores, so the tests are chosen per mutant, and every verdict still comes from tests that
ran on that mutant:

1. each test file runs once on the unmutated code, recording (call events only) which tests
   call which function of the modules in scope;
2. a mutant runs the tests that call its function (those that start a subprocess, which the
   recording cannot see into, always; a function also called at import: all tests), with
   ``-x``. When they fail, the same selection is run once on the unmutated code: the kill
   counts only if it passes there;
3. a mutant those tests leave green runs again with *all* of its test files, so a survivor is
   one that the whole of its files let through.

    nice -n 19 .venv/bin/python scripts/mutate.py -j 2                  # the whole scope
    nice -n 19 .venv/bin/python scripts/mutate.py gpunn/checkpoint.py   # one module
    .venv/bin/python scripts/mutate.py --list gpunn/math/dense.py       # show the mutants

Some survivors are *equivalent*: the change does not alter what the code does (``x[:n]`` for
``x[:n + 1]`` when ``x`` has n items). Each is listed, with the reason, in
``tests/mutation/equivalent.md`` under its id, and counted apart. The kill rate is

    (killed + timed out) / (mutants - equivalent survivors)

The results (every mutant with its status) go to ``mutation-results/results.json`` and the
survivors that are not known to be equivalent to ``mutation-results/survivors.md``.
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import copy
import functools
import hashlib
import importlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: module -> the test files that mirror it (run, and only these, on each of its mutants). The
#: fit loop is also tested where its pieces are: its argument checks in test_validation, its
#: callback hooks in test_callbacks, its printing in test_progress.
TARGETS: dict[str, tuple[str, ...]] = {
    "gpunn/math/activations.py": ("tests/test_activations.py",),
    "gpunn/math/dense.py": ("tests/test_layers.py",),
    "gpunn/math/dropout.py": ("tests/test_layers.py",),
    "gpunn/math/losses.py": ("tests/test_losses.py", "tests/test_losses_weighted.py"),
    "gpunn/math/optim.py": ("tests/test_optim.py",),
    "gpunn/math/network.py": ("tests/test_math_network.py",),
    "gpunn/math/conv.py": ("tests/test_math_conv.py",),
    "gpunn/math/pool.py": ("tests/test_math_conv.py",),
    "gpunn/math/conv_pool.py": ("tests/test_math_conv.py",),
    "gpunn/math/batchnorm.py": ("tests/test_math_conv.py",),
    "gpunn/math/flatten.py": ("tests/test_math_conv.py",),
    "gpunn/checkpoint.py": ("tests/test_checkpoint.py", "tests/test_conv_checkpoint.py"),
    "gpunn/training/loop.py": (
        "tests/test_training.py",
        "tests/test_validation.py",
        "tests/test_callbacks.py",
        "tests/test_progress.py",
        "tests/test_conv_layers.py",  # input shapes learnt and checked, feature-map outputs
    ),
    "gpunn/training/callbacks.py": ("tests/test_callbacks.py",),
    "gpunn/training/validation.py": ("tests/test_validation.py",),
    "gpunn/training/progress.py": ("tests/test_progress.py",),
    "gpunn/training/distributed.py": ("tests/test_distributed.py",),
}

#: (module, function or class) left unmutated, and why
EXCLUDED: dict[tuple[str, str], str] = {
    ("gpunn/training/distributed.py", "_rank_info"): "asks a real GPU for its PCI bus id",
    ("gpunn/training/distributed.py", "_nccl_module"): "imports cupy.cuda.nccl (needs CUDA)",
    ("gpunn/training/distributed.py", "_gpu_count"): "counts real CUDA devices",
    ("gpunn/training/distributed.py", "rank_backend"): (
        "picks a real GPU per rank; its arithmetic is device_spec_for_rank, which is mutated"
    ),
}

EQUIVALENT_FILE = ROOT / "tests" / "mutation" / "equivalent.md"
#: an entry of EQUIVALENT_FILE: "- `<id>` <module> `<function>`: <change>: <why>"
EQUIVALENT_ENTRY = re.compile(r"^- `([0-9a-f]{10})` ([\w/.]+\.py)", re.MULTILINE)
NO_MUTATE = "no mutate"  # a line carrying this comment is left alone
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".benchmarks",
    "mutation-results",
    "build",
    "dist",
    "out",
)

# ------------------------------------------------------------------------------------------
# Making mutants
# ------------------------------------------------------------------------------------------

BINARY_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
}
COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}


@dataclass(frozen=True)
class Mutant:
    """One single-point change: where it is, what it does, and a stable id."""

    id: str  # 10 hex digits, stable while the line, the function and the change stay the same
    module: str  # "gpunn/checkpoint.py"
    line: int
    function: str  # enclosing "Class.method" ("" at module level)
    change: str  # "`n > MAX_HEADER` -> `n >= MAX_HEADER`"
    index: int  # position in the module's mutant list (how it is applied)


@dataclass
class _Site:
    node: ast.AST  # the node to change (in the tree the site was found in)
    parent: ast.AST
    field: str
    slot: int | None  # index in parent.field when that is a list
    function: str
    make: Callable[[ast.AST], ast.AST]  # the changed node, from a deep copy of the original
    what: str  # "op" for an operator change, "drop" for a dropped statement, ...


def _short(node: ast.AST, limit: int = 70) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_docstring(node: ast.AST) -> bool:
    """A docstring, or the ``...`` body of a stub: nothing to change there."""
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)


def _plus_one(node: ast.expr) -> ast.expr:
    return ast.BinOp(left=node, op=ast.Add(), right=ast.Constant(1))


class _Finder:
    """Walks a module in a fixed order and lists every place a mutant can be made."""

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines()
        self.sites: list[_Site] = []

    def skip_line(self, node: ast.AST) -> bool:
        line = getattr(node, "lineno", None)
        return line is not None and NO_MUTATE in self.lines[line - 1]

    def walk(self, node: ast.AST, function: str = "") -> None:
        for field, value in ast.iter_fields(node):
            if field in ("annotation", "returns", "decorator_list", "type_comment"):
                continue  # annotations and decorators are not behaviour we test
            if isinstance(value, list):
                for slot, child in enumerate(value):
                    if isinstance(child, ast.AST):
                        self.visit(child, node, field, slot, function)
            elif isinstance(value, ast.AST):
                self.visit(value, node, field, None, function)

    def visit(
        self, node: ast.AST, parent: ast.AST, field: str, slot: int | None, function: str
    ) -> None:
        if isinstance(node, ast.JoinedStr) or _is_docstring(node):
            return  # message text and docstrings
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            function = f"{function}.{node.name}" if function else node.name
        if not self.skip_line(node):
            for what, make in self.changes(node):
                self.sites.append(_Site(node, parent, field, slot, function, make, what))
        self.walk(node, function)

    def changes(self, node: ast.AST) -> Iterator[tuple[str, Callable[[ast.AST], ast.AST]]]:
        """(kind, function making the changed node from a copy of ``node``) for each mutant."""
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BINARY_SWAPS:

            def swap(n: ast.AST) -> ast.AST:
                n.op = BINARY_SWAPS[type(n.op)]()
                return n

            yield "op", swap
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in COMPARE_SWAPS:

                    def cmp(n: ast.AST, i: int = i) -> ast.AST:
                        n.ops[i] = COMPARE_SWAPS[type(n.ops[i])]()
                        return n

                    yield "op", cmp
        if isinstance(node, ast.BoolOp):

            def boolean(n: ast.AST) -> ast.AST:
                n.op = ast.Or() if isinstance(n.op, ast.And) else ast.And()
                return n

            yield "op", boolean
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            yield "unary", lambda n: n.operand
        if isinstance(node, ast.Constant) and not isinstance(node.value, str):
            if isinstance(node.value, bool):
                yield "constant", lambda n: ast.Constant(not n.value)
            elif isinstance(node.value, (int, float)):
                yield "constant", lambda n: ast.Constant(n.value + 1)
        if isinstance(node, (ast.If, ast.While, ast.IfExp)) and not isinstance(
            node.test, (ast.Compare, ast.BoolOp, ast.UnaryOp)
        ):

            def negate(n: ast.AST) -> ast.AST:
                n.test = ast.UnaryOp(op=ast.Not(), operand=n.test)
                return n

            yield "negate", negate
        if isinstance(node, ast.Slice):
            for bound in ("lower", "upper"):
                value = getattr(node, bound)
                if value is not None and not isinstance(value, ast.Constant):

                    def shift(n: ast.AST, bound: str = bound) -> ast.AST:
                        setattr(n, bound, _plus_one(getattr(n, bound)))
                        return n

                    yield "slice", shift
        droppable = (ast.Expr, ast.Raise, ast.AugAssign, ast.Break, ast.Continue)
        if isinstance(node, droppable) or (
            isinstance(node, ast.Assign)
            and any(isinstance(t, (ast.Attribute, ast.Subscript)) for t in node.targets)
        ):
            yield "drop", lambda n: ast.Pass()
        returns_none = isinstance(node, ast.Return) and (
            node.value is None
            or (isinstance(node.value, ast.Constant) and node.value.value is None)
        )
        if isinstance(node, ast.Return) and not returns_none:
            yield "drop", lambda n: ast.Return(value=ast.Constant(None))


def _sites(source: str) -> list[_Site]:
    finder = _Finder(source)
    finder.walk(ast.parse(source))
    return finder.sites


def _describe(site: _Site, line: str) -> str:
    before = _short(site.node)
    if site.what == "drop":
        return f"drop `{before}`" if isinstance(site.node, ast.stmt) else before
    after = _short(site.make(copy.deepcopy(site.node)))
    if isinstance(site.node, (ast.If, ast.While)):  # show the condition, not the whole block
        before, after = _short(site.node.test), _short(ast.UnaryOp(ast.Not(), site.node.test))
    if isinstance(site.node, ast.Constant):  # a bare number says little: name its line
        text = line.split("#")[0].strip()
        return f"`{before}` -> `{after}` in `{text if len(text) <= 60 else text[:57] + '...'}`"
    return f"`{before}` -> `{after}`"


def mutants(module: str, source: str) -> list[Mutant]:
    """Every mutant of ``module`` (path relative to the project), in a fixed order."""
    lines = source.splitlines()
    seen: dict[str, int] = {}
    result = []
    for index, site in enumerate(_sites(source)):
        if any((module, name) in EXCLUDED for name in (site.function, site.function.split(".")[0])):
            continue
        line = getattr(site.node, "lineno", 0)
        change = _describe(site, lines[line - 1])
        key = f"{module}|{site.function}|{lines[line - 1].strip()}|{change}"
        seen[key] = seen.get(key, 0) + 1  # the same change twice on one line: tell them apart
        digest = hashlib.sha1(f"{key}|{seen[key]}".encode()).hexdigest()[:10]
        result.append(Mutant(digest, module, line, site.function, change, index))
    return result


def mutated_source(source: str, index: int) -> str:
    """``source`` with mutant ``index`` applied (the whole module, re-written by ast.unparse)."""
    tree = ast.parse(source)
    finder = _Finder(source)
    finder.walk(tree)
    site = finder.sites[index]
    new = site.make(copy.deepcopy(site.node))
    ast.copy_location(new, site.node)
    if site.slot is None:
        setattr(site.parent, site.field, new)
    else:
        getattr(site.parent, site.field)[site.slot] = new
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


# ------------------------------------------------------------------------------------------
# Running the tests on each mutant
# ------------------------------------------------------------------------------------------


@dataclass
class Result:
    id: str
    module: str
    line: int
    function: str
    change: str
    status: str  # killed, survived, equivalent (a survivor listed as such), timeout
    seconds: float
    tests: str  # "selected" (the tests calling its function), "all", or "earlier" (--skip-killed)


#: imported once by this process before it forks one child per mutant, so a child starts
#: without paying for them again (gpunn itself is imported afresh, from the scratch copy, in
#: each child). mpi4py.MPI is left out on purpose: importing it starts MPI.
PRELOAD = (
    *("numpy", "pytest", "hypothesis", "safetensors.numpy", "rich.progress", "torch", "cupy"),
    *("threadpoolctl", "unittest.mock", "urllib.request", "inspect", "asyncio", "subprocess"),
)


def _preload() -> None:
    for name in PRELOAD:
        with contextlib.suppress(Exception):  # optional ones (torch, cupy) may be missing
            importlib.import_module(name)


def _function_of(qualname: str) -> str:
    """A code object's ``co_qualname`` as a mutant names its function: ``A.f.<locals>.g`` ->
    ``A.f.g``; lambdas, comprehensions and generator expressions belong to their function."""
    return ".".join(part for part in qualname.split(".") if not part.startswith("<"))


class _Tracer:
    """A pytest plugin recording, for each test, which functions of the scope modules it calls.

    Only call events are traced (no line events): the cost is one Python call per function
    call. Calls made outside any test (imports, collection) are recorded under "" and make a
    function "always run": its mutants get every test. Tests that start a subprocess (MPI
    jobs, the CLI) run code this process cannot see, so they are run for every mutant.
    """

    def __init__(self, scratch: Path, modules: list[str]) -> None:
        self.files = {str((scratch / m).resolve()): m for m in modules}
        self.test = ""
        self.calls: dict[str, dict[str, set[str]]] = {m: {} for m in modules}
        self.spawning: set[str] = set()

    def trace(self, frame: Any, event: str, arg: Any) -> None:
        module = self.files.get(frame.f_code.co_filename)
        if module is not None:
            name = _function_of(frame.f_code.co_qualname)
            self.calls[module].setdefault(name, set()).add(self.test)

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        self.order = [item.nodeid for item in items]

    def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> None:
        self.test = item.nodeid  # set-up, call and tear-down of this test

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        self.test = ""

    def start(self) -> None:
        import subprocess
        import threading

        original = subprocess.Popen.__init__
        tracer = self

        def popen(self: Any, *args: Any, **kwargs: Any) -> None:
            tracer.spawning.add(tracer.test)
            original(self, *args, **kwargs)

        subprocess.Popen.__init__ = popen  # type: ignore[method-assign]
        sys.settrace(self.trace)
        threading.settrace(self.trace)


class _Select:
    """A pytest plugin keeping only the tests named (in their file order)."""

    def __init__(self, keep: frozenset[str]) -> None:
        self.keep = keep

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        items[:] = [item for item in items if item.nodeid in self.keep]


def _child(scratch: Path, job: _Job) -> int:
    """In the forked child: run pytest on the job's tests against the scratch copy."""
    os.setsid()  # a process group of its own: a timeout ends mpiexec and its ranks too
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.chdir(scratch)
    sys.path.insert(0, str(scratch))  # before the installed gpunn
    os.environ.update(PYTHONPATH=str(scratch), PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg")
    if not job.tests:  # the check that the scratch copy is what gets imported
        import gpunn

        return 0 if Path(gpunn.__file__).resolve().is_relative_to(scratch.resolve()) else 4
    import pytest

    plugins: list[Any] = []
    if job.trace is not None:
        tracer = _Tracer(scratch, job.trace)
        tracer.start()
        plugins.append(tracer)
    if job.select is not None:
        plugins.append(_Select(job.select))
    code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *job.tests], plugins=plugins))
    if job.trace is not None and code == 0:
        sys.settrace(None)
        record = {
            "calls": {m: {f: sorted(t) for f, t in c.items()} for m, c in tracer.calls.items()},
            "spawning": sorted(tracer.spawning),
            "tests": tracer.order,
        }
        Path(job.trace_out).write_text(json.dumps(record), encoding="utf-8")
    return code


@dataclass
class _Job:
    """One pytest run in a scratch copy: which module to write (and with what), which tests."""

    tag: Any  # what the caller wants back with the outcome
    tests: tuple[str, ...]
    timeout: float
    module: str | None = None  # write ``source`` to this module first ...
    source: Callable[[], str] | None = None  # ... (None: the module as the baseline has it)
    select: frozenset[str] | None = None  # run only these node ids (None: all)
    trace: list[str] | None = None  # record calls into these modules (a _Tracer run)
    trace_out: str = ""


class _Pool:
    """Runs jobs in forked children, at most one per scratch copy at a time."""

    def __init__(self, scratches: list[Path], baseline: dict[str, str]) -> None:
        self.scratches = scratches
        self.baseline = baseline  # module -> the source every scratch holds when not mutated
        self.dirty: list[str | None] = [None] * len(scratches)  # module each scratch has changed
        self.running: dict[int, tuple[int, _Job, float]] = {}  # pid -> (scratch, job, start)

    def _start(self, slot: int, job: _Job) -> None:
        scratch = self.scratches[slot]
        if self.dirty[slot] is not None:
            module = self.dirty[slot]
            (scratch / module).write_text(self.baseline[module], encoding="utf-8")
            self.dirty[slot] = None
        if job.module is not None and job.source is not None:
            (scratch / job.module).write_text(job.source(), encoding="utf-8")
            self.dirty[slot] = job.module
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                code = _child(scratch, job)
            finally:
                os._exit(code)
        self.running[pid] = (slot, job, time.perf_counter())

    def run(self, jobs: collections.deque[_Job]) -> Iterator[tuple[_Job, str, float]]:
        """Yield (job, "passed" | "failed" | "timeout", seconds) as each job ends; jobs added
        to ``jobs`` meanwhile are run too."""
        while True:
            busy = {slot for slot, _, _ in self.running.values()}
            while jobs and len(busy) < len(self.scratches):
                slot = min(set(range(len(self.scratches))) - busy)
                self._start(slot, jobs.popleft())
                busy.add(slot)
            if not self.running:
                return
            for pid, (_slot, job, start) in list(self.running.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                seconds = time.perf_counter() - start
                if done:
                    del self.running[pid]
                    code = os.waitstatus_to_exitcode(status)
                    yield job, ("passed" if code == 0 else "failed"), seconds
                elif seconds > job.timeout:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    del self.running[pid]
                    yield job, "timeout", seconds
            time.sleep(0.02)


def _equivalent_ids() -> dict[str, str]:
    """id -> module of every mutant listed as equivalent."""
    if not EQUIVALENT_FILE.exists():
        return {}
    return dict(EQUIVALENT_ENTRY.findall(EQUIVALENT_FILE.read_text(encoding="utf-8")))


def _warn_stale(equivalent: dict[str, str], modules: list[str], ids: set[str]) -> None:
    """Entries of EQUIVALENT_FILE whose mutant no longer exists (its line was edited)."""
    stale = [i for i, module in equivalent.items() if module in modules and i not in ids]
    if stale:
        print(
            f"note: {len(stale)} entries of {EQUIVALENT_FILE.name} match no mutant any more "
            f"(edited lines; re-check them): {' '.join(stale)}"
        )


def _selection(function: str, record: dict[str, Any], module: str) -> frozenset[str] | None:
    """The tests that call ``function`` of ``module`` (or a function inside it), plus those
    that start subprocesses; None (every test) when it also runs outside tests (at import)."""
    calls = record["calls"][module]
    names = [f for f in calls if f == function or f.startswith(function + ".")]
    if not function or any("" in calls[f] for f in names):
        return None
    chosen = {t for f in names for t in calls[f]} | set(record["spawning"])
    return frozenset(chosen)


def run(modules: list[str], args: argparse.Namespace) -> list[Result]:
    """Test every mutant of ``modules``; prints one line per mutant as it goes.

    First each test file runs once, unmutated, with every function call into the modules
    recorded per test (this is also the check that the tests pass on the re-written modules).
    Then each mutant runs only the tests that call its function (``--all-tests``: every test
    of its files); a mutant those leave green runs again with all of its files' tests, so a
    survivor is one the whole of its test files let through. A kill by a selection counts
    only once that same selection has passed on the unmutated code.
    """
    equivalent = _equivalent_ids()
    previous: dict[str, str] = {}
    if args.skip_killed:
        for r in json.loads(Path(args.skip_killed).read_text())["mutants"]:
            previous[r["id"]] = r["status"]
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gpunn-mutate-"))
    results: dict[str, Result] = {}
    seen_ids: set[str] = set()
    sources = {m: (ROOT / m).read_text(encoding="utf-8") for m in modules}
    # every mutant is written by ast.unparse: the scratch copies hold the unmutated modules
    # written the same way, and the tests must pass on those
    baseline = {m: ast.unparse(ast.parse(s)) + "\n" for m, s in sources.items()}
    try:
        scratches = []
        for k in range(args.jobs):
            scratch = work / f"copy{k}"
            shutil.copytree(ROOT, scratch, ignore=COPY_IGNORE)
            for m, text in baseline.items():
                (scratch / m).write_text(text, encoding="utf-8")
            scratches.append(scratch)
        sys.dont_write_bytecode = True  # a mutant must never be run from a stale .pyc
        _preload()
        pool = _Pool(scratches, baseline)
        check = _Job("import", (), args.max_seconds)
        if next(pool.run(collections.deque([check])))[1] != "passed":
            raise SystemExit("mutate: the tests would not import gpunn from the scratch copy")

        # 1. each test file once, unmutated, recording which test calls what
        files = sorted({t for m in modules for t in TARGETS[m]})
        traces: dict[str, dict[str, Any]] = {}
        base_seconds: dict[str, float] = {}
        trace_jobs = [
            _Job(f, (f,), args.max_seconds, trace=modules, trace_out=str(work / f"{i}.json"))
            for i, f in enumerate(files)
        ]
        for job, outcome, seconds in pool.run(collections.deque(trace_jobs)):
            if outcome != "passed":
                raise SystemExit(f"mutate: {job.tag} does not pass on the unmutated modules")
            traces[job.tag] = json.loads(Path(job.trace_out).read_text(encoding="utf-8"))
            base_seconds[job.tag] = seconds
            print(f"{job.tag}: {len(traces[job.tag]['tests'])} tests, {seconds:.1f} s traced")

        # 2. the mutants
        todo: list[tuple[Mutant, frozenset[str] | None]] = []
        for module in modules:
            every = mutants(module, sources[module])
            seen_ids.update(m.id for m in every)
            for m in every:
                if args.only and m.id not in args.only:
                    continue
                if previous.get(m.id) == "killed":  # tests only get added: still killed
                    results[m.id] = Result(
                        m.id, m.module, m.line, m.function, m.change, "killed", 0.0, "earlier"
                    )
                    continue
                select: frozenset[str] | None = None
                if not args.all_tests:
                    picked = [_selection(m.function, traces[f], module) for f in TARGETS[module]]
                    select = None if None in picked else frozenset().union(*picked)
                todo.append((m, select))
            print(
                f"{module}: {len(every)} mutants, {sum(x[0].module == module for x in todo)} to run"
            )

        def timeout_for(m: Mutant) -> float:
            return args.timeout_factor * sum(base_seconds[f] for f in TARGETS[m.module]) + 30

        def job_for(m: Mutant, select: frozenset[str] | None, stage: str, limit: float) -> _Job:
            if select is not None and not select:  # no test calls it: all of its tests
                select, stage = None, "all"
            source = functools.partial(mutated_source, sources[m.module], m.index)
            return _Job((m, select, stage), _files(m, select), limit, m.module, source, select)

        verified: dict[frozenset[str], bool] = {}  # selection -> passes on unmutated code
        waiting: dict[frozenset[str], list[tuple[Mutant, float]]] = {}  # kills to confirm
        count = [len(results), len(results) + len(todo)]

        def record(m: Mutant, status: str, seconds: float, tests: str) -> None:
            _record(results, m, status, seconds, tests, equivalent)
            count[0] += 1
            if count[0] % 25 == 0:  # the results so far, should the run be cut short
                elapsed = time.perf_counter() - started
                write_report(list(results.values()), args.out, elapsed, quiet=True)
            r = results[m.id]
            print(
                f"  [{count[0]}/{count[1]}] {r.status:<10} {seconds:5.1f}s {tests:<8} {m.id}  "
                f"{m.module}:{m.line} {m.function}  {m.change}",
                flush=True,
            )

        queue = collections.deque(
            job_for(m, s, "selected" if s is not None else "all", timeout_for(m)) for m, s in todo
        )
        for job, outcome, seconds in pool.run(queue):
            if job.tag[0] == "verify":
                select = job.tag[1]
                verified[select] = outcome == "passed"
                for m, secs in waiting.pop(select):
                    if verified[select]:
                        record(m, "killed", secs, "selected")
                    else:  # the selection fails alone: judge the mutant by all its tests
                        queue.appendleft(job_for(m, None, "all", timeout_for(m)))
                continue
            m, select, stage = job.tag
            if outcome == "timeout" and not stage.endswith(" again"):
                # a busy machine, or a loop that never ends? once more, 3 times the limit
                job.tag = (m, select, stage + " again")
                job.timeout *= 3
                queue.append(job)
                continue
            stage = stage.removesuffix(" again")
            if stage == "selected" and outcome == "passed":  # all of its tests, next
                queue.appendleft(job_for(m, None, "all", timeout_for(m)))
            elif stage == "selected" and outcome == "failed" and select not in verified:
                if select not in waiting:  # run the selection on the unmutated modules
                    waiting[select] = []
                    tests, limit = _files(m, select), timeout_for(m)  # before the rest:
                    queue.appendleft(_Job(("verify", select), tests, limit, select=select))
                waiting[select].append((m, seconds))
            elif stage == "selected" and outcome == "failed" and not verified[select]:
                queue.append(job_for(m, None, "all", timeout_for(m)))
            else:
                status = {"failed": "killed", "passed": "survived"}.get(outcome, outcome)
                record(m, status, seconds, stage)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _warn_stale(equivalent, modules, seen_ids)
    order = {
        m.id: n for n, m in enumerate(m for mod in modules for m in mutants(mod, sources[mod]))
    }
    return sorted(results.values(), key=lambda r: order.get(r.id, 0))


def _files(m: Mutant, select: frozenset[str] | None) -> tuple[str, ...]:
    """The test files of ``m``'s module that hold a selected test (all of them for None)."""
    files = TARGETS[m.module]
    if select is None:
        return files
    return tuple(f for f in files if any(t.startswith(f + "::") for t in select)) or files


def _record(
    results: dict[str, Result],
    m: Mutant,
    status: str,
    seconds: float,
    tests: str,
    equivalent: dict[str, str],
) -> None:
    if status == "survived" and m.id in equivalent:
        status = "equivalent"
    results[m.id] = Result(m.id, m.module, m.line, m.function, m.change, status, seconds, tests)


# ------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------


def summary(results: list[Result]) -> dict[str, dict[str, float]]:
    """Counts and kill rate per module and overall."""
    table: dict[str, dict[str, float]] = {}
    for key in [*sorted({r.module for r in results}), "all"]:
        rows = [r for r in results if key in ("all", r.module)]
        counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
        scored = len(rows) - counts["equivalent"]
        caught = counts["killed"] + counts["timeout"]
        table[key] = {
            "mutants": len(rows),
            **counts,
            "kill_rate": caught / scored if scored else 1.0,
            "seconds": sum(r.seconds for r in rows),
        }
    return table


STATUSES = ("killed", "timeout", "equivalent", "survived")


def write_report(results: list[Result], out: Path, wall: float, quiet: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table = summary(results)
    record = {
        "wall_seconds": wall,
        "summary": table,
        "mutants": [asdict(r) for r in results],
    }
    (out / "results.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    survivors = [r for r in results if r.status == "survived"]
    lines = ["# Surviving mutants (not listed as equivalent)", ""]
    lines += [
        "Each line, with the reason appended, is an entry for tests/mutation/equivalent.md",
        "",
    ]
    lines += [
        f"- `{r.id}` {r.module} `{r.function}`: {r.change} (line {r.line})" for r in survivors
    ]
    (out / "survivors.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if quiet:
        return
    print()
    print(
        f"{'module':<32}{'mutants':>8}{'killed':>8}{'timeout':>8}{'equiv':>7}"
        f"{'survived':>9}{'kill rate':>10}"
    )
    for key, row in table.items():
        print(
            f"{key:<32}{row['mutants']:>8}{row['killed']:>8}{row['timeout']:>8}"
            f"{row['equivalent']:>7}{row['survived']:>9}{100 * row['kill_rate']:>9.1f}%"
        )
    print(f"\nwall time {wall / 60:.1f} min; survivors in {out / 'survivors.md'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all of TARGETS)")
    parser.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutant ids")
    parser.add_argument(
        "--skip-killed",
        metavar="RESULTS",
        help="take the mutants an earlier results.json lists as killed as still killed (true "
        "while tests are only added; an edited line gives its mutants new ids, which run)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "mutation-results")
    parser.add_argument(
        "--timeout-factor",
        type=float,
        default=3.0,
        help="a mutant's tests time out after this many times the unmutated run + 30 s "
        "(a mutant that times out is run once more with three times the limit)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=900.0,
        help="limit for the unmutated run of a module's tests",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        help="mutants tested at once, each in its own scratch copy (one per free core)",
    )
    parser.add_argument(
        "--all-tests",
        action="store_true",
        help="run every test of a mutant's files at once, not first the tests that call its "
        "function",
    )
    args = parser.parse_args(argv)
    modules = args.modules or list(TARGETS)
    unknown = [m for m in modules if m not in TARGETS]
    if unknown:
        parser.error(f"not in the mutation scope: {unknown}; choose from {list(TARGETS)}")
    if args.list:
        for module in modules:
            for m in mutants(module, (ROOT / module).read_text(encoding="utf-8")):
                print(f"{m.id}  {m.module}:{m.line} {m.function}  {m.change}")
        return 0
    start = time.perf_counter()
    results = run(modules, args)
    write_report(results, args.out, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
