"""A Trio client for the gateway's WebSocket side: live subscriptions that survive drops.

Owns the client's half of the wire protocol (the `ready` greeting, subscribe/unsubscribe acks,
answering keepalive pings) and reconnecting with jittered exponential backoff while restoring
every subscription. Publishing over HTTP is http_client.py.

Must not: use the server's runtime (hub, connection, server, http_api) or be imported by it.
The server never depends on its clients; the two share only protocol constants (close codes).
Must not run a task outside the nursery `open_client` owns, so nothing outlives the
`async with` block.

Theory of operation
-------------------
`open_client` owns one nursery holding one background task, `_run`, which loops: connect,
read the `ready` greeting, restore the subscriptions, serve the connection until it closes,
then either reconnect after a backoff delay or stop. Besides trio-websocket's frame reader
(and a short-lived task restoring the subscriptions), each connection runs two tasks:

- the writer is the only task that sends frames. A request (subscribe, unsubscribe) is queued
  with a reply slot, and the writer files the slot just before sending the frame. The server
  answers requests one by one in arrival order, so replies are matched to slots first in,
  first out. A caller cancelled while waiting leaves its slot filed; the late reply fills it
  and the order stays aligned.
- the reader answers pings, fills reply slots and hands application messages to the
  iterator through a bounded buffer. It never blocks on the application: when the buffer is
  full, the client drops the connection and reconnects, the same policy the server applies
  to a slow consumer (close 4008), rather than stall the reader (and with it every pong and
  ack) behind an application that stopped reading.

Failures that end the client (a 4001 close, a subscription the server refuses to restore)
are raised by `_run` and cancel the `async with` body; `open_client` re-raises that single
exception bare rather than as an exception group, as trio-websocket's context managers do.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import attrs
import trio
import trio_websocket

from .protocol.errors import CloseCode

__all__ = [
    "ClientError",
    "ConnectFailed",
    "Disconnected",
    "GatewayClient",
    "SubscriptionError",
    "Unauthorized",
    "backoff_delay",
    "open_client",
    "websocket_url",
]

log = logging.getLogger("trio_gateway.client")

WS_PATH = "/api/ws"
# Seconds we wait for the server to answer our close frame before dropping the socket.
CLOSE_TIMEOUT = 2.0
# Frames queued for the writer; a request beyond this waits for room (backpressure on callers).
OUTGOING_DEPTH = 64
# 2**64 times any sane initial delay exceeds any sane maximum; capping the exponent keeps a
# long outage's attempt count from overflowing a float.
MAX_BACKOFF_EXPONENT = 64
PONG_TEXT = json.dumps({"type": "pong"}, separators=(",", ":"))
REPLY_TYPES = frozenset({"subscribed", "unsubscribed", "error"})


class ClientError(Exception):
    """Base class of every error this module raises on purpose."""


class Unauthorized(ClientError):
    """The gateway rejected the token: WebSocket close 4001, or HTTP 401."""


class ConnectFailed(ClientError):
    """The gateway could not be reached, or it ended the first connection before `ready`."""


class Disconnected(ClientError):
    """The client is no longer connected and will not reconnect.

    Raised by `subscribe`/`unsubscribe` after the connection ended with `reconnect=False`, or
    after the client was closed. `code` is the WebSocket close code, None when the connection
    ended without one (network failure, timeout).
    """

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"{code} {reason}" if code is not None else reason)
        self.code = code
        self.reason = reason


class SubscriptionError(ClientError):
    """The server answered a subscribe or unsubscribe with an `error` message."""


def backoff_delay(
    attempt: int, *, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0 for the first after a drop).

    "Full jitter": uniform over [0, min(maximum, initial * 2**attempt)], so that many clients
    dropped at once (a server restart) do not come back in lockstep.
    """
    ceiling = min(maximum, initial * 2.0 ** min(attempt, MAX_BACKOFF_EXPONENT))
    return (rng or random).uniform(0, ceiling)


def websocket_url(base_url: str) -> str:
    """The gateway's WebSocket URL for an HTTP base URL.

    `http://host:8000` gives `ws://host:8000/api/ws` (https gives wss; a path prefix is kept,
    for a gateway behind a proxy). A ws:// or wss:// URL is returned unchanged.

    Raises:
        ValueError: any other scheme.
    """
    parts = urlsplit(base_url)
    if parts.scheme in ("ws", "wss"):
        return base_url
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"expected an http(s) or ws(s) URL, got {base_url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + WS_PATH, "", ""))


