"""One live WebSocket of the client: the writer, the reply slots, opening the stream.

Owns the writer (the only task that sends frames on a connection) and matching replies to
requests: a request is queued with a reply slot, which the writer files just before it sends
the frame; the server answers requests one by one, so the reader takes slots first in, first
out. What a reply means for the client's subscriptions and positions is gateway.py's
(`GatewayClient._settle`).

Must not: read frames, track positions, or outlive the connection (`drop` fails every slot
still open).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from typing import Any

import attrs
import trio
import trio_websocket

from .positions import Position
from .urls import Endpoint

# Frames queued for the writer; a request beyond this waits for room (backpressure on callers).
OUTGOING_DEPTH = 64


async def _open_stream(
    endpoint: Endpoint,
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    """The TCP (or TLS) stream a WebSocket handshake is made over."""
    if endpoint.tls:
        return await trio.open_ssl_over_tcp_stream(
            endpoint.host, endpoint.port, https_compatible=True
        )
    return await trio.open_tcp_stream(endpoint.host, endpoint.port)


class _Dropped(Exception):
    """The connection a request was made on ended before its reply arrived."""


@attrs.frozen
class _Intent:
    """What a request asks for, so the reader can account its reply
    (`GatewayClient._settle`)."""

    subscribe: bool
    # None: unsubscribe from everything.
    key: str | None
    fields: Mapping[str, str]
    since: Position | None = None
    # Sent by `GatewayClient._restore`: a failed recovery is the application's to hear of,
    # not a caller's.
    restore: bool = False


@attrs.define(eq=False)
class _Reply:
    """The slot a request's reply is put in, for the task awaiting it."""

    intent: _Intent | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    # None once done means the connection dropped first.
    message: dict[str, Any] | None = None

    def resolve(self, message: dict[str, Any] | None) -> None:
        self.message = message
        self.done.set()

    async def wait(self) -> dict[str, Any]:
        await self.done.wait()
        if self.message is None:
            raise _Dropped
        return self.message


_Outgoing = tuple[str, _Reply | None]


class _Connection:
    """One live WebSocket: its writer queue and the reply slots awaiting an answer."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, client_id: str) -> None:
        self.ws = ws
        self.client_id = client_id
        self._pending: deque[_Reply] = deque()
        self._send, self._receive = trio.open_memory_channel[_Outgoing](OUTGOING_DEPTH)

    async def request(self, message: Mapping[str, Any], intent: _Intent | None = None) -> _Reply:
        """Queue a request frame; the returned slot receives the server's reply."""
        reply = _Reply(intent)
        await self.send(json.dumps(message, separators=(",", ":")), reply)
        return reply

    async def send(self, text: str, reply: _Reply | None = None) -> None:
        try:
            await self._send.send((text, reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _Dropped from None

    def take_reply(self) -> _Reply | None:
        return self._pending.popleft() if self._pending else None

    async def write_loop(self) -> None:
        async for text, reply in self._receive:
            if reply is not None:
                self._pending.append(reply)
            try:
                await self.ws.send_message(text)
            except trio_websocket.ConnectionClosed:
                return

    def drop(self) -> None:
        """Fail every request still queued or awaiting a reply; refuse new ones."""
        self._send.close()
        while True:
            try:
                _text, reply = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if reply is not None:
                reply.resolve(None)
        self._receive.close()
        while self._pending:
            self._pending.popleft().resolve(None)
