"""The `trio-gateway` command: argv and file handling in process, then the real daemon.

Subprocess tests run `python -m trio_gateway` with stderr piped, parse what it prints, talk to
it over real sockets and signal it. Each runs under a hard `trio.fail_after` bound and kills
the child in `finally`; start-up takes about 0.4 s, so each test stays well under 2 s.
"""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio_websocket

from trio_gateway._version import __version__
from trio_gateway.runtime.cli import build_parser, load_settings
from trio_gateway.runtime.config import ConfigError
from trio_gateway.runtime.settings import Settings

from .helpers import TIMEOUT, closed_with, ready, tcp_client

# Seconds: hard bound on each subprocess test, far above its normal run time.
COMMAND = [sys.executable, "-m", "trio_gateway"]
LISTENING = r"^trio-gateway listening on ws://127\.0\.0\.1:(\d+)/api/ws "


def child_env(**settings: str) -> dict[str, str]:
    """The test's environment minus any TRIO_GATEWAY_* of the developer's, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_GATEWAY_")}
    env.update(settings)
    return env


def unique_key() -> str:
    # Distinctive enough that finding it in stderr can only mean it was logged.
    return "key-" + secrets.token_hex(16)


def json_records(stderr: str) -> list[dict[str, Any]]:
    """Every log line parsed; anything else must be one of the command's own human lines."""
    records = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
        else:
            assert line.startswith("trio-gateway"), line
    return records


# --- in process: argv and the config file ------------------------------------------------


def parse(*argv: str, env: Mapping[str, str] | None = None) -> Settings:
    arguments = vars(build_parser().parse_args(["serve", *argv]))
    del arguments["command"]
    config_flag = arguments.pop("config", None)
    return load_settings(arguments, config_flag, env or {})


def test_api_key_flag_repeats() -> None:
    settings = parse("--api-key", "a", "--api-key", "b", "--port", "0")
    assert settings.config.api_keys == ("a", "b")
    assert settings.config.port == 0


def test_enable_echo_is_a_switch_without_a_value() -> None:
    assert parse().config.enable_echo is False
    assert parse("--enable-echo").config.enable_echo is True


def test_abbreviated_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("--max", "5")
    assert exited.value.code == 2
    assert "unrecognized arguments: --max 5" in capsys.readouterr().err


def test_config_file_from_flag_or_environment(tmp_path: Path) -> None:
    flag_file = tmp_path / "flag.toml"
    flag_file.write_text('port = 1\napi_keys = ["a"]\n')
    env_file = tmp_path / "env.toml"
    env_file.write_text("port = 2\n")
    env = {"TRIO_GATEWAY_CONFIG": str(env_file)}
    assert parse("--config", str(flag_file), env=env).config.port == 1
    assert parse(env=env).config.port == 2


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda p: None, "cannot read {path}: No such file or directory", id="missing"),
        pytest.param(lambda p: p.mkdir(), "cannot read {path}: Is a directory", id="directory"),
        pytest.param(
            lambda p: p.write_bytes(b"port = \xff"), "{path} is not UTF-8 text", id="utf8"
        ),
    ],
)
def test_unreadable_config_file(
    tmp_path: Path, make: Callable[[Path], object], reason: str
) -> None:
    path = tmp_path / "gw.toml"
    make(path)
    with pytest.raises(ConfigError) as caught:
        parse(env={"TRIO_GATEWAY_CONFIG": str(path)})
    expected = "config: " + reason.format(path=path) + " (from TRIO_GATEWAY_CONFIG)"
    assert str(caught.value) == expected


# --- subprocess -----------------------------------------------------------------------------


