"""The docs' Python examples are programs under examples/: each is quoted whole, and runs and
prints exactly this."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The examples import this checkout's package, whichever one the (shared) venv installed.
PYTHONPATH = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(PYTHONPATH)}

# Each example's exact standard output, run with a fresh current directory.
PRINTED = {
    "embedded.py": "{'workspace_id': 'W', 'kind': 'x'}\n",
    # The second client resumes after the first one's saved position: 2 once, no 1.
    "resume.py": "1\n2\n",
    # The backend named the user of the opaque token, then answered its command.
    "backend.py": 'alice\n{"event":"tablesLoaded","payload":{"tables":["Orders"]},"id":"1"}\n',
    # The gateway accepted the minted JWT and named its `sub`.
    "mint_token.py": "alice\n",
}

# A fenced block: its info string and its body, up to the closing fence.
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
PYTHON = {"py", "python", "python3"}


def python_blocks(markdown: str) -> list[str]:
    return [body for info, body in FENCE.findall(markdown) if info.strip() in PYTHON]


def examples_by_text() -> dict[str, str]:
    return {path.read_text(): path.name for path in EXAMPLES.glob("*.py")}


def test_every_example_has_its_expected_output() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(PRINTED)


@pytest.mark.parametrize(("program", "printed"), sorted(PRINTED.items()))
def test_example_runs(program: str, printed: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / program)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=CHILD_ENV,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, printed), done.stderr


@pytest.mark.parametrize("doc", DOCS, ids=[str(doc.relative_to(ROOT)) for doc in DOCS])
def test_every_python_block_is_a_whole_example(doc: Path) -> None:
    programs = examples_by_text()
    for block in python_blocks(doc.read_text()):
        assert block in programs, f"{doc.name}: a python block that is no whole examples/ file"


def test_the_docs_quote_the_examples() -> None:
    programs = examples_by_text()
    quoted = [programs.get(block) for doc in DOCS for block in python_blocks(doc.read_text())]
    assert sorted(map(str, quoted)) == ["backend.py", "embedded.py", "mint_token.py", "resume.py"]


def test_python_blocks_are_found_whole() -> None:
    markdown = "a\n```python\nx = 1\n\ny = 2\n```\n```\nnot python\n```\n```py\nz = 3\n```\n"
    assert python_blocks(markdown) == ["x = 1\n\ny = 2\n", "z = 3\n"]
