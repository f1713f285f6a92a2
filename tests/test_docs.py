"""Every command and snippet in the docs runs as written, from the clone, in a new shell.

The fenced ``bash`` and ``python`` blocks of README.md, CONTRIBUTING.md and docs/*.md run in
document order, each in a new shell (or Python process), all of one file in the same scratch
folder where ``.venv`` is the environment running these tests, as in a fresh clone. The rules:

* A block preceded by ``<!-- docs-test: skip: REASON -->`` is not run (GPU, MPI, installs, the
  minutes-long benchmark); the reason is required. Every other bash/python block runs and
  must exit 0.
* Set-up at the start of a line, ``python3 -m venv .venv && .venv/bin/pip install ... &&``,
  is dropped (the environment exists already), and a line that then runs the test suite itself
  (``.venv/bin/python -m pytest`` on the whole suite) is not run: CI runs it verbatim.
* Blocks of other languages (``text``) are not code and are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"^<!-- docs-test: skip: (\S.*\S) -->$")
SETUP = re.compile(r"^python3 -m venv \.venv && \.venv/bin/pip install [^&]+&& ")
SUITE = re.compile(r"^\.venv/bin/python -m pytest( -q)?$")
RUNNABLE = ("bash", "python")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence
    language: str
    code: str
    skip: str | None  # the reason, or None when the block runs

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown file, with their skip markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, language = i, match.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = SKIP.match(before.strip())
        code = "\n".join(lines[start + 1 : end]) + "\n"
        found.append(Block(path, start + 1, language, code, marker.group(1) if marker else None))
        i = end + 1
    return found


def shell_script(code: str) -> str:
    """A bash block as it runs here: set-up prefixes dropped, the suite's own run left out."""
    out = []
    for line in code.splitlines():
        line = SETUP.sub("", line)
        if not SUITE.match(line.strip()):
            out.append(line)
    return "\n".join(out) + "\n"


def test_every_code_block_runs_or_says_why_not() -> None:
    markers = 0
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        markers += text.count("<!-- docs-test:")
        for block in blocks(path):
            assert block.language, f"{block.where}: a fenced block needs a language"
        assert text.count("<!-- docs-test:") == sum(b.skip is not None for b in blocks(path)), (
            f"{path.name}: a docs-test marker that is malformed or not right above a block"
        )
    assert markers > 0


def test_the_quick_start_keeps_its_two_lines_and_ci_runs_the_second() -> None:
    first = blocks(ROOT / "README.md")[0]
    lines = first.code.splitlines()
    assert len(lines) == 2 and all(SETUP.match(line) for line in lines)
    assert lines[1] in (ROOT / ".ci" / "run").read_text()
    assert shell_script(first.code).split() == [".venv/bin/gpunn", "train"]


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_the_docs_commands_run_as_written(doc: Path, tmp_path: Path) -> None:
    venv = Path(sys.prefix)
    if venv == Path(sys.base_prefix) or not (venv / "bin" / "gpunn").exists():
        pytest.skip("needs the tests to run from the project's virtual environment")
    runnable = [b for b in blocks(doc) if b.language in RUNNABLE and b.skip is None]
    if not runnable:
        pytest.skip(f"{doc.name} has no block that runs without a GPU, MPI or installs")
    (tmp_path / ".venv").symlink_to(venv)  # the clone's .venv, as the docs write it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUNN_", "PYTEST"))}
    env.update(GPUNN_DATA=str(tmp_path / "gpunn-cache"), MPLBACKEND="Agg")
    for block in runnable:
        if block.language == "bash":
            command = ["bash", "-euo", "pipefail", "-c", shell_script(block.code)]
        else:
            command = [str(tmp_path / ".venv" / "bin" / "python"), "-c", block.code]
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, (
            f"{block.where} ({block.language}) failed with status {result.returncode}:\n"
            f"{block.code}\n--- stdout ---\n{result.stdout[-2000:]}\n"
            f"--- stderr ---\n{result.stderr[-2000:]}"
        )