class Daemon:
    """A running `trio-gateway serve` whose stderr is read line by line."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stderr is not None
        self.process = process
        self.stderr = process.stderr
        self.lines: list[str] = []
        self._pending = b""

    async def _read_line(self) -> str | None:
        while b"\n" not in self._pending:
            chunk = await self.stderr.receive_some()
            if not chunk:
                if not self._pending:
                    return None
                self._pending += b"\n"
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        text = line.decode()
        self.lines.append(text)
        return text

    async def wait_for(self, pattern: str) -> re.Match[str]:
        """Read stderr up to the first line matching `pattern`."""
        while (line := await self._read_line()) is not None:
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"stderr ended without {pattern!r}: {self.lines}")

    async def port(self) -> int:
        return int((await self.wait_for(LISTENING))[1])

    async def finish(self) -> tuple[int, str]:
        """Exit status and the whole of stderr, once the process has exited."""
        while await self._read_line() is not None:
            pass
        return await self.process.wait(), "\n".join(self.lines)


@asynccontextmanager
async def daemon(*args: str, **env: str) -> AsyncIterator[Daemon]:
    process = await trio.lowlevel.open_process(
        [*COMMAND, "serve", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env(**env),
    )
    gateway = Daemon(process)
    try:
        yield gateway
    finally:
        process.kill()
        # Reaping is quick after SIGKILL, and must happen even if the test was cancelled.
        with trio.CancelScope(shield=True):
            await process.wait()
            await trio.aclose_forcefully(gateway.stderr)


@asynccontextmanager
async def closing_client(
    port: int, token: str
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A WebSocket client for when the server closes first.

    `helpers.tcp_client` leaks its socket then (trio-websocket's client waits for the server's
    FIN and never closes its own stream), which pytest turns into a ResourceWarning error; this
    one owns its TCP stream and always closes it.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with trio.open_nursery() as client_nursery:
            ws = await trio_websocket.wrap_client_stream(
                client_nursery, stream, "127.0.0.1", f"/api/ws?token={token}"
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(1):
                    await ws.aclose()
                client_nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def run_command(
    *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            [*COMMAND, *args],
            check=False,
            capture_stdout=True,
            capture_stderr=True,
            env=child_env(**env),
            cwd=cwd,
        )


async def test_version() -> None:
    result = await run_command("--version")
    assert result.returncode == 0
    assert result.stdout.decode() == f"trio-gateway {__version__}\n"


@pytest.mark.parametrize(
    ("args", "toml", "message"),
    [
        pytest.param(
            ["--port", "70000"],
            None,
            "port: must be between 0 and 65535, got 70000 (from --port)",
            id="flag",
        ),
        pytest.param(
            ["--config", "gw.toml"],
            "prot = 1\n",
            "prot: unknown setting; did you mean 'port'? (from gw.toml)",
            id="toml-key",
        ),
        pytest.param(
            ["--config", "absent.toml"],
            None,
            "config: cannot read absent.toml: No such file or directory (from --config)",
            id="missing-file",
        ),
        pytest.param(
            ["--jwt-public-key", "absent.pem"],
            None,
            "jwt_public_key: cannot read absent.pem: No such file or directory",
            id="missing-key-file",
        ),
        pytest.param(
            ["--jwt-public-key", "gw.toml"],
            "not a key\n",
            "jwt_public_key: gw.toml: not a PEM public key",
            id="not-a-key",
        ),
        pytest.param(
            ["--redis-url", "redis://127.0.0.1:notaport/0"],
            None,
            "redis_url: the port must be a number from 0 to 65535 (from --redis-url)",
            id="redis-port",
        ),
        pytest.param(
            ["--redis-url", "redis:///0"],
            None,
            "redis_url: a host is required (redis://host:port/db) (from --redis-url)",
            id="redis-host",
        ),
        pytest.param(
            ["--redis-url", "redis://127.0.0.1:6379/notadb"],
            None,
            "redis_url: the database must be a number (redis://host:port/0) (from --redis-url)",
            id="redis-db",
        ),
        pytest.param(
            ["--queue-depth", "1"],
            None,
            "queue_depth: must be at least 4 frames",
            id="queue-depth",
        ),
        pytest.param(
            ["--log-format", "pretty"],
            None,
            "log_format: must be one of json, console, got 'pretty' (from --log-format)",
            id="log-format",
        ),
        pytest.param(
            ["--jwt-secret", "s", "--jwt-public-key", "k.pem"],
            None,
            "jwt_secret: set either jwt_secret (HS256) or jwt_public_key (RS256/ES256), not both",
            id="two-jwt-keys",
        ),
    ],
)
async def test_invalid_configuration_exits_2_with_one_line(
    tmp_path: Path, args: list[str], toml: str | None, message: str
) -> None:
    if toml is not None:
        (tmp_path / "gw.toml").write_text(toml)
    result = await run_command("serve", "--port", "0", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.decode().startswith(f"trio-gateway: invalid configuration: {message}")
    assert result.stderr.decode().count("\n") == 1
    assert result.stdout == b""


async def test_port_in_use_exits_1_with_one_line() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        result = await run_command("serve", "--port", str(port), "--api-key", "k")
    finally:
        await trio.aclose_forcefully(listeners[0])
    assert result.returncode == 1
    stderr = result.stderr.decode()
    expected = f"trio-gateway: cannot listen on 127.0.0.1:{port}: {os.strerror(errno.EADDRINUSE)}"
    assert stderr.splitlines()[-1] == expected
    json_records(stderr)


async def test_generated_key_is_printed_once_and_lets_a_client_in() -> None:
    with trio.fail_after(TIMEOUT):
        async with daemon("--port", "0") as gateway:
            key = (await gateway.wait_for(r"ephemeral key for this run only: (\S+)$"))[1]
            async with tcp_client(await gateway.port(), key) as ws:
                await ready(ws)
            gateway.process.send_signal(signal.SIGTERM)
            status, stderr = await gateway.finish()
    assert status == 0
    assert stderr.count(key) == 1
    records = json_records(stderr)
    assert any(r["level"] == "warning" and "no API key" in r["event"] for r in records)


async def test_sigterm_closes_clients_with_1001_and_exits_0(tmp_path: Path) -> None:
    key = unique_key()
    config = tmp_path / "gw.toml"
    config.write_text(f'api_keys = ["{key}"]\nlog_level = "debug"\n')
    with trio.fail_after(TIMEOUT):
        async with daemon("--config", str(config), TRIO_GATEWAY_PORT="0") as gateway:
            async with closing_client(await gateway.port(), key) as ws:
                await ready(ws)
                gateway.process.send_signal(signal.SIGTERM)
                reason = await closed_with(ws)
            status, stderr = await gateway.finish()
    assert (reason.code, reason.reason) == (1001, "Server shutting down")
    assert status == 0
    assert key not in stderr
    events = [r["event"] for r in json_records(stderr)]
    assert "client connected" in events
    assert events[-1] == "gateway stopped"


async def _hold_the_drain_open(port: int) -> trio.SocketStream:
    """A keep-alive HTTP connection with half of a second request already sent.

    Both go out in one write, so the server holds the half request when it finishes the
    first: the connection is mid-request, not idle, and the drain waits for it.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = h11.Connection(h11.CLIENT)
    first = client.send(h11.Request(method="GET", target="/api/health", headers=[("host", "t")]))
    assert first is not None
    await stream.send_all(first + b"GET /api/health HTTP/1.1\r\n")
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        if event is h11.NEED_DATA:
            client.receive_data(await stream.receive_some())
    return stream


