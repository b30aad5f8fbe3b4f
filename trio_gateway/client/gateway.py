"""The client's WebSocket side: `open_client` and `GatewayClient`, subscriptions that survive
drops, with nothing missed and nothing doubled where the server keeps history.

Owns the connection's life (connect, the `ready` greeting, restoring subscriptions, the
reader, reconnecting with jittered exponential backoff) and what each reply and message
means for the held subscriptions. The positions themselves are positions.py's, the writer
and reply slots connection.py's, the frames' fields wire.py's.

Must not: use the server's runtime (fanout, session, transport, runtime, broker) or be
imported by it. Must not run a task outside the nursery `open_client` owns, so nothing
outlives the `async with` block.

Theory of operation
-------------------
`open_client` owns one nursery holding one background task, `_run`, which loops: connect,
read the `ready` greeting, restore the subscriptions, serve the connection until it closes,
then either reconnect after a backoff delay or stop. Besides trio-websocket's frame reader
(and a short-lived task restoring the subscriptions), each connection runs two tasks:

- the writer (connection.py) is the only task that sends frames. A request (subscribe,
  unsubscribe) is queued with a reply slot, and the writer files the slot just before
  sending the frame. The server answers requests one by one in arrival order, so replies
  are matched to slots first in, first out. A caller cancelled while waiting leaves its
  slot filed; the late reply fills it and the order stays aligned.
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

import logging
import math
import random
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio
import trio_websocket
from wsproto.utilities import LocalProtocolError

from ..common.backoff import backoff_delay
from ..protocol.errors import CloseCode
from ..protocol.routing import is_pattern_key
from .connection import _Connection, _Dropped, _Intent, _open_stream, _Reply
from .errors import (
    ConnectFailed,
    Disconnected,
    SubscriptionError,
    Unauthorized,
    _Closed,
    _closed_by,
    _unwrap_single,
)
from .positions import (
    Position,
    Subscribed,
    _ack_position,
    _checked_position,
    _Committed,
    _Delivery,
    _message_offsets,
    _Tracker,
)
from .urls import split_url
from .wire import (
    PONG_TEXT,
    REPLY_TYPES,
    _decode,
    _key_of,
    _selection,
    _subscribe_message,
    _subscription_fields,
)

log = logging.getLogger("trio_gateway.client")

# Seconds we wait for the server to answer our close frame before dropping the socket.
CLOSE_TIMEOUT = 2.0


class GatewayClient:
    """Subscriptions to the gateway that survive reconnects; made by `open_client`.

    Iterate it for application messages (`event`, `session.update`, `session.deleted`,
    `remote.update`, topic `message`s, `session.state`, and an `error` the server sends
    unprompted), each a dict exactly as sent on the wire, offsets included, and each once.
    One protocol frame also comes through: the ack of a subscription restored after a
    reconnect (or from `resume`) whose missed messages could not be replayed,
    `{"type":"subscribed","subscription":K,"epoch":E,"offset":N,"recovered":false}`; what
    was published on K before it is lost, so refetch K's state. The same comes when the
    server says K's history started over while connected (an `epoch` frame: Redis flushed or
    restarted), before the messages of the new epoch. A `gap` on a key is handled as a drop
    (reconnect, resume from positions: the missed messages arrive); a `gap` on a pattern,
    which has no history, comes through as it is. Other protocol chatter
    (`ready`, acks, `ping`/`pong`) is handled internally.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        subscriptions: Iterable[str],
        resume: Mapping[str, Position],
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
        self._endpoint = split_url(url, "ws", "wss")
        self._headers = (
            [(b"authorization", f"Bearer {token}".encode())] if token is not None else []
        )
        # Held key -> the subscribe fields that restore it, in subscription order. Changed
        # only by the reader, as acks arrive (`_settle`).
        self._subscriptions = {key: _subscription_fields(key) for key in subscriptions}
        resume = {key: _checked_position(position, key) for key, position in resume.items()}
        for key in resume:
            if is_pattern_key(key):
                raise ValueError(f"cannot resume {key!r}: a pattern is live only")
            self._subscriptions.setdefault(key, _subscription_fields(key))
        # The reader's positions (deduplication, resumes) and the application's (positions).
        self._tracker = _Tracker(resume)
        self._committed = _Committed(resume)
        # The message last put in the buffer, while it may still be there (see _carry).
        self._last: _Delivery | None = None
        self._reconnect = reconnect
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._heartbeat_grace = heartbeat_grace
        self._max_buffered = max_buffered
        self._on_connect = on_connect
        self._rng = rng
        self._sleep = sleep
        self._messages_send, self._messages = trio.open_memory_channel[_Delivery](max_buffered)
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
        """Held subscription keys: "all", "workspace:<id>", "session:<id>", topics, patterns."""
        return frozenset(self._subscriptions)

    @property
    def positions(self) -> Mapping[str, Position]:
        """Where each held key stands (a snapshot): key -> (epoch, offset).

        Every message of the key up to `offset` has been taken from the iterator (or was
        published before the subscription began); what still waits in the buffer is not
        counted. Persist it after processing what you took, and a new process resumes with
        `open_client(..., resume=positions)` or `subscribe(..., since=positions[key])`.
        Patterns have no position; nor does a key whose server keeps no offsets.
        """
        return self._committed.snapshot()

    @property
    def disconnected(self) -> Disconnected | None:
        """Why the connection ended for good (only with `reconnect=False`), else None."""
        return self._disconnected

    def __aiter__(self) -> GatewayClient:
        return self

    async def __anext__(self) -> dict[str, Any]:
        """The next application message.

        Across reconnects the stream simply continues: what was published meanwhile is
        replayed first, in order, where the server still has it; where it has not, the
        stream carries the restore's `recovered: false` ack first (see the class docstring).
        It ends once the client stops for good: after the connection ended with
        `reconnect=False` (see `disconnected`) or the client was closed.
        """
        try:
            delivery = await self._messages.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        for key, position in delivery.resets.items():
            if self._tracker.position(key) is not None:  # unless unsubscribed meanwhile
                self._committed.set(key, position)
        self._committed.advance(delivery.marks)
        return delivery.message

    async def subscribe(
        self,
        scope: str | None = None,
        *,
        workspace_id: str | None = None,
        session_id: str | None = None,
        topic: str | None = None,
        since: Position | None = None,
    ) -> Subscribed:
        """Subscribe to everything (`scope="all"`), a workspace, a session or a topic.

        `topic` is a dot-separated topic ("chat.room.1") or a wildcard pattern ("chat.*",
        "chat.**"). Waits for the server's ack; while reconnecting, waits for the next
        connection first. The subscription is restored on every reconnect, from its
        position.

        Args:
            since: resume from this (epoch, offset), e.g. a saved `positions[key]`: the
                messages published after it are delivered first (`recovered` True), unless
                the server no longer has them (`recovered` False: refetch the state). Not for
                a pattern.

        Returns:
            The server's ack: the key, its position, and `recovered` when `since` was given.

        Raises:
            ValueError: not exactly one of scope, workspace_id, session_id, topic; `since`
                with a pattern, or malformed.
            SubscriptionError: the server answered with an error (e.g. too many subscriptions).
            Disconnected: the client stopped and will not reconnect.
        """
        fields = _selection(scope, workspace_id, session_id, topic)
        key = _key_of(fields)
        if since is not None:
            if is_pattern_key(key):
                raise ValueError(f"since is not supported for {key!r}: a pattern is live only")
            since = _checked_position(since, "since")
            if self._tracker.expect(key, since):
                self._committed.set(key, since)
        try:
            ack = await self._request(
                _subscribe_message(key, fields, since), _Intent(True, key, fields, since)
            )
        finally:
            if key not in self._subscriptions:
                self._tracker.forget(key)
                self._committed.drop(key)
        return Subscribed.from_ack(ack)

    async def unsubscribe(
        self,
        scope: str | None = None,
        *,
        workspace_id: str | None = None,
        session_id: str | None = None,
        topic: str | None = None,
    ) -> None:
        """Drop one subscription, given like `subscribe`'s; with no argument, drop them all.

        The key's position is forgotten with it.

        Raises:
            ValueError: more than one of the four given.
            SubscriptionError: the server answered with an error.
            Disconnected: the client stopped and will not reconnect.
        """
        if scope is None and workspace_id is None and session_id is None and topic is None:
            await self._request({"type": "unsubscribe"}, _Intent(False, None, {}))
            return
        fields = _selection(scope, workspace_id, session_id, topic)
        await self._request(
            {"type": "unsubscribe", **fields}, _Intent(False, _key_of(fields), fields)
        )

    # --- internals --------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _request(self, message: Mapping[str, Any], intent: _Intent) -> dict[str, Any]:
        while True:
            while self._connection is None:
                if self._finished:
                    ended = self._disconnected
                    if ended is None:
                        raise Disconnected(None, "the client is closed")
                    raise Disconnected(ended.code, ended.reason)
                await self._changed.wait()
            try:
                reply = await (await self._connection.request(message, intent)).wait()
            except _Dropped:
                # The next connection restores what was acknowledged so far; ask again there.
                continue
            if reply.get("type") == "error":
                raise SubscriptionError(str(reply.get("message")))
            return reply

    def _settle(self, reply: _Reply, message: dict[str, Any]) -> bool:
        """Account a reply (held keys, positions), then hand it to its waiter.

        Runs in the reader, before the frames that follow the reply are read: a replay right
        behind an ack is counted from the ack's position. Returns False, with nothing
        changed, when a failed recovery cannot be reported because the application's buffer
        is full; the connection is then dropped and the next resume reports it.
        """
        intent, kind = reply.intent, message.get("type")
        if intent is not None and intent.subscribe and kind == "subscribed":
            key = str(message.get("subscription", intent.key))
            notice = None
            if intent.restore and intent.since is not None and message.get("recovered") is False:
                # The application learns of the loss, and its position starts over, when it
                # takes this ack from the buffer, after what was delivered before it.
                position = _ack_position(message)
                notice = _Delivery(message, resets={key: position} if position else {})
                if not self._deliver(notice):
                    return False
                log.warning("could not resume %s: messages were lost; refetch its state", key)
            if self._tracker.acknowledged(key, intent.since, message) and notice is None:
                started = self._tracker.position(key)
                assert started is not None
                self._committed.set(key, started)
            self._subscriptions[key] = dict(intent.fields)
        elif intent is not None and not intent.subscribe and kind == "unsubscribed":
            if intent.key is None:
                self._subscriptions.clear()
                self._tracker.forget_all()
                self._committed.clear()
            else:
                key = str(message.get("subscription", intent.key))
                self._subscriptions.pop(key, None)
                self._tracker.forget(key)
                self._committed.drop(key)
        reply.resolve(message)
        return True

    def _deliver(self, delivery: _Delivery) -> bool:
        """Put a message in the application's buffer; False if it is full."""
        try:
            self._messages_send.send_nowait(delivery)
        except trio.WouldBlock:
            return False
        self._last = delivery
        return True

    def _carry(self, marks: dict[str, Position]) -> None:
        """Positions a dropped duplicate reached: the application reaches them once it has
        taken what is in the buffer now, i.e. with the message put there last."""
        if self._last is not None and self._messages_send.statistics().current_buffer_used:
            last = self._last.marks
            for key, mark in marks.items():
                if (
                    key not in last
                    or last[key].epoch != mark.epoch
                    or last[key].offset < mark.offset
                ):
                    last[key] = mark
        else:
            self._committed.advance(marks)

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
                stream = await _open_stream(endpoint)
        except OSError as exc:
            return _Closed(None, str(exc))
        except trio.TooSlowError:
            return _Closed(None, "TCP connect timed out")
        # We open and close the socket ourselves: trio-websocket (0.12) never closes a
        # client's stream after the server closed the WebSocket, so it would leak.
        ws: trio_websocket.WebSocketConnection | None = None
        closed = _Closed(None, "closed by the client")
        async with stream:
            try:
                with _unwrap_single():
                    async with trio.open_nursery() as nursery:
                        with trio.fail_after(self._connect_timeout):
                            ws = await trio_websocket.wrap_client_stream(
                                nursery,
                                stream,
                                endpoint.host_header,
                                endpoint.target,
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
            except LocalProtocolError:
                # trio-websocket 0.12 answers a ping that arrives after it sent its close
                # frame, which wsproto refuses (python-trio/trio-websocket#184); a gateway
                # pings at any moment (`ws_ping`). The connection was closing: that is all.
                if ws is None or ws.closed is None:
                    raise
                return closed

    async def _serve(
        self, ws: trio_websocket.WebSocketConnection, task_status: trio.TaskStatus[None]
    ) -> _Closed:
        greeting: dict[str, Any] | None = None
        with trio.move_on_after(self._connect_timeout):
            try:
                greeting = _decode(await ws.get_message())
            except trio_websocket.ConnectionClosed as exc:
                return _closed_by(exc)
        if greeting is not None and greeting.get("type") == "hello":
            # The server wants an `identify` with a token: we connected without one.
            return _Closed(CloseCode.UNAUTHORIZED, "the gateway requires a token (hello)")
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
            # Pipelined: every subscribe goes out before the first ack is awaited. Each
            # resumes from its position as it stands when it is queued.
            replies = []
            for key, fields in wanted:
                since = None if is_pattern_key(key) else self._tracker.position(key)
                intent = _Intent(True, key, fields, since, restore=True)
                replies.append(
                    await connection.request(_subscribe_message(key, fields, since), intent)
                )
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
                if not self._settle(reply, message):
                    reply.resolve(None)
                    return self._fell_behind()
            elif kind == "epoch":
                if not self._new_epoch(message):
                    return self._fell_behind()
            elif kind in ("subscribed", "unsubscribed", "pong", "ready"):
                log.debug("ignoring an unexpected %s message", kind)
            elif kind == "gap" and message.get("offset") is not None:
                # What the gateway could not deliver live is in its history: reconnecting
                # resumes every subscription from its position, which fetches it.
                return _Closed(None, "the gateway reported messages it could not deliver live")
            else:
                offsets = _message_offsets(message)
                if self._tracker.duplicate(offsets):
                    # Delivered before through another key: count it on this one too.
                    self._tracker.record(offsets)
                    self._carry(self._tracker.marks(offsets))
                    log.debug("dropping a duplicate %s at %s", kind, offsets)
                    continue
                delivery = _Delivery(message)
                if not self._deliver(delivery):
                    # Not recorded as delivered: the resume after this drop asks for it again.
                    return self._fell_behind()
                self._tracker.record(offsets)
                # No checkpoint since the send: the application cannot have taken it yet.
                delivery.marks = self._tracker.marks(offsets)

    def _new_epoch(self, message: dict[str, Any]) -> bool:
        """A held key's history started over: report it as a failed recovery would be, and
        count from the new position. False when the application's buffer has no room (the
        resume after the drop then reports it)."""
        key, position = message.get("subscription"), _ack_position(message)
        if not isinstance(key, str) or position is None or self._tracker.position(key) is None:
            return True
        if self._tracker.position(key) == position:
            return True
        ack = {
            "type": "subscribed",
            "subscription": key,
            "epoch": position.epoch,
            "offset": position.offset,
            "recovered": False,
        }
        if not self._deliver(_Delivery(ack, resets={key: position})):
            return False
        self._tracker.restart(key, position)
        log.warning("%s started a new epoch: messages may be lost; refetch its state", key)
        return True

    def _fell_behind(self) -> _Closed:
        return _Closed(None, f"the application fell {self._max_buffered} messages behind")


@asynccontextmanager
async def open_client(
    url: str,
    token: str | None,
    *,
    subscriptions: Iterable[str] = (),
    resume: Mapping[str, Position] | None = None,
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

    Entering connects, waits for `ready` and subscribes to `subscriptions` and `resume`.
    While the block runs, a background task (in a nursery this context manager owns) answers
    pings, routes acks, tracks positions and buffers messages for `async for msg in client`.
    When a connection ends for any reason but 4001 Unauthorized (a server shutdown 1001, a
    slow-consumer 4008, a network failure, refused reconnects), the client waits
    `backoff_delay(attempt, ...)` and reconnects, resuming everything acknowledged so far
    from its position (see `GatewayClient`). Leaving the block closes the connection with
    1000.

    Args:
        url: the WebSocket URL, e.g. `ws://127.0.0.1:8000/api/ws` (see `websocket_url`).
        token: API key, sent as `Authorization: Bearer`; None sends none.
        subscriptions: keys to subscribe to on connect: "all", "workspace:<id>",
            "session:<id>", a topic ("chat.room.1") or a pattern ("chat.*").
        resume: key -> (epoch, offset) to resume from on connect, e.g. `positions` saved
            by an earlier process; each key is subscribed (listed in `subscriptions` or not)
            and what was published after its position is delivered first. A key whose
            history is gone comes back as a `recovered: false` ack in the message stream.
        reconnect: False ends the message stream when the first connection ends instead.
        backoff_initial, backoff_max: seconds; the delay before attempt n (counted from 0,
            reset by every successful connection) is uniform in
            [0, min(backoff_max, backoff_initial * 2**n)].
        connect_timeout: seconds for the TCP connect, handshake and `ready` greeting.
        heartbeat_grace: seconds past the server's announced heartbeat interval without any
            frame after which the connection is presumed dead and replaced.
        max_buffered: application messages held for the iterator; if it falls further
            behind, the connection is dropped and re-established, and the resume replays
            what did not fit (lost only where the server keeps no history for it).
        on_connect: called with the server's client id each time a connection is ready and
            its subscriptions are restored, the first included.
        rng, sleep: the jitter source and the backoff sleep, injectable for tests.

    Raises:
        ConnectFailed: the first connection could not be established (later drops are
            retried, never raised).
        Unauthorized: the token was rejected, on the first connection or any reconnect.
        SubscriptionError: the server refused one of `subscriptions`, or refused to restore
            one after a reconnect.
        ValueError: a malformed subscription key, resume position or backoff setting.
    """
    client = GatewayClient(
        url,
        token,
        subscriptions=subscriptions,
        resume=resume or {},
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
