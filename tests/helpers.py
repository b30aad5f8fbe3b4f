"""Test helpers: an in-memory listener and WebSocket clients that speak the real protocol."""

from __future__ import annotations

import functools
import json
import shutil
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import TextMessage

from trio_gateway import Config, Gateway, serve
from trio_gateway.client.http import http_request
from trio_gateway.fanout.outbox import Outbox

API_KEY = "test-key"
# Seconds a real-socket test may take before it fails (each wraps its body in fail_after).
TIMEOUT = 5
#: The expiry frame, in the shapes of seeds 000-004 and of seed 002.
SESSION_EXPIRED = {"type": "session.expired", "event": "sessionExpired", "payload": {}}


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose `connect()` hands the server one end of an in-memory stream pair."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](0)

    async def connect(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        await self._send.send(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        self._receive.close()
        await trio.lowlevel.checkpoint()


def recording_writer(nursery: trio.Nursery, outbox: Outbox) -> list[list[bytes]]:
    """Give `outbox` a writer as a session does (started when frames cannot be written at
    once, ending when none are left); returns what each of its takes got, i.e. each write
    a connection's writer would make."""
    taken: list[list[bytes]] = []

    async def writer() -> None:
        try:
            while frames := outbox.take_nowait():
                taken.append(frames)
                await trio.lowlevel.checkpoint()
        finally:
            outbox.writer_stopped()

    outbox.writers = _Starter(functools.partial(nursery.start_soon, writer))
    return taken


@attrs.frozen
class _Starter:
    start_writer: Callable[[], None]


def debian_program(name: str, what: str) -> str:
    """The path of `name`, a Debian package's program the suite needs; fails, never skips."""
    executable = shutil.which(name)
    if executable is None:
        pytest.fail(
            f"{name} is not installed: run `make test` as root (it installs Debian's {name} "
            f"for {what}) or `apt-get install {name}`",
            pytrace=False,
        )
    return executable


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task in this trio run, found by walking nurseries down from the root task."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    found: set[trio.lowlevel.Task] = set()
    pending = [root]
    while pending:
        task = pending.pop()
        found.add(task)
        for child_nursery in task.child_nurseries:
            pending.extend(child_nursery.child_tasks)
    return found


def event(workspace_id: str, session_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A seed 000 event for the publish API."""
    return {"workspace_id": workspace_id, "session_id": session_id, **extra}


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Let the server run until `predicate()` holds (bounded by the caller's fail_after)."""
    while not predicate():
        await trio.testing.wait_all_tasks_blocked()


async def serve_in_memory(nursery: trio.Nursery, config: Config) -> tuple[Gateway, MemoryListener]:
    """A gateway in `nursery` accepting in-memory streams (for autojump-clock tests)."""
    listener = MemoryListener()
    gateway: Gateway = await nursery.start(functools.partial(serve, config, listeners=[listener]))
    return gateway, listener


def unframe(frame: bytes) -> str:
    """The text of one pre-built server frame, parsed the way a client would."""
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(frame)
    (message,) = [event for event in client.events() if isinstance(event, TextMessage)]
    return message.data


def ws_url(port: int, token: str | None = API_KEY, path: str = "/api/ws") -> str:
    query = f"?token={token}" if token is not None else ""
    return f"ws://127.0.0.1:{port}{path}{query}"


@attrs.define
class RawClient:
    """A WebSocket client together with the TCP stream under it, which the test owns."""

    ws: trio_websocket.WebSocketConnection
    stream: trio.SocketStream

    def drop(self, *, reset: bool = False) -> None:
        """Close the TCP socket without a close frame: FIN, or RST when `reset`."""
        if reset:
            self.stream.socket.setsockopt(
                trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        self.stream.socket.close()


@asynccontextmanager
async def raw_client(
    port: int,
    token: str | None = API_KEY,
    *,
    path: str = "/api/ws",
    rcvbuf: int | None = None,
    **kwargs: Any,
) -> AsyncIterator[RawClient]:
    """A trio-websocket client on a real socket that this helper owns and always closes.

    Built from its parts rather than `open_websocket_url`, because that leaves the socket
    open when the server closes first (a ResourceWarning, an error under our pytest config).
    `rcvbuf` shrinks the kernel receive buffer (set before connecting, which also turns off
    autotuning), so a client that stops reading backs the server up quickly. A single
    failure from the client's nursery (a refused handshake, an assertion) is raised bare.
    """
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
    try:
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    stream = trio.SocketStream(sock)
    try:
        async with _websocket_over(stream, _resource(token, path), **kwargs) as ws:
            yield RawClient(ws, stream)
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def tcp_client(
    port: int, token: str | None = API_KEY, *, path: str = "/api/ws", **kwargs: Any
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """`raw_client` for tests that only need the WebSocket."""
    async with raw_client(port, token, path=path, **kwargs) as raw:
        yield raw.ws


def _resource(token: str | None, path: str = "/api/ws") -> str:
    return f"{path}?token={token}" if token is not None else path


@asynccontextmanager
async def _websocket_over(
    stream: trio.abc.Stream, resource: str, **kwargs: Any
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    async with trio.open_nursery() as client_nursery:
        # trio-websocket annotates the stream as a socket stream but uses only the Stream
        # interface, which an in-memory stream has.
        ws = await trio_websocket.wrap_client_stream(
            client_nursery,
            stream,  # type: ignore[arg-type]
            "gateway.test",
            resource,
            **kwargs,
        )
        try:
            yield ws
        finally:
            with trio.move_on_after(1):
                await ws.aclose()
            client_nursery.cancel_scope.cancel()


@asynccontextmanager
async def memory_client(
    listener: MemoryListener, token: str | None = API_KEY
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A trio-websocket client over an in-memory stream (for autojump-clock tests)."""
    stream = await listener.connect()
    try:
        async with _websocket_over(stream, _resource(token)) as ws:
            yield ws
    finally:
        await trio.aclose_forcefully(stream)


async def receive_json(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    message = await ws.get_message()
    assert isinstance(message, str), message
    data = json.loads(message)
    assert isinstance(data, dict), data
    return data


async def send_json(ws: trio_websocket.WebSocketConnection, data: object) -> None:
    await ws.send_message(json.dumps(data))


async def ready(ws: trio_websocket.WebSocketConnection) -> str:
    """Consume the `ready` greeting and return the client id."""
    greeting = await receive_json(ws)
    assert greeting["type"] == "ready", greeting
    return str(greeting["client_id"])


async def subscribe(ws: trio_websocket.WebSocketConnection, **keys: str) -> str:
    await send_json(ws, {"type": "subscribe", **keys})
    ack = await receive_json(ws)
    assert ack["type"] == "subscribed", ack
    return str(ack["subscription"])


async def closed_with(ws: trio_websocket.WebSocketConnection) -> trio_websocket.CloseReason:
    """Read until the server closes; returns its close reason."""
    while True:
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            break
    assert reason is not None
    return reason


async def request(ws: trio_websocket.WebSocketConnection, **message: Any) -> dict[str, Any]:
    """Send one message and return the next frame (its reply, when nothing else is due)."""
    await send_json(ws, message)
    return await receive_json(ws)


async def post(port: int, path: str, body: object) -> tuple[int, Any]:
    """POST JSON to the gateway's HTTP API with the test key: (status, decoded body)."""
    status, _, raw = await http_request(
        "POST",
        f"http://127.0.0.1:{port}{path}",
        body=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    return status, json.loads(raw)
