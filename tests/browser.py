"""What the browser tests share: headless Chromium driven by Playwright, and a real gateway
process to point it at.

Chromium is Debian's (`/usr/bin/chromium`), found on PATH; Playwright's Python wheel ships its
own driver, so nothing is downloaded (never `playwright install`). A missing Chromium is a
loud failure, never a skip: `make test` installs Debian's package when it runs as root.

The gateway runs as `python -m trio_gateway serve` with this checkout first on PYTHONPATH
(not the venv's `trio-gateway` script, whose editable install may point at another
checkout), on a free 127.0.0.1 port, with its log in a temporary file that a failed start
prints.

Must not: know any page or endpoint beyond `/api/health`, the readiness probe.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest
from playwright.sync_api import Browser, sync_playwright

from .helpers import debian_program
from .redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
# Seconds a fresh gateway process may take to answer /api/health (it boots in well under 1 s).
START_TIMEOUT = 15.0
# Seconds a gateway gets to drain after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0


def child_env() -> dict[str, str]:
    """The environment for a process of this checkout (the gateway, scripts/client.py):
    this checkout's package first, and none of the runner's TRIO_GATEWAY_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_GATEWAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium (Debian's), closed on exit."""
    executable = debian_program("chromium", "the browser tests")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@attrs.frozen
class GatewayProcess:
    port: int
    process: subprocess.Popen[bytes]
    log_file: Path

    @property
    def url(self) -> str:
        """The HTTP origin, `http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/ws"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@contextmanager
def gateway_process(*args: str, port: int | None = None) -> Iterator[GatewayProcess]:
    """A real `trio-gateway serve ARGS` process on a free port, ready once /api/health answers.

    Args:
        args: more `serve` flags (`--api-key`, `--admin`, ...); host and port are set here.
        port: this port instead of a free one (to restart a gateway where clients expect it).

    Resource handling:
        The process gets SIGTERM on exit (SIGKILL if it has not drained within STOP_TIMEOUT),
        and its log file is removed.
    """
    port = free_port() if port is None else port
    with tempfile.TemporaryDirectory(prefix="trio-gateway-") as workdir:
        log_file = Path(workdir) / "gateway.log"
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "trio_gateway", "serve",
                 "--host", "127.0.0.1", "--port", str(port), *args],
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        gateway = GatewayProcess(port, process, log_file)
        try:
            _wait_healthy(gateway)
            yield gateway
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(gateway: GatewayProcess) -> None:
    # A readiness probe against a separate process, bounded; not test synchronisation.
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers_health(gateway.url):
        if gateway.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(
                f"the gateway did not start on port {gateway.port}:\n{gateway.log()[-3000:]}",
                pytrace=False,
            )
        time.sleep(0.02)


def _answers_health(origin: str) -> bool:
    try:
        with urllib.request.urlopen(f"{origin}/api/health", timeout=1) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def artifacts_dir() -> Path:
    """Where tests leave files for people to look at (screenshots): `TRIO_GATEWAY_ARTIFACTS`,
    or build/artifacts (gitignored); created when missing."""
    path = Path(os.environ.get("TRIO_GATEWAY_ARTIFACTS") or ROOT / "build" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
