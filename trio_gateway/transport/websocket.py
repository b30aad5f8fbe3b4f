"""The server side of one WebSocket over a Trio stream: the only server module on wsproto.

Theory of operation
-------------------
transport/http.py reads the upgrade request with h11 and answers `101 Switching Protocols`
(`accept_headers`), then hands over the stream and any bytes already read after the head.
From there `WebSocket` drives wsproto's frame layer (`wsproto.frame_protocol.FrameProtocol`)
and keeps the connection state itself:

- `receive()` is called by one task, the connection's reader. It reads the socket, lets
  wsproto parse and validate frames (masking, opcodes, UTF-8, fragmentation), answers pings
  with pongs, enforces the message size and fragment count limits (close 1009), answers a
  peer's close frame, and
  fails the connection with the close code wsproto chose on a protocol error (1002/1007).
- `send_frames()` writes data frames built once by protocol/frames.py: a broadcast frame is
  the same bytes for every recipient (no extension is ever negotiated), so nothing is framed
  per connection. Frames leave in whole writes under one FIFO lock shared with pongs and the
  close frame, so control frames never tear a data frame and nothing follows a close.
- `send_close()` sends our close frame without waiting for the answer. The peer's answer,
  and its TCP close, are awaited by `linger_close`, which half-closes and drains the socket:
  closing with unread input would send a TCP reset that can destroy the close frame in
  flight (a 1009 after an oversize message is the usual case).

One reader task per connection, and a writer task while some frames cannot be written at
once, no channel inside: this module owns the per-connection cost of the WebSocket layer,
which is what an idle connection costs. Hence
what may look like hand-rolled parts, each there because tracemalloc showed what it saves
per idle connection (docs/PERFORMANCE.md): wsproto's `Connection` is not used (its event
deque), a connection keeps no frame parser between messages (`_parser_disposable`), the send
lock is a flag with a waiting queue made only under contention, and the reader waits on the
socket itself rather than through trio's stream and socket layers, whose coroutine frames are
held for as long as the connection is idle, and with a `Readiness` (transport/readiness.py)
in one trap rather than through trio's I/O manager.

Every frame the peer sends, control frames included, is shown to the connection's `gate`
(`FrameGate`) before it is acted on: that is how the session knows the peer is alive (any
frame counts) and limits its frame rate, since pings and pongs never reach the reader.

Must not know about hubs, subscriptions, message types or credentials (session/auth.py).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence
from typing import Protocol, cast

import trio
from wsproto.connection import ConnectionState
from wsproto.frame_protocol import CloseReason as WsCloseCode
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode, ParseFailed
from wsproto.utilities import generate_accept_token

from ..protocol.errors import CloseReason, framing_failure, message_too_big, too_many_fragments
from ..protocol.headers import header, header_tokens, header_values
from .readiness import Readiness

# Bytes read from the socket per receive call.
RECEIVE_SIZE = 64 * 1024
# How a connection ended when the transport went away without a close frame (RFC 6455 1006).
CONNECTION_LOST = CloseReason(WsCloseCode.ABNORMAL_CLOSURE, "connection lost")
# Builds our pong and close frames. Control frames need no per-connection state (only data
# messages carry fragmentation state on the sending side, and this module sends none).
_CONTROL_FRAMES = FrameProtocol(client=False, extensions=[])


class FrameGate(Protocol):
    """Shown every frame the peer sends, as it is parsed: the session's `Client`, or its
    frame bucket alone before it is registered (session/ratelimit.py)."""

    def admit(self, now: float) -> bool:
        """Note a frame received at `now`; False refuses it (the peer sends too fast)."""
        ...


class DirectSink(Protocol):
    """Where a connection publishes the descriptor others may write data frames to."""

    #: The descriptor, while a whole frame may be written to it right now without waiting
    #: (no write in progress, the connection open); otherwise -1.
    fd: int


class FrameRefused(Exception):
    """The gate refused a frame: the connection is still open, for the caller to close."""


class ConnectionClosed(Exception):
    """The WebSocket is closed (or closing); `closed` says how."""

    def __init__(self, closed: CloseReason) -> None:
        super().__init__(f"{closed.code} {closed.reason}".strip())
        self.closed = closed


# --- the opening handshake (pure functions over the parsed h11 request) ----------------------


class RequestHead(Protocol):
    """What the handshake reads of a request: an h11.Request, or the same with its headers
    in a plain list (transport/http.py)."""

    @property
    def method(self) -> bytes: ...

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]: ...


def is_upgrade(request: RequestHead) -> bool:
    """True when the client asks to switch to WebSocket (valid or not)."""
    return b"websocket" in header_tokens(request.headers, b"upgrade")


# RFC 6455 4.2.2: a server that does not speak the client's version answers 426 with the
# versions it does speak.
VERSION_STATUS = 426
VERSION_HEADERS = [(b"sec-websocket-version", b"13")]
# Bytes a Sec-WebSocket-Key decodes to (RFC 6455 4.1: a random 16-byte nonce, base64).
KEY_BYTES = 16


def handshake_problem(request: RequestHead) -> tuple[int, str] | None:
    """The status and reason to refuse an upgrade request that is not a valid RFC 6455
    opening handshake with (400, or 426 for another protocol version), or None."""
    if request.method != b"GET":
        return 400, "WebSocket handshake must use GET"
    if b"upgrade" not in header_tokens(request.headers, b"connection"):
        return 400, "WebSocket handshake needs Connection: Upgrade"
    # Refused rather than waited for: a body that never comes would hold the connection.
    length = header(request.headers, b"content-length")
    if header(request.headers, b"transfer-encoding") is not None or length not in (None, b"0"):
        return 400, "WebSocket handshake must not have a body"
    if list(header_values(request.headers, b"sec-websocket-version")) != [b"13"]:
        return VERSION_STATUS, "WebSocket handshake needs Sec-WebSocket-Version: 13"
    keys = list(header_values(request.headers, b"sec-websocket-key"))
    if len(keys) != 1 or not _valid_key(keys[0]):
        return 400, "WebSocket handshake needs one Sec-WebSocket-Key: 16 bytes in base64"
    return None


def _valid_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == KEY_BYTES
    except binascii.Error:
        return False


def accept_headers(request: RequestHead) -> list[tuple[bytes, bytes]]:
    """Headers of the 101 answer to a valid handshake (no subprotocol, no extension)."""
    key = header(request.headers, b"sec-websocket-key") or b""
    return [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", generate_accept_token(key)),
    ]


# --- the open connection -------------------------------------------------------------------


def _utf8_size_exceeds(text: str, limit: int) -> bool:
    # UTF-8 needs at most 4 bytes a character, so short texts skip the encode.
    return len(text) * 4 > limit and len(text.encode("utf-8")) > limit


def _whole_frames(data: bytes) -> bool:
    """True if `data` is exactly a run of complete frames, none of them part of a fragmented
    message: a parser fed nothing but `data` ends up back in its initial state."""
    end = len(data)
    at = 0
    while at < end:
        if end - at < 2:
            return False
        first, second = data[at], data[at + 1]
        # FIN clear: a fragment follows; opcode 0: this continues an earlier fragment.
        if not first & 0x80 or not first & 0x0F:
            return False
        length = second & 0x7F
        at += 2
        if length == 126:
            length = int.from_bytes(data[at : at + 2], "big")
            at += 2
        elif length == 127:
            length = int.from_bytes(data[at : at + 8], "big")
            at += 8
        if second & 0x80:
            at += 4  # the masking key
        at += length
    return at == end


class WebSocket:
    """One accepted server-side WebSocket on `stream`. See the module docstring."""

    __slots__ = (
        "_fd",
        "_held_for_rest",
        "_limit",
        "_max_fragments",
        "_parser",
        "_parser_disposable",
        "_parts",
        "_pending",
        "_readiness",
        "_sink",
        "_size",
        "_socket",
        "_state",
        "_write_queue",
        "_writing",
        "closed",
        "gate",
        "incomplete",
        "stream",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        trailing: bytes,
        max_message_size: int,
        max_fragments: int = 1024,
        readiness: Readiness | None = None,
    ) -> None:
        self.stream = stream
        # Where the reader waits for input on a socket (None: trio's own wait).
        self._readiness = readiness
        # The socket, for the read and write fast paths; None for other streams (tests run
        # over in-memory streams, which always take the general path).
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        # What `lend_fd` publishes: the number, not the trio wrapper's fileno(). Valid as
        # long as the connection's session runs; the session withdraws it before the socket
        # can be closed (session/connection.py).
        self._fd = -1 if self._socket is None else self._socket.fileno()
        self._sink: DirectSink | None = None
        self._limit = max_message_size
        # Frames one message may span. The size limit alone lets empty continuation frames
        # pile up forever: each costs a list slot (and a wsproto frame) but no payload byte.
        self._max_fragments = max_fragments
        self._state = ConnectionState.OPEN
        # Made when data arrives, and dropped once its messages are all taken if that data
        # held nothing but whole messages (`_parser_disposable`): an idle connection then
        # holds no parser at all, some 750 bytes of wsproto objects.
        self._parser: FrameProtocol | None = None
        self._parser_disposable = False
        self._pending = trailing
        # Fragments of a message still being received (None: not inside a fragmented one);
        # its length is the count of fragments so far, at most `max_fragments`.
        self._parts: list[str | bytes] | None = None
        self._size = 0
        # The send lock: held while `_writing`; tasks waiting for it park in `_write_queue`
        # (FIFO), made only once two writes ever contend.
        self._writing = False
        self._write_queue: trio.lowlevel.ParkingLot | None = None
        # The lock is held for the rest of a frame a direct write began (`wrote_partly`),
        # which the next `send_frames` writes.
        self._held_for_rest = False
        self.closed: CloseReason | None = None
        #: Shown every frame received; None: every frame is admitted.
        self.gate: FrameGate | None = None
        #: True while a frame has been written only in part: the stream is unusable for
        #: anything but the rest of it (so, if cut off there, no close frame can follow).
        self.incomplete = False

    async def receive(self) -> str | bytes:
        """The next whole message from the peer.

        Raises:
            ConnectionClosed: the peer closed (its code), the transport ended (1006), a
                protocol error (1002/1007, our close frame sent) or an oversize message
                (1009, our close frame sent), or a message in more than `max_fragments`
                frames (1009 likewise).
            FrameRefused: the gate refused a frame; nothing was sent, the caller closes.
        """
        while True:
            if self._parser is not None:
                message = await self._next_message(self._parser)
                if message is not None:
                    return message
            if self.closed is not None:
                # Nothing more is read: the parser's buffer (up to a read's worth of
                # unparsed frames) goes now, not whenever the connection's objects do.
                self._parser = None
                raise ConnectionClosed(self.closed)
            data, self._pending = self._pending, b""
            sock = self._socket
            if not data and sock is None:
                data = await self._receive_from_stream()
            elif not data and sock is not None:
                # trio's SocketStream.receive_some does the same (try, else wait until
                # readable, and a checkpoint either way), but through five more coroutine
                # frames, which an idle connection would hold all the time it waits here.
                await trio.lowlevel.checkpoint_if_cancelled()
                read = self._read_now()
                if read is None:
                    try:
                        while read is None:
                            if self._readiness is None:
                                await trio.lowlevel.wait_readable(sock)
                            else:
                                # One trap instead of trio's I/O manager frames, and not in
                                # a method of its own: its frame would be held as well.
                                self._readiness.expect(self._fd)
                                await trio.lowlevel.wait_task_rescheduled(self._stop_waiting)
                            read = self._read_now()
                    except (trio.ClosedResourceError, OSError):
                        read = b""
                else:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                data = read
            if not data:
                self.closed = self.closed or CONNECTION_LOST
                raise ConnectionClosed(self.closed)
            if self._parser is None:
                self._parser = FrameProtocol(client=False, extensions=[])
                self._parser_disposable = _whole_frames(data)
            else:
                self._parser_disposable = False
            self._parser.receive_bytes(data)

    def _stop_waiting(self, _: object) -> trio.lowlevel.Abort:
        assert self._readiness is not None
        self._readiness.forget(self._fd)
        return trio.lowlevel.Abort.SUCCEEDED

    def _read_now(self) -> bytes | None:
        """What the socket holds (b"": the transport ended), or None if nothing yet."""
        assert self._socket is not None
        try:
            # fileno() is read each time: it is -1 once the socket is closed (EBADF below).
            return os.read(self._socket.fileno(), RECEIVE_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    async def _receive_from_stream(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def _next_message(self, parser: FrameProtocol) -> str | bytes | None:
        """The next whole message among the frames received so far; None when they hold no
        more (then `closed` says whether that is because the connection is closing)."""
        try:
            gate = self.gate
            for frame in parser.received_frames():
                if gate is not None and not gate.admit(trio.current_time()):
                    raise FrameRefused
                opcode = frame.opcode
                if opcode is Opcode.PING:
                    assert isinstance(frame.payload, bytes)
                    await self._send_pong(frame.payload)
                elif opcode is Opcode.CLOSE:
                    assert isinstance(frame.payload, tuple)
                    await self._closed_by_peer(*frame.payload)
                elif opcode is not Opcode.PONG:
                    message = self._collect(frame)
                    if message is not None:
                        return message
                    if self.closed is not None:
                        await self.send_close(self.closed.code, self.closed.reason)
                        return None
        except ParseFailed as exc:
            # A protocol error (1002), or text that is not UTF-8 (1007): fail the connection.
            failure = framing_failure(exc.code)
            await self.send_close(failure.code, failure.reason)
            return None
        if self._parser_disposable:
            self._parser = None
        return None

    def _collect(self, frame: Frame) -> str | bytes | None:
        # Whole messages come back; fragments are kept until the last one. Characters count
        # as bytes while collecting (a text is never shorter in bytes than in characters),
        # and the exact UTF-8 size is checked once the message is whole.
        data = frame.payload
        assert isinstance(data, str | bytes)
        size = self._size + len(data)
        if size > self._limit:
            self.closed = message_too_big(self._limit)
            self._parts, self._size = None, 0
            return None
        if self._parts is not None and len(self._parts) >= self._max_fragments:
            # This frame would be one more than a message may span, final or not.
            self.closed = too_many_fragments(self._max_fragments)
            self._parts, self._size = None, 0
            return None
        if not frame.message_finished:
            if self._parts is None:
                self._parts = []
            self._parts.append(data)
            self._size = size
            return None
        if self._parts is not None:
            # wsproto decodes every fragment of a text message to str, of a binary one to bytes.
            parts, self._parts, self._size = [*self._parts, data], None, 0
            if isinstance(data, str):
                data = "".join(cast("list[str]", parts))
            else:
                data = b"".join(cast("list[bytes]", parts))
        if isinstance(data, str) and _utf8_size_exceeds(data, self._limit):
            self.closed = message_too_big(self._limit)
            return None
        return data

    async def _closed_by_peer(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = CloseReason(code, reason)
        if self._state is ConnectionState.LOCAL_CLOSING:
            # The answer to our own close frame: the closing handshake is complete.
            self._state = ConnectionState.CLOSED
        elif self._state is ConnectionState.OPEN:
            self._state = ConnectionState.REMOTE_CLOSING
            self._publish_fd()
            await self._send_close_frame(code, reason)

    @property
    def owes_close(self) -> bool:
        """The peer's close frame came and our answer has not gone out yet (the writer held
        the stream when it came, and the reader was cancelled while waiting for it)."""
        return self._state is ConnectionState.REMOTE_CLOSING

    async def send_frames(self, frames: bytes) -> None:
        """Write pre-built data frames (protocol/frames.py), in one write.

        Raises:
            ConnectionClosed: the connection is closing or closed, or the transport broke.
        """
        # The lock is almost always free (only a pong or the close frame contends for it):
        # taking it without a scheduling round trip is a large share of a small write's cost.
        rest = self._held_for_rest
        if rest:
            # Already ours; and the rest goes out even if a close came meanwhile, since
            # nothing else can follow a torn frame.
            self._held_for_rest = False
        elif self._writing:
            await self._wait_for_lock()
        else:
            self._take_lock()
        try:
            if not rest and self._state is not ConnectionState.OPEN:
                raise ConnectionClosed(self.closed or CONNECTION_LOST)
            await self._write(frames)
        finally:
            self._release_lock()

    async def send_close(self, code: int, reason: str) -> None:
        """Send our close frame unless one was sent already; does not wait for the answer."""
        if self.closed is None:
            self.closed = CloseReason(code, reason)
        await self._send_close_frame(code, reason)

    async def _send_close_frame(self, code: int, reason: str) -> None:
        if self._writing:
            await self._wait_for_lock()
        else:
            self._take_lock()
        try:
            # A close goes out once: while open (ours first), or answering the peer's. The
            # state moves on once it is written: a write cancelled before it began (the
            # reader cancelled while waiting for the writer) leaves the answer still owed.
            if self._state is ConnectionState.OPEN:
                after = ConnectionState.LOCAL_CLOSING
            elif self._state is ConnectionState.REMOTE_CLOSING:
                after = ConnectionState.CLOSED
            else:
                return
            await self._write(bytes(_CONTROL_FRAMES.close(code, reason)))
            self._state = after
        finally:
            self._release_lock()

    async def _send_pong(self, payload: bytes) -> None:
        if self._writing:
            await self._wait_for_lock()
        else:
            self._take_lock()
        try:
            # Nothing but the rest of the closing handshake may follow a close frame.
            if self._state is ConnectionState.OPEN:
                await self._write(bytes(_CONTROL_FRAMES.pong(payload)))
        finally:
            self._release_lock()

    async def _wait_for_lock(self) -> None:
        # The holder hands the lock over in `_release_lock` (`_writing` stays True), so the
        # order is first come, first served and nobody can barge in between.
        if self._write_queue is None:
            self._write_queue = trio.lowlevel.ParkingLot()
        await self._write_queue.park()

    def _take_lock(self) -> None:
        self._writing = True
        if self._sink is not None:
            self._sink.fd = -1

    def _release_lock(self) -> None:
        if self._write_queue:
            self._write_queue.unpark()
        else:
            self._writing = False
            self._publish_fd()

    def lend_fd(self, sink: DirectSink | None) -> None:
        """Keep `sink.fd` set to the descriptor data frames may be written to right now,
        without waiting, and to -1 while not: while another write is in progress, once the
        connection is closing, or always when the stream is not a socket. None withdraws it
        (the last sink's `fd` becomes -1).

        The fan-out's shortcut past an idle writer task (outbox.py): kept in step here, at
        each change of the send lock and the state, rather than asked for, because a
        fan-out reads it once per recipient and the connection's object is then one more
        cold one to touch. A write error is left for the writer, which meets it again and
        reports it.
        """
        if self._sink is not None:
            self._sink.fd = -1
        self._sink = sink
        self._publish_fd()

    def _publish_fd(self) -> None:
        if self._sink is not None:
            usable = not self._writing and self._state is ConnectionState.OPEN
            self._sink.fd = self._fd if usable else -1

    def wrote_partly(self) -> None:
        """A direct write (made while the lock was free) stopped inside a frame: the writer
        sends the rest next, with the first `send_frames`, and the lock is held for it until
        then, so that no pong or close frame goes out inside the frame."""
        self.incomplete = True
        self._take_lock()
        self._held_for_rest = True

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
        if not sent:
            # Cancelled before a byte went out: the stream is as good as before.
            await trio.lowlevel.checkpoint_if_cancelled()
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