async def test_second_signal_exits_at_once_without_draining() -> None:
    # Both timeouts far beyond TIMEOUT: only the second signal can end this drain in time.
    args = ("--port", "0", "--api-key", "k", "--drain-timeout", "60", "--request-timeout", "60")
    with trio.fail_after(TIMEOUT):
        async with daemon(*args) as gateway:
            stream = await _hold_the_drain_open(await gateway.port())
            async with stream:
                gateway.process.send_signal(signal.SIGINT)
                await gateway.wait_for('"event":"shutdown requested, draining"')
                gateway.process.send_signal(signal.SIGINT)
                # The server hangs up at once; closing our end too spares it lingering
                # `close_timeout` for a peer that never hangs up.
                while await stream.receive_some():
                    pass
            status, stderr = await gateway.finish()
    assert status == 128 + signal.SIGINT
    events = [r["event"] for r in json_records(stderr)]
    assert "second signal, stopping without draining" in events
    assert "Traceback" not in stderr


async def test_api_key_variable_lets_a_client_in_without_a_generated_key() -> None:
    key = unique_key()
    with trio.fail_after(TIMEOUT):
        async with daemon("--port", "0", TRIO_GATEWAY_API_KEY=key) as gateway:
            async with tcp_client(await gateway.port(), key) as ws:
                await ready(ws)
            gateway.process.send_signal(signal.SIGTERM)
            status, stderr = await gateway.finish()
    assert status == 0
    assert "ephemeral key" not in stderr
    assert key not in stderr
    assert not [r for r in json_records(stderr) if r["level"] == "warning"]


