"""The JavaScript client's own tests (clients/js/test/, node's test runner) run here, so
`make test` runs them: each starts real gateway processes of this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parent.parent / "clients" / "js"


def node_command() -> list[str]:
    node = shutil.which("node")
    assert node is not None, "node is required for the JavaScript client's tests (Node.js >= 20.10)"
    native = subprocess.run(
        [node, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], check=False
    )
    # Node 20 has WebSocket behind a flag; 22 and later have it by default.
    return [node] if native.returncode == 0 else [node, "--experimental-websocket"]


def test_the_javascript_client_passes_its_node_tests() -> None:
    files = sorted(str(path) for path in (CLIENT / "test").glob("*.test.mjs"))
    assert files
    done = subprocess.run(
        [*node_command(), "--test", "--test-reporter=spec", *files],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=CLIENT,
        env={"PATH": os.environ["PATH"], "TRIO_GATEWAY_PYTHON": sys.executable},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    assert "fail 0" in done.stdout, done.stdout[-4000:]
