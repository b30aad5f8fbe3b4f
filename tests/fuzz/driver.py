"""The fuzz targets' client: raw bytes into a real in-memory gateway, and what came back.

Owns one exchange at a time over a fresh `memory_stream_pair` connection: write the input,
let the gateway run until every task waits (`wait_all_tasks_blocked`: in memory there is no
I/O in flight, so a quiet gateway is one waiting for more input), then half-close and let it
finish. Judging the outcome is the caller's; this module only records it, with every log
record of WARNING and above the gateway wrote meanwhile. Must not decide what is allowed.

The exchanges run in the gateway's Trio loop; hypothesis runs in a worker thread and calls
in with `trio.from_thread.run`, so one gateway serves every example.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    RejectConnection,
    Request,
    TextMessage,
)

from ..helpers import MemoryListener

RECEIVE_SIZE = 65536


class LogRecords(logging.Handler):
    """Every record of WARNING and above logged under `trio_gateway` while installed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def gateway_log_records() -> Iterator[LogRecords]:
    handler = LogRecords()
    logger = logging.getLogger("trio_gateway")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@attrs.define
class Outcome:
    """What the client saw of one connection, and what the gateway logged meanwhile."""

    #: Every byte the gateway wrote, in order.
    received: bytes = b""
    #: The text of each WebSocket text message (WebSocket exchanges only).
    texts: list[str] = attrs.field(factory=list)
    binary: int = 0
    #: The close frame's (code, reason), if the gateway sent one.
    close: tuple[int, str] | None = None
    #: The gateway ended the connection before the client half-closed.
    gateway_ended_first: bool = False
    #: The upgrade was accepted (101), or refused with this HTTP status (WebSocket only).
    accepted: bool = False
    rejected: int | None = None
    logged: list[logging.LogRecord] = attrs.field(factory=list)


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """One client frame as RFC 6455 lays it out (masked), whatever the payload holds."""
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode & 0xF
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    mask = b"\x11\x22\x33\x44"
    return head + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def text_frame(text: str) -> bytes:
    return masked_frame(0x1, text.encode("utf-8", "surrogatepass"))


class Driver:
    """Opens connections to the gateway behind `listener` and records exchanges."""

    def __init__(self, listener: MemoryListener, records: LogRecords) -> None:
        self._listener = listener
        self._records = records
        self._partial = ""

    async def http(self, request: bytes) -> Outcome:
        """Send `request` (any bytes) as the start of a connection."""
        return await self._exchange(request, None)

    async def websocket(self, target: str, frames: bytes) -> Outcome:
        """Upgrade at `target`, wait for the first frame, then send `frames` (raw bytes)."""
        return await self._exchange(frames, target)

    async def _exchange(self, data: bytes, target: str | None) -> Outcome:
        outcome = Outcome()
        self._partial = ""
        self._records.records.clear()
        stream = await self._listener.connect()
        assert isinstance(stream, trio.abc.HalfCloseableStream)
        client = WSConnection(ConnectionType.CLIENT)
        try:
            parser = client if target is not None else None
            if target is not None:
                await stream.send_all(client.send(Request(host="gateway.fuzz", target=target)))
                outcome.gateway_ended_first = await self._read_until_quiet(stream, client, outcome)
                if not outcome.accepted or outcome.close or outcome.gateway_ended_first:
                    return outcome
            await stream.send_all(data)
            outcome.gateway_ended_first = await self._read_until_quiet(stream, parser, outcome)
            if not outcome.gateway_ended_first:
                # Nothing more is coming from this client: the gateway must wind down.
                await stream.send_eof()
                await self._read_until_quiet(stream, parser, outcome)
        finally:
            await trio.aclose_forcefully(stream)
            # Let the gateway's side of the connection end before the next example starts.
            await trio.testing.wait_all_tasks_blocked()
            outcome.logged = list(self._records.records)
        return outcome

    async def _read_until_quiet(
        self, stream: trio.abc.Stream, client: WSConnection | None, outcome: Outcome
    ) -> bool:
        """Read until every task waits; True if the gateway ended the stream meanwhile."""
        ended = trio.Event()

        async def read() -> None:
            while True:
                try:
                    chunk = await stream.receive_some(RECEIVE_SIZE)
                except trio.ClosedResourceError:
                    chunk = b""
                if not chunk:
                    ended.set()
                    return
                outcome.received += chunk
                if client is not None:
                    client.receive_data(bytes(chunk))
                    for event in client.events():
                        self._record(event, outcome)

        async with trio.open_nursery() as reader_nursery:
            reader_nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            reader_nursery.cancel_scope.cancel()
        return ended.is_set()

    def _record(self, event: Event, outcome: Outcome) -> None:
        if isinstance(event, TextMessage):
            self._partial += event.data
            if event.message_finished:
                outcome.texts.append(self._partial)
                self._partial = ""
        elif isinstance(event, BytesMessage):
            outcome.binary += event.message_finished
        elif isinstance(event, CloseConnection):
            outcome.close = (event.code, event.reason or "")
        elif isinstance(event, AcceptConnection):
            outcome.accepted = True
        elif isinstance(event, RejectConnection):
            outcome.rejected = event.status_code