# A console line: local time to the millisecond, level, logger, event, then key=value fields.
CONSOLE_LINE = r"^\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO |WARNING|ERROR|CRITICAL) trio_gateway\.\S+ \S"


async def _log_lines(*args: str, **env: str) -> list[str]:
    """stderr of a daemon that starts, takes one client and stops on SIGTERM, minus the
    command's own human lines."""
    with trio.fail_after(TIMEOUT):
        async with daemon("--port", "0", "--api-key", "k", *args, **env) as gateway:
            async with tcp_client(await gateway.port(), "k") as ws:
                await ready(ws)
            gateway.process.send_signal(signal.SIGTERM)
            status, stderr = await gateway.finish()
    assert status == 0
    return [line for line in stderr.splitlines() if not line.startswith("trio-gateway")]


async def test_console_log_format_writes_one_readable_line_per_event() -> None:
    lines = await _log_lines("--log-format", "console")
    assert lines
    assert all(re.match(CONSOLE_LINE, line) for line in lines), lines
    connected = next(line for line in lines if " client connected " in line)
    assert re.search(r" trio_gateway\.\S+ client connected client_id=\S+ ", connected)
    assert re.search(r" instance=…\S{6}$", connected)
    assert "port=0" in next(line for line in lines if "configuration loaded" in line)


async def test_json_log_format_from_the_environment() -> None:
    lines = await _log_lines(TRIO_GATEWAY_LOG_FORMAT="json")
    records = [json.loads(line) for line in lines]
    assert "client connected" in [record["event"] for record in records]
    assert records[0]["log_format"] == "json"


async def test_log_format_defaults_to_json_when_stderr_is_not_a_terminal() -> None:
    lines = await _log_lines()
    assert all(json.loads(line)["level"] for line in lines)


async def test_console_is_the_default_when_stderr_is_a_terminal() -> None:
    controller, terminal = pty.openpty()
    try:
        process = await trio.lowlevel.open_process(
            [*COMMAND, "serve", "--port", "0", "--api-key", "k"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env=child_env(),
        )
    finally:
        os.close(terminal)
    output = b""
    try:
        with trio.fail_after(TIMEOUT):
            async with trio.lowlevel.FdStream(controller) as screen:
                signalled = False
                # Linux answers EIO, not EOF, once the last writer has closed the terminal.
                with suppress(trio.BrokenResourceError):
                    while chunk := await screen.receive_some():
                        output += chunk
                        if b"listening on" in output and not signalled:
                            process.send_signal(signal.SIGTERM)
                            signalled = True
            assert await process.wait() == 0
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
    # A terminal turns each \n into \r\n.
    lines = [line for line in output.decode().splitlines() if line]
    logged = [line for line in lines if not line.startswith("trio-gateway")]
    assert any(" configuration loaded " in line for line in logged)
    assert all(re.match(CONSOLE_LINE, line) for line in logged), logged
