"""The WebSocket adapter: the only server module that imports trio-websocket or wsproto.

The port speaks HTTP first (http_api.py reads the request head with h11), so an upgrade
arrives here with its head already consumed. `PrefixedStream` replays the head to
trio-websocket, which then runs the RFC 6455 handshake and framing as usual. Owns: handshake
checks, token extraction, and tearing a socket down politely. Must not know about hubs or
subscriptions.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlsplit

import h11
import trio
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.connection import ConnectionState

__all__ = [
    "ConnectionClosed",
    "PrefixedStream",
    "WebSocketConnection",
    "extract_token",
    "frame_reader_nursery",
    "handshake_problem",
    "is_upgrade",
    "linger_close",
    "open_websocket",
    "replay_head",
    "send_frames",
    "token_matches",
]

WS_PATH = "/api/ws"
# Diagnostics echo endpoint, served only with `enable_echo`.
ECHO_PATH = "/api/echo"
# Bytes read from the socket per receive call.
RECEIVE_SIZE = 64 * 1024
# Client messages trio-websocket buffers before it stops reading the socket (backpressure).
INBOUND_QUEUE = 16


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A stream that first yields `prefix`, then whatever `stream` yields."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            return chunk
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            await self.stream.send_eof()
        else:
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self.stream.aclose()


def _header(request: h11.Request, name: bytes) -> bytes | None:
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return None


def _header_tokens(request: h11.Request, name: bytes) -> set[bytes]:
    tokens: set[bytes] = set()
    for key, value in request.headers:
        if key == name:
            tokens.update(part.strip().lower() for part in bytes(value).split(b","))
    return tokens


def is_upgrade(request: h11.Request) -> bool:
    """True when the client asks to switch to WebSocket (valid or not)."""
    return b"websocket" in _header_tokens(request, b"upgrade")


def handshake_problem(request: h11.Request) -> str | None:
    """Why an upgrade request is not a valid RFC 6455 opening handshake, or None."""
    if request.method != b"GET":
        return "WebSocket handshake must use GET"
    if b"upgrade" not in _header_tokens(request, b"connection"):
        return "WebSocket handshake needs Connection: Upgrade"
    if _header(request, b"sec-websocket-version") != b"13":
        return "WebSocket handshake needs Sec-WebSocket-Version: 13"
    if not _header(request, b"sec-websocket-key"):
        return "WebSocket handshake needs Sec-WebSocket-Key"
    return None


def extract_token(request: h11.Request) -> str | None:
    """The credential from `?token=` or, failing that, `Authorization: Bearer <token>`."""
    query = urlsplit(request.target.decode("latin-1")).query
    values = parse_qs(query, keep_blank_values=True).get("token")
    if values:
        return values[0]
    authorization = _header(request, b"authorization")
    if authorization is not None:
        scheme, _, credential = authorization.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            return credential.strip()
    return None


def token_matches(token: str | None, keys: Sequence[str]) -> bool:
    """Constant-time check of `token` against every configured key (no early exit)."""
    if token is None:
        return False
    presented = token.encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key.encode("utf-8"))
    return matched


def replay_head(request: h11.Request, trailing: bytes) -> bytes:
    """Re-serialise a parsed request head (original header casing) plus any bytes after it."""
    lines = [b"%s %s HTTP/1.1" % (request.method, request.target)]
    lines.extend(b"%s: %s" % (name, value) for name, value in request.headers.raw_items())
    return b"\r\n".join(lines) + b"\r\n\r\n" + trailing


@asynccontextmanager
async def frame_reader_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for trio-websocket's frame reader that survives the caller's cancellation.

    A close handshake needs the reader: `aclose()` waits for the peer's close frame, which
    only the reader can see. If the reader died with its caller, every close after an outside
    cancel (server stop, drain deadline) would wait out its whole timeout. So the reader runs
    shielded, and is cancelled only when this block exits, after the caller's own (shielded,
    time-bounded) close has finished.
    """
    async with trio.open_nursery() as holder:
        scope, nursery = await holder.start(_hold_shielded_nursery)
        try:
            yield nursery
        finally:
            scope.cancel()


async def _hold_shielded_nursery(
    task_status: trio.TaskStatus[tuple[trio.CancelScope, trio.Nursery]],
) -> None:
    with trio.CancelScope(shield=True) as scope:
        async with trio.open_nursery() as nursery:
            task_status.started((scope, nursery))
            await trio.sleep_forever()


async def open_websocket(
    nursery: trio.Nursery, stream: PrefixedStream, max_message_size: int
) -> WebSocketConnection:
    """Complete the opening handshake on `stream`; the frame reader runs in `nursery`."""
    request = await trio_websocket.wrap_server_stream(
        nursery, stream, message_queue_size=INBOUND_QUEUE, max_message_size=max_message_size
    )
    return await request.accept()


async def send_frames(ws: WebSocketConnection, frames: bytes) -> None:
    """Write pre-built data frames (protocol/frames.py) on an open WebSocket.

    This is the fan-out's fast path, the one seam where we go under trio-websocket's API:
    `send_message` frames every message per connection, while a broadcast frame is the same
    bytes for everyone. Ordering with the library's own frames (pongs, close) is kept by
    taking the same FIFO stream lock its `_send` takes, and nothing is written once the
    close handshake has started. Depends on trio-websocket 0.12's private `_stream`,
    `_stream_lock` and `_wsproto` (pinned < 0.13; tests/test_fast_path.py guards them).

    Raises:
        ConnectionClosed: the connection is closed or closing, or the transport broke.
    """
    async with ws._stream_lock:
        if ws._wsproto.state is not ConnectionState.OPEN:
            raise ConnectionClosed(ws.closed)
        try:
            await ws._stream.send_all(frames)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise ConnectionClosed(ws.closed) from None


async def linger_close(stream: trio.abc.Stream, grace: float) -> None:
    """Close `stream` without a TCP reset eating our close frame.

    Closing a socket with unread input sends RST, and the peer may then never see the close
    frame we just wrote (a 1009 after an oversize message is the usual case). So: send FIN,
    read and discard until the peer closes or `grace` seconds pass, then close.
    """
    with trio.CancelScope(shield=True), trio.move_on_after(grace):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            while await stream.receive_some(RECEIVE_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
    await trio.aclose_forcefully(stream)
