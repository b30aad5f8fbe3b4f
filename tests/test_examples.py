"""The README's Python examples are programs under examples/: each runs and prints this."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("program", "printed"),
    [
        ("embedded.py", "{'workspace_id': 'W', 'kind': 'x'}\n"),
        # The second client resumes after the first one's saved position: 2 once, no 1.
        ("resume.py", "1\n2\n"),
        # The backend named the user of the opaque token, then answered its command.
        (
            "backend.py",
            'alice\n{"event":"tablesLoaded","payload":{"tables":["Orders"]},"id":"1"}\n',
        ),
    ],
)
def test_example_runs(program: str, printed: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / program)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, printed), done.stderr


def test_the_readme_quotes_the_examples_as_they_are() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    blocks = readme.split("```python\n")[1:]
    quoted = [block.split("```", 1)[0].strip("\n") for block in blocks]
    programs = [path.read_text() for path in sorted(EXAMPLES.glob("*.py"))]
    # examples/backend.py is quoted in docs/OPERATIONS.md instead.
    assert len(quoted) == 2
    assert [any(code in program for program in programs) for code in quoted] == [True, True]
