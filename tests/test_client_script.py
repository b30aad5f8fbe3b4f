"""scripts/client.py as a user runs it: a subprocess against a real gateway.

Each run is bounded by `trio.fail_after` and killed if it outlives its test. A background
subscriber is known to be subscribed when its stderr says so, never after a sleep.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

from trio_gateway import Gateway
from trio_gateway.client import open_client, websocket_url
from trio_gateway.protocol.errors import SLOW_CONSUMER

from .helpers import API_KEY

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "client.py"
TIMEOUT = 20


def command(port: int, *args: str, token: str | None = API_KEY) -> list[str]:
    options = ["--url", f"http://127.0.0.1:{port}"]
    if token is not None:
        options += ["--token", token]
    return [sys.executable, str(SCRIPT), *options, *args]


def environment() -> dict[str, str]:
    """The caller's environment without a token of its own, so --token decides."""
    return {key: value for key, value in os.environ.items() if key != "TRIO_GATEWAY_TOKEN"}


async def kill(process: trio.Process) -> None:
    process.kill()
    await trio.lowlevel.checkpoint()


async def run(
    port: int, *args: str, token: str | None = API_KEY, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            command(port, *args, token=token),
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
            env=environment(),
            deliver_cancel=kill,
        )


async def concurrently(
    *calls: Callable[[], Awaitable[subprocess.CompletedProcess[bytes]]],
) -> list[subprocess.CompletedProcess[bytes]]:
    """Run independent script invocations at once; results in call order."""
    results: dict[int, subprocess.CompletedProcess[bytes]] = {}

    async def one(index: int) -> None:
        results[index] = await calls[index]()

    async with trio.open_nursery() as nursery:
        for index in range(len(calls)):
            nursery.start_soon(one, index)
    return [results[index] for index in range(len(calls))]


class Lines:
    """Line-at-a-time reading from a subprocess pipe."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some()
            if not chunk:
                raise EOFError(f"stream ended; unterminated rest: {self._buffer!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    async def until(self, fragment: str) -> str:
        """Skip lines up to and including the first one containing `fragment`."""
        while fragment not in (line := await self.next()):
            pass
        return line


@asynccontextmanager
async def background(port: int, *args: str) -> AsyncIterator[tuple[trio.Process, Lines, Lines]]:
    """The script running alongside the test: (process, stdout lines, stderr lines)."""
    process = await trio.lowlevel.open_process(
        command(port, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=environment(),
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        yield process, Lines(process.stdout), Lines(process.stderr)
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stdout.aclose()
            await process.stderr.aclose()


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def event(workspace_id: str, n: int) -> dict[str, Any]:
    return {"workspace_id": workspace_id, "n": n}


def printed(line: str) -> dict[str, Any]:
    """A JSON line of `subscribe`, without the offsets the server adds."""
    message: dict[str, Any] = json.loads(line)
    return {key: value for key, value in message.items() if key not in ("offset", "offsets")}


async def position_of(stderr: Lines, key: str) -> tuple[int, str]:
    """(offset, epoch) from the position line `subscribe` logs on exit."""
    line = await stderr.until(f"position of {key}: ")
    _, offset, _, epoch = line.split(": ", 1)[1].split(" ")
    return int(offset), epoch


# --- health and publish-event ---------------------------------------------------------------


async def test_health_prints_json(gateway: Gateway) -> None:
    result = await run(gateway.port, "health", token=None)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["status"] == "ok"
    assert answer["ws_clients"] == 0


async def test_subscriber_prints_what_publish_event_sends(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with background(gateway.port, "subscribe", "--workspace", "W", "--count", "2") as (
            process,
            stdout,
            stderr,
        ):
            await stderr.until("subscribed to workspace:W")
            batch = [event("W", 1), event("other", 2), event("W", 3)]
            published = await run(gateway.port, "publish-event", stdin=json.dumps(batch).encode())
            assert published.returncode == 0, published.stderr
            assert json.loads(published.stdout) == {"accepted": 3}
            assert [printed(await stdout.next()) for _ in range(2)] == [
                {"type": "event", "event": event("W", 1)},
                {"type": "event", "event": event("W", 3)},
            ]
            assert await process.wait() == 0


async def test_publish_event_from_argument(gateway: Gateway) -> None:
    result = await run(gateway.port, "publish-event", json.dumps(event("W", 1)))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"accepted": 1}


async def test_subscriber_reconnects_after_a_drop(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with background(gateway.port, "subscribe", "--all", "--count", "1") as (
            process,
            stdout,
            stderr,
        ):
            line = await stderr.until("subscribed to all")
            client_id = line.split("connected as ")[1].split(";")[0]
            gateway.hub.clients[client_id].close(SLOW_CONSUMER)
            await stderr.until("reconnecting")
            # Published while the script is away: delivered by the resume.
            gateway.broadcaster.broadcast_event(event("W", 1))
            await stderr.until("subscribed to all")
            assert printed(await stdout.next()) == {"type": "event", "event": event("W", 1)}
            assert await process.wait() == 0
            assert await position_of(stderr, "all") == (1, await epoch_of(gateway, "all"))


async def epoch_of(gateway: Gateway, key: str) -> str:
    """The epoch of `key`'s log on the gateway, as a subscribe ack reports it."""
    async with open_client(
        websocket_url(f"http://127.0.0.1:{gateway.port}"), API_KEY, subscriptions=[key]
    ) as client:
        return client.positions[key].epoch