# --- WebSocket client -----------------------------------------------------------------------


@attrs.frozen
class _Closed:
    """How one connection attempt ended: close code (None without a close frame) and why."""

    code: int | None
    reason: str

    def __str__(self) -> str:
        return f"code {self.code} {self.reason!r}" if self.code is not None else self.reason


@attrs.frozen
class _Endpoint:
    """Where a ws:// or wss:// URL points, split the way the handshake needs it."""

    host: str
    port: int
    tls: bool
    host_header: str
    resource: str

    @classmethod
    def parse(cls, url: str) -> _Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"expected a ws:// or wss:// URL, got {url!r}")
        tls = parts.scheme == "wss"
        return cls(
            host=parts.hostname,
            port=parts.port or (443 if tls else 80),
            tls=tls,
            host_header=parts.netloc.rpartition("@")[2],
            resource=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        )

    async def open_stream(self) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        if self.tls:
            return await trio.open_ssl_over_tcp_stream(self.host, self.port, https_compatible=True)
        return await trio.open_tcp_stream(self.host, self.port)


class _Dropped(Exception):
    """The connection a request was made on ended before its reply arrived."""


@attrs.define(eq=False)
class _Reply:
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

    async def request(self, message: Mapping[str, str]) -> _Reply:
        """Queue a request frame; the returned slot receives the server's reply."""
        reply = _Reply()
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


def _subscription_fields(key: str) -> dict[str, str]:
    """The subscribe message fields for an acknowledged key ("all", "workspace:W", ...)."""
    if key == "all":
        return {"scope": "all"}
    kind, _, value = key.partition(":")
    field = {"workspace": "workspace_id", "session": "session_id"}.get(kind)
    if field is None or not value:
        raise ValueError(f'expected "all", "workspace:<id>" or "session:<id>", got {key!r}')
    return {field: value}


def _selection(
    scope: str | None, workspace_id: str | None, session_id: str | None
) -> dict[str, str]:
    given = {
        name: value
        for name, value in (
            ("scope", scope),
            ("workspace_id", workspace_id),
            ("session_id", session_id),
        )
        if value is not None
    }
    if len(given) != 1:
        raise ValueError("give exactly one of scope, workspace_id, session_id")
    return given


