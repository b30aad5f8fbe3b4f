"""The server side of one WebSocket over a Trio stream: the only server module on wsproto.

Theory of operation
-------------------
http_api.py reads the upgrade request with h11 and answers `101 Switching Protocols`
(`accept_headers`), then hands over the stream and any bytes already read after the head.
From there `WebSocket` drives wsproto's frame layer (`wsproto.connection.Connection`):

- `receive()` is called by one task, the connection's reader. It reads the socket, lets
  wsproto parse and validate frames (masking, opcodes, UTF-8, fragmentation), answers pings
  with pongs, enforces the message size limit (close 1009), answers a peer's close frame, and
  fails the connection with the close code wsproto chose on a protocol error (1002/1007).
- `send_frames()` writes data frames built once by protocol/frames.py: a broadcast frame is
  the same bytes for every recipient (no extension is ever negotiated), so nothing is framed
  per connection. Frames leave in whole writes under one FIFO lock shared with pongs and the
  close frame, so control frames never tear a data frame and nothing follows a close.
- `send_close()` sends our close frame without waiting for the answer. The peer's answer,
  and its TCP close, are awaited by `linger_close`, which half-closes and drains the socket:
  closing with unread input would send a TCP reset that can destroy the close frame in
  flight (a 1009 after an oversize message is the usual case).

One reader task and one writer task per connection, no channel inside: this module owns the
per-connection cost of the WebSocket layer, which is what an idle connection costs.

Must not know about hubs, subscriptions or message types; must not log tokens.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason as WsCloseCode
from wsproto.utilities import generate_accept_token

from .protocol.errors import CloseReason, message_too_big

WS_PATH = "/api/ws"
# Diagnostics echo endpoint, served only with `enable_echo`.
ECHO_PATH = "/api/echo"
# Bytes read from the socket per receive call.
RECEIVE_SIZE = 64 * 1024
# How a connection ended when the transport went away without a close frame (RFC 6455 1006).
CONNECTION_LOST = CloseReason(WsCloseCode.ABNORMAL_CLOSURE, "connection lost")


class ConnectionClosed(Exception):
    """The WebSocket is closed (or closing); `closed` says how."""

    def __init__(self, closed: CloseReason) -> None:
        super().__init__(f"{closed.code} {closed.reason}".strip())
        self.closed = closed


# --- the opening handshake (pure functions over the parsed h11 request) ----------------------


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


def accept_headers(request: h11.Request) -> list[tuple[bytes, bytes]]:
    """Headers of the 101 answer to a valid handshake (no subprotocol, no extension)."""
    key = _header(request, b"sec-websocket-key") or b""
    return [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", generate_accept_token(key)),
    ]


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


# --- the open connection -------------------------------------------------------------------


def _utf8_size_exceeds(text: str, limit: int) -> bool:
    # UTF-8 needs at most 4 bytes a character, so short texts skip the encode.
    return len(text) * 4 > limit and len(text.encode("utf-8")) > limit


class WebSocket:
    """One accepted server-side WebSocket on `stream`. See the module docstring."""

    def __init__(self, stream: trio.abc.Stream, trailing: bytes, max_message_size: int) -> None:
        self.stream = stream
        # The socket, for the write fast path; None for other streams (tests run over
        # in-memory streams, which always take the general path).
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._limit = max_message_size
        self._protocol = Connection(ConnectionType.SERVER)
        self._send_lock = trio.StrictFIFOLock()
        self._pending = trailing
        self._parts: list[Any] = []
        self._size = 0
        self.closed: CloseReason | None = None
        #: True while a frame has been written only in part: the stream is unusable for
        #: anything but the rest of it (so, if cut off there, no close frame can follow).
        self.incomplete = False

    async def receive(self) -> str | bytes:
        """The next whole message from the peer.

        Raises:
            ConnectionClosed: the peer closed (its code), the transport ended (1006), a
                protocol error (1002/1007, our close frame sent) or an oversize message
                (1009, our close frame sent).
        """
        while True:
            for event in self._protocol.events():
                if isinstance(event, TextMessage | BytesMessage):
                    message = self._collect(event)
                    if message is not None:
                        return message
                    if self.closed is not None:
                        await self.send_close(self.closed.code, self.closed.reason)
                        raise ConnectionClosed(self.closed)
                elif isinstance(event, Ping):
                    await self._send_control(event.response())
                elif isinstance(event, CloseConnection):
                    await self._closed_by_peer(event)
            if self.closed is not None:
                raise ConnectionClosed(self.closed)
            data = self._pending or await self._receive_some()
            self._pending = b""
            self._protocol.receive_data(data)

    def _collect(self, event: TextMessage | BytesMessage) -> str | bytes | None:
        # Whole messages come back; fragments are kept until the last one. Characters count
        # as bytes while collecting (a text is never shorter in bytes than in characters),
        # and the exact UTF-8 size is checked once the message is whole.
        self._parts.append(event.data)
        self._size += len(event.data)
        if self._size > self._limit:
            self.closed = message_too_big(self._limit)
            self._parts, self._size = [], 0
            return None
        if not event.message_finished:
            return None
        parts, self._parts, self._size = self._parts, [], 0
        if isinstance(event, TextMessage):
            text = "".join(parts)
            if _utf8_size_exceeds(text, self._limit):
                self.closed = message_too_big(self._limit)
                return None
            return text
        return b"".join(parts)

    async def _closed_by_peer(self, event: CloseConnection) -> None:
        # Also how wsproto reports a protocol error: a CloseConnection with 1002/1007 while
        # the connection is still open, which we then send ourselves.
        if self.closed is None:
            self.closed = CloseReason(event.code, event.reason or "")
        if self._protocol.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            await self._send_control(event.response())

    async def _receive_some(self) -> bytes:
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = self.closed or CONNECTION_LOST
            raise ConnectionClosed(self.closed)
        return bytes(data)

    async def send_frames(self, frames: bytes) -> None:
        """Write pre-built data frames (protocol/frames.py), in one write.

        Raises:
            ConnectionClosed: the connection is closing or closed, or the transport broke.
        """
        # The lock is almost always free (only a pong or the close frame contends for it):
        # taking it without a scheduling round trip is a large share of a small write's cost.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            if self._protocol.state is not ConnectionState.OPEN:
                raise ConnectionClosed(self.closed or CONNECTION_LOST)
            await self._write(frames)
        finally:
            self._send_lock.release()

    async def send_close(self, code: int, reason: str) -> None:
        """Send our close frame unless one was sent already; does not wait for the answer."""
        if self.closed is None:
            self.closed = CloseReason(code, reason)
        await self._send_control(CloseConnection(code=code, reason=reason))

    async def _send_control(self, event: CloseConnection | Pong) -> None:
        # wsproto allows a pong only while open, and a close while open or answering the
        # peer's close; anything else is a frame that must not go out any more.
        allowed: tuple[ConnectionState, ...] = (ConnectionState.OPEN,)
        if isinstance(event, CloseConnection):
            allowed = (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)
        async with self._send_lock:
            if self._protocol.state in allowed:
                await self._write(self._protocol.send(event))

    def try_write(self, frames: bytes) -> int:
        """Write data frames now, without waiting, if nothing else is writing.

        The fan-out's shortcut past an idle writer task (outbox.py). Returns the number of
        bytes the kernel took (the caller queues the rest for the writer), or -1 when it
        cannot write now: another write in progress, not open, not a socket, or an error
        (which the writer then meets and reports).
        """
        if (
            self._socket is None
            or self._send_lock.locked()
            or self._protocol.state is not ConnectionState.OPEN
        ):
            return -1
        try:
            written = os.write(self._socket.fileno(), frames)
        except BlockingIOError:
            return 0
        except OSError:
            return -1
        self.incomplete = written < len(frames)
        return written

    async def _write(self, data: bytes) -> None:
        # Fast path on a TCP socket: one plain non-blocking write(2), which the kernel almost
        # always takes whole. trio's send_all would add two scheduling points per write, and
        # a fan-out does one write per recipient. Whatever does not fit right away goes
        # through send_all, which waits for the socket to become writable.
        sent = 0
        if self._socket is not None:
            try:
                # fileno() is read each time: it is -1 once the socket is closed (EBADF
                # below), never a stale number that a newer connection may have been given.
                sent = os.write(self._socket.fileno(), data)
            except BlockingIOError:
                pass
            except OSError:
                self.closed = self.closed or CONNECTION_LOST
                raise ConnectionClosed(self.closed) from None
        if sent == len(data):
            self.incomplete = False
            return
        self.incomplete = True
        try:
            await self.stream.send_all(memoryview(data)[sent:])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = self.closed or CONNECTION_LOST
            raise ConnectionClosed(self.closed) from None
        self.incomplete = False


async def linger_close(stream: trio.abc.Stream, grace: float) -> None:
    """Close `stream` without a TCP reset eating what we wrote last.

    Send FIN, read and discard until the peer closes or `grace` seconds pass, then close.
    Shielded: it is cleanup, and runs even while the caller is being cancelled.
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