async def test_topics_and_patterns(gateway: Gateway) -> None:
    args = ["subscribe", "--topic", "chat.room.1", "--topic", "alerts.**", "--count", "3"]
    with trio.fail_after(TIMEOUT):
        async with background(gateway.port, *args) as (process, stdout, stderr):
            await stderr.until("subscribed to chat.room.1, alerts.**")
            for topic in ("chat.room.1", "chat.room.2", "alerts.disk.full", "chat.room.1"):
                gateway.broadcaster.publish_nowait(topic, {"on": topic})
            lines = [json.loads(await stdout.next()) for _ in range(3)]
            assert await process.wait() == 0
    assert lines == [
        {"type": "message", "topic": "chat.room.1", "data": {"on": "chat.room.1"}, "offset": 1},
        {
            "type": "message",
            "topic": "alerts.disk.full",
            "data": {"on": "alerts.disk.full"},
            "offset": 1,
        },
        {"type": "message", "topic": "chat.room.1", "data": {"on": "chat.room.1"}, "offset": 2},
    ]


async def test_from_offset_replays_where_an_earlier_run_stopped(gateway: Gateway) -> None:
    """The documented round trip: a run logs its position on exit, a later one resumes."""
    with trio.fail_after(TIMEOUT):
        async with background(gateway.port, "subscribe", "--workspace", "W", "--count", "1") as (
            process,
            stdout,
            stderr,
        ):
            await stderr.until("subscribed to workspace:W")
            # Three arrive; the run prints one and exits: its position counts that one only.
            published = await run(
                gateway.port, "publish-event", json.dumps([event("W", n) for n in (1, 2, 3)])
            )
            assert published.returncode == 0, published.stderr
            assert printed(await stdout.next()) == {"type": "event", "event": event("W", 1)}
            assert await process.wait() == 0
            offset, epoch = await position_of(stderr, "workspace:W")
        assert offset == 1
        gateway.broadcaster.broadcast_event(event("W", 4))
        args = ["--workspace", "W", "--from-offset", "1", "--epoch", epoch, "--count", "3"]
        result = await run(gateway.port, "subscribe", *args)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["event"] for line in lines] == [event("W", n) for n in (2, 3, 4)]
    assert [line["offsets"]["workspace:W"] for line in lines] == [2, 3, 4]
    assert f"position of workspace:W: --from-offset 4 --epoch {epoch}".encode() in result.stderr


async def test_from_offset_that_cannot_be_recovered_prints_the_ack(gateway: Gateway) -> None:
    args = ["--topic", "chat.room.1", "--from-offset", "3", "--epoch", "gone", "--count", "1"]
    result = await run(gateway.port, "subscribe", *args)
    assert result.returncode == 0, result.stderr
    ack = json.loads(result.stdout)
    assert ack["type"] == "subscribed"
    assert ack["subscription"] == "chat.room.1"
    assert ack["recovered"] is False
    assert ack["offset"] == 0


# --- exit codes -----------------------------------------------------------------------------


async def test_wrong_token_exits_3(gateway: Gateway) -> None:
    port = gateway.port
    publish, subscribe, no_token = await concurrently(
        partial(run, port, "publish-event", '{"workspace_id":"W"}', token="wrong"),
        partial(run, port, "subscribe", "--all", token="wrong"),
        partial(run, port, "publish-event", '{"workspace_id":"W"}', token=None),
    )
    assert [publish.returncode, subscribe.returncode, no_token.returncode] == [3, 3, 3]
    assert b"unauthorized" in publish.stderr
    assert b"TRIO_GATEWAY_TOKEN" in no_token.stderr
    assert subscribe.stdout == b""


async def test_invalid_input_exits_2(gateway: Gateway) -> None:
    port = gateway.port
    results = await concurrently(
        partial(run, port, "publish-event", "{not json"),
        partial(run, port, "publish-event", "-", stdin=b"[1, 2"),
        partial(run, port, "publish-event", "42"),
        partial(run, port, "publish-event", '{"workspace_id": "W", "x": NaN}'),
        partial(run, port, "subscribe"),
        partial(run, port, "subscribe", "--all", "--count", "0"),
        partial(run, port, "subscribe", "--workspace", ""),
        partial(run, port, "--url", "ws://127.0.0.1:1", "health"),
        partial(run, port, "subscribe", "--topic", ""),
        partial(run, port, "subscribe", "--all", "--from-offset", "1"),
        partial(run, port, "subscribe", "--all", "--epoch", "E"),
        partial(
            run, port, "subscribe", "--all", "--topic", "t", "--from-offset", "1", "--epoch", "E"
        ),
        partial(run, port, "subscribe", "--topic", "t.*", "--from-offset", "1", "--epoch", "E"),
        partial(run, port, "subscribe", "--all", "--from-offset", "-1", "--epoch", "E"),
    )
    assert [result.returncode for result in results] == [2] * 14
    assert b"invalid JSON" in results[0].stderr
    assert b"go together" in results[9].stderr
    assert b"exactly one subscription" in results[11].stderr
    assert b"patterns are live only" in results[12].stderr


async def test_server_rejection_exits_1(gateway: Gateway) -> None:
    result = await run(gateway.port, "publish-event", '{"kind":"no workspace"}')
    assert result.returncode == 1
    assert b"HTTP 400: workspace_id must be a non-empty string" in result.stderr


async def test_unreachable_server_exits_1() -> None:
    port = closed_port()
    results = await concurrently(
        partial(run, port, "health"),
        partial(run, port, "publish-event", '{"workspace_id":"W"}'),
        partial(run, port, "subscribe", "--all"),
    )
    assert [result.returncode for result in results] == [1, 1, 1]
    assert all(b"cannot connect" in result.stderr for result in results)