def _decode(frame: str | bytes) -> dict[str, Any] | None:
    if isinstance(frame, bytes):
        return None
    try:
        data = json.loads(frame)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class GatewayClient:
    """A subscription to the gateway that survives reconnects; made by `open_client`.

    Iterate it for application messages (`event`, `session.update`, `remote.update`, and an
    `error` the server sends unprompted), each a dict exactly as sent on the wire. Protocol
    chatter (`ready`, acks, `ping`/`pong`) is handled internally.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        subscriptions: Iterable[str],
        reconnect: bool,
        backoff_initial: float,
        backoff_max: float,
        connect_timeout: float,
        heartbeat_grace: float,
        max_buffered: int,
        on_connect: Callable[[str], None] | None,
        rng: random.Random | None,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        self._url = url
        self._endpoint = _Endpoint.parse(url)
        self._headers = (
            [(b"authorization", f"Bearer {token}".encode())] if token is not None else []
        )
        # Acknowledged key -> the subscribe fields that restore it, in subscription order.
        self._subscriptions = {key: _subscription_fields(key) for key in subscriptions}
        self._reconnect = reconnect
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._heartbeat_grace = heartbeat_grace
        self._max_buffered = max_buffered
        self._on_connect = on_connect
        self._rng = rng
        self._sleep = sleep
        self._messages_send, self._messages = trio.open_memory_channel[dict[str, Any]](max_buffered)
        # The open socket (for a polite close), and the connection once its subscriptions are
        # restored (for requests); both None between connections.
        self._socket: trio_websocket.WebSocketConnection | None = None
        self._connection: _Connection | None = None
        self._changed = trio.Event()
        self._established = 0
        self._stopping = False
        self._finished = False
        self._disconnected: Disconnected | None = None

    @property
    def client_id(self) -> str | None:
        """The server's id for the current connection; None while reconnecting."""
        return self._connection.client_id if self._connection is not None else None

    @property
    def subscriptions(self) -> frozenset[str]:
        """Acknowledged subscription keys: "all", "workspace:<id>", "session:<id>"."""
        return frozenset(self._subscriptions)

    @property
    def disconnected(self) -> Disconnected | None:
        """Why the connection ended for good (only with `reconnect=False`), else None."""
        return self._disconnected

    def __aiter__(self) -> GatewayClient:
        return self

    async def __anext__(self) -> dict[str, Any]:
        """The next application message.

        Across reconnects the stream simply continues (messages published while disconnected
        are not replayed). It ends once the client stops for good: after the connection ended
        with `reconnect=False` (see `disconnected`) or the client was closed.
        """
        try:
            return await self._messages.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def subscribe(
        self,
        scope: str | None = None,
        *,
        workspace_id: str | None = None,
        session_id: str | None = None,
    ) -> str:
        """Subscribe to everything (`scope="all"`), a workspace or a session.

        Waits for the server's ack; while reconnecting, waits for the next connection first.
        The subscription is restored on every reconnect.

        Returns:
            The acknowledged key: "all", "workspace:<id>" or "session:<id>".

        Raises:
            ValueError: not exactly one of the three given.
            SubscriptionError: the server answered with an error (e.g. too many subscriptions).
            Disconnected: the client stopped and will not reconnect.
        """
        fields = _selection(scope, workspace_id, session_id)
        reply = await self._request({"type": "subscribe", **fields})
        key = str(reply["subscription"])
        self._subscriptions[key] = fields
        return key

    async def unsubscribe(
        self,
        scope: str | None = None,
        *,
        workspace_id: str | None = None,
        session_id: str | None = None,
    ) -> None:
        """Drop one subscription, given like `subscribe`'s; with no argument, drop them all.

        Raises:
            ValueError: more than one of the three given.
            SubscriptionError: the server answered with an error.
            Disconnected: the client stopped and will not reconnect.
        """
        if scope is None and workspace_id is None and session_id is None:
            await self._request({"type": "unsubscribe"})
            self._subscriptions.clear()
            return
        reply = await self._request(
            {"type": "unsubscribe", **_selection(scope, workspace_id, session_id)}
        )
        self._subscriptions.pop(str(reply["subscription"]), None)

    # --- internals --------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _request(self, message: Mapping[str, str]) -> dict[str, Any]:
        while True:
            while self._connection is None:
                if self._finished:
                    ended = self._disconnected
                    if ended is None:
                        raise Disconnected(None, "the client is closed")
                    raise Disconnected(ended.code, ended.reason)
                await self._changed.wait()
            try:
                reply = await (await self._connection.request(message)).wait()
            except _Dropped:
                # The next connection restores what was acknowledged so far; ask again there.
                continue
            if reply.get("type") == "error":
                raise SubscriptionError(str(reply.get("message")))
            return reply

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        status = task_status
        failures = 0
        try:
            while True:
                before = self._established
                closed = await self._attempt(status)
                if closed.code == CloseCode.UNAUTHORIZED:
                    raise Unauthorized(f"the gateway rejected the token ({closed})")
                if self._stopping:
                    return
                if self._established == 0:
                    raise ConnectFailed(f"cannot connect to {self._url}: {closed}")
                status = trio.TASK_STATUS_IGNORED
                if self._established > before:
                    failures = 0
                if not self._reconnect:
                    self._disconnected = Disconnected(closed.code, closed.reason)
                    log.info("disconnected (%s)", closed)
                    return
                delay = backoff_delay(
                    failures,
                    initial=self._backoff_initial,
                    maximum=self._backoff_max,
                    rng=self._rng,
                )
                failures += 1
                log.warning("disconnected (%s); reconnecting in %.2f s", closed, delay)
                await self._sleep(delay)
        finally:
            self._finished = True
            self._messages_send.close()
            self._notify()

    async def _attempt(self, task_status: trio.TaskStatus[None]) -> _Closed:
        """One connection, from TCP connect to close."""
        endpoint = self._endpoint
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await endpoint.open_stream()
        except OSError as exc:
            return _Closed(None, str(exc))
        except trio.TooSlowError:
            return _Closed(None, "TCP connect timed out")
        # We open and close the socket ourselves: trio-websocket (0.12) never closes a
        # client's stream after the server closed the WebSocket, so it would leak.
        async with stream:
            try:
                with _unwrap_single():
                    async with trio.open_nursery() as nursery:
                        with trio.fail_after(self._connect_timeout):
                            ws = await trio_websocket.wrap_client_stream(
                                nursery,
                                stream,
                                endpoint.host_header,
                                endpoint.resource,
                                extra_headers=self._headers,
                            )
                        self._socket = ws
                        try:
                            closed = await self._serve(ws, task_status)
                            if self._stopping:
                                # open_client is closing this socket, and the close handshake
                                # needs trio-websocket's frame reader (in this nursery): keep
                                # it running until open_client cancels us.
                                await trio.sleep_forever()
                            with trio.move_on_after(CLOSE_TIMEOUT):
                                await ws.aclose()
                            return closed
                        finally:
                            self._socket = None
                            nursery.cancel_scope.cancel()
            except trio_websocket.ConnectionRejected as exc:
                if exc.status_code == 401:
                    return _Closed(CloseCode.UNAUTHORIZED, "handshake rejected with HTTP 401")
                return _Closed(None, f"handshake rejected with HTTP {exc.status_code}")
            except trio.TooSlowError:
                return _Closed(None, "WebSocket handshake timed out")

    async def _serve(
        self, ws: trio_websocket.WebSocketConnection, task_status: trio.TaskStatus[None]
    ) -> _Closed:
        greeting: dict[str, Any] | None = None
        with trio.move_on_after(self._connect_timeout):
            try:
                greeting = _decode(await ws.get_message())
            except trio_websocket.ConnectionClosed as exc:
                return _closed_by(exc)
        if greeting is None or greeting.get("type") != "ready":
            return _Closed(None, "no ready greeting from the server")
        interval = greeting.get("heartbeat_interval")
        # The server pings every heartbeat_interval ms: silence much longer than that means
        # the connection is dead even if TCP has not noticed (a vanished host, a NAT timeout).
        silence_limit = (
            interval / 1000 + self._heartbeat_grace
            if isinstance(interval, int | float) and interval > 0
            else math.inf
        )
        connection = _Connection(ws, str(greeting.get("client_id")))
        try:
            with _unwrap_single():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(connection.write_loop)
                    nursery.start_soon(self._restore, connection, task_status)
                    closed = await self._read_loop(connection, silence_limit)
                    nursery.cancel_scope.cancel()
        finally:
            connection.drop()
            if self._connection is connection:
                self._connection = None
                self._notify()
        return closed

    async def _restore(self, connection: _Connection, task_status: trio.TaskStatus[None]) -> None:
        wanted = list(self._subscriptions.items())
        try:
            # Pipelined: every subscribe goes out before the first ack is awaited.
            replies = [
                await connection.request({"type": "subscribe", **fields}) for _key, fields in wanted
            ]
            for (key, _fields), reply in zip(wanted, replies, strict=True):
                answer = await reply.wait()
                if answer.get("type") == "error":
                    raise SubscriptionError(
                        f"cannot restore subscription {key}: {answer.get('message')}"
                    )
        except _Dropped:
            return
        self._established += 1
        self._connection = connection
        self._notify()
        log.info(
            "connected as %s; subscribed to %s",
            connection.client_id,
            ", ".join(self._subscriptions) or "nothing",
        )
        if self._on_connect is not None:
            self._on_connect(connection.client_id)
        task_status.started()

    async def _read_loop(self, connection: _Connection, silence_limit: float) -> _Closed:
        ws = connection.ws
        while True:
            with trio.move_on_after(silence_limit) as timer:
                try:
                    frame = await ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    return _closed_by(exc)
            if timer.cancelled_caught:
                # Waiting for a dead peer to answer a close frame would only delay the
                # reconnect: drop the socket.
                await trio.aclose_forcefully(ws)
                return _Closed(None, f"no frame from the server for {silence_limit:g} s")
            message = _decode(frame)
            if message is None:
                log.warning("ignoring a frame that is not a JSON object: %.100r", frame)
                continue
            kind = message.get("type")
            if kind == "ping":
                # A failed send means the connection is closing; the next read reports how.
                with suppress(_Dropped):
                    await connection.send(PONG_TEXT)
            elif kind in REPLY_TYPES and (reply := connection.take_reply()) is not None:
                reply.resolve(message)
            elif kind in ("subscribed", "unsubscribed", "pong", "ready"):
                log.debug("ignoring an unexpected %s message", kind)
            else:
                try:
                    self._messages_send.send_nowait(message)
                except trio.WouldBlock:
                    return _Closed(
                        None, f"the application fell {self._max_buffered} messages behind"
                    )


def _closed_by(exc: trio_websocket.ConnectionClosed) -> _Closed:
    if exc.reason is None:
        return _Closed(None, "connection closed")
    return _Closed(exc.reason.code, exc.reason.reason or exc.reason.name)


@contextmanager
def _unwrap_single() -> Iterator[None]:
    """Let a lone exception out of a nursery bare instead of in a one-member group.

    Our nurseries are an implementation detail: a caller should catch `Unauthorized`, not
    `except* Unauthorized`. Groups of several exceptions pass through untouched.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        failure = group.exceptions[0]
    else:
        return
    _reraise(failure)


def _reraise(exc: BaseException) -> NoReturn:
    """Raise `exc` keeping its own `__context__` (not the group it was unwrapped from)."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


@asynccontextmanager
async def open_client(
    url: str,
    token: str | None,
    *,
    subscriptions: Iterable[str] = (),
    reconnect: bool = True,
    backoff_initial: float = 0.5,
    backoff_max: float = 30.0,
    connect_timeout: float = 10.0,
    heartbeat_grace: float = 10.0,
    max_buffered: int = 1024,
    on_connect: Callable[[str], None] | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[None]] = trio.sleep,
) -> AsyncIterator[GatewayClient]:
    """Connect to the gateway; the client lives until the `async with` block ends.

    Entering connects, waits for `ready` and subscribes to `subscriptions`. While the block
    runs, a background task (in a nursery this context manager owns) answers pings, routes
    acks and buffers messages for `async for msg in client`. When a connection ends for any
    reason but 4001 Unauthorized (a server shutdown 1001, a slow-consumer 4008, a network
    failure, refused reconnects), the client waits `backoff_delay(attempt, ...)` and
    reconnects, subscribing again to everything acknowledged so far. Leaving the block closes
    the connection with 1000.

    Args:
        url: the WebSocket URL, e.g. `ws://127.0.0.1:8000/api/ws` (see `websocket_url`).
        token: API key, sent as `Authorization: Bearer`; None sends none.
        subscriptions: keys to subscribe to on connect: "all", "workspace:<id>",
            "session:<id>".
        reconnect: False ends the message stream when the first connection ends instead.
        backoff_initial, backoff_max: seconds; the delay before attempt n (counted from 0,
            reset by every successful connection) is uniform in
            [0, min(backoff_max, backoff_initial * 2**n)].
        connect_timeout: seconds for the TCP connect, handshake and `ready` greeting.
        heartbeat_grace: seconds past the server's announced heartbeat interval without any
            frame after which the connection is presumed dead and replaced.
        max_buffered: application messages held for the iterator; if it falls further
            behind, the connection is dropped and re-established (messages are lost, as they
            would be on the server's slow-consumer close).
        on_connect: called with the server's client id each time a connection is ready and
            its subscriptions are restored, the first included.
        rng, sleep: the jitter source and the backoff sleep, injectable for tests.

    Raises:
        ConnectFailed: the first connection could not be established (later drops are
            retried, never raised).
        Unauthorized: the token was rejected, on the first connection or any reconnect.
        SubscriptionError: the server refused one of `subscriptions`, or refused to restore
            one after a reconnect.
        ValueError: a malformed subscription key or backoff setting.
    """
    client = GatewayClient(
        url,
        token,
        subscriptions=subscriptions,
        reconnect=reconnect,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        connect_timeout=connect_timeout,
        heartbeat_grace=heartbeat_grace,
        max_buffered=max_buffered,
        on_connect=on_connect,
        rng=rng,
        sleep=sleep,
    )
    with _unwrap_single():
        async with trio.open_nursery() as nursery:
            await nursery.start(client._run)
            try:
                yield client
            finally:
                client._stopping = True
                socket = client._socket
                if socket is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                        await socket.aclose(1000, "client closing")
                nursery.cancel_scope.cancel()
