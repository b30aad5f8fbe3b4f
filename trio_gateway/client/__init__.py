"""A Trio client for the gateway's WebSocket side: subscriptions that survive drops, with
nothing missed and nothing doubled where the server keeps history.

Owns the client's half of the wire protocol (the `ready` greeting, subscribe/unsubscribe acks,
answering keepalive pings, `since` on a resuming subscribe), the position of every
subscription (epoch and offset), duplicate suppression, and reconnecting with jittered
exponential backoff while resuming every subscription. Publishing over HTTP is
http_client.py.

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

Positions and resume. Every key except a wildcard pattern has a log on the server: an epoch
and per-key offsets 1, 2, 3... The client tracks, per key it holds, the epoch and the set of
offsets it has delivered, kept as a watermark (every offset up to it delivered, or older than
the subscription) plus the few delivered above it out of order (`_Tracker`). A subscribe ack
sets the epoch and the starting offset; each message advances every held key it carries an
offset for (`offset` of a topic message, the `offsets` map of the others). All of this is
done by the reader, in frame order, so an ack and the replay right behind it are accounted
in the order the server sent them; the task awaiting the ack only reads the result.

- Reconnecting, each subscription is restored with `since` = its (watermark, epoch); the
  server answers `recovered: true` and replays what was missed before going live, or
  `recovered: false` (history gone, or a new epoch): that ack is handed to the application
  through the iterator, so it knows to refetch, and tracking starts again from the ack.
  Patterns are restored without `since`: they are live only.
- A message may reach a connection twice when a replay repeats what another subscription
  delivered live. The reader drops a message when a held key has delivered it already (an
  offset names one message within its key and epoch), or when every held key it carries an
  offset for is past it (delivered, or older than the subscription). A message with no
  offset for a held key (a pattern match, an older server, a `session.state` snapshot) is
  always delivered.
- A message the application's buffer has no room for is not recorded as delivered, so the
  resume after the drop asks for it again.
- `positions`, what an application persists, must not run ahead of what it has taken from
  the buffer: each buffered message carries the positions its delivery reached (`_Delivery`),
  and the iterator moves the application's view (`_Committed`) as it hands messages out.

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
from typing import Any, NamedTuple, NoReturn, TypeGuard

import attrs
import trio
import trio_websocket

from ..common.backoff import backoff_delay
from ..protocol.codec import encode
from ..protocol.errors import CloseCode
from ..protocol.messages import Pong
from ..protocol.routing import SESSION_PREFIX, WORKSPACE_PREFIX
from ..protocol.topics import ALL, is_pattern
from .urls import Endpoint, split_url, websocket_url

__all__ = [
    "ClientError",
    "ConnectFailed",
    "Disconnected",
    "GatewayClient",
    "Position",
    "Subscribed",
    "SubscriptionError",
    "Unauthorized",
    "backoff_delay",
    "open_client",
    "websocket_url",
]

log = logging.getLogger("trio_gateway.client")

# Seconds we wait for the server to answer our close frame before dropping the socket.
CLOSE_TIMEOUT = 2.0
# Frames queued for the writer; a request beyond this waits for room (backpressure on callers).
OUTGOING_DEPTH = 64
PONG_TEXT = encode(Pong())
REPLY_TYPES = frozenset({"subscribed", "unsubscribed", "error"})
# Messages that are a key's state rather than part of its stream: never deduplicated, never
# counted in a position (a session.state is the retained latest update, already counted).
SNAPSHOT_TYPES = frozenset({"session.state"})
# Delivered offsets held above a key's watermark. Only a gap that never fills (a message the
# server never sent this connection) makes them pile up; past this many the gap is given up.
MAX_AHEAD = 10_000


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


# --- positions ------------------------------------------------------------------------------


class Position(NamedTuple):
    """Where a client stands on one subscription key: the log's epoch and an offset.

    A plain tuple, `(epoch, offset)`, so it persists as JSON (`["3f2a9c1e", 42]`) and comes
    back with `Position(*loaded)`. Offsets count a key's messages from 1 within an epoch; a
    new epoch means the server's history for the key started over.
    """

    epoch: str
    offset: int


@attrs.frozen
class Subscribed:
    """The server's answer to a subscribe.

    Attributes:
        key: the acknowledged key: "all", "workspace:<id>", "session:<id>", a topic or a
            pattern.
        position: the key's position on the server when it answered: its epoch and the
            offset of its latest message (0 if none yet). None for a pattern (live only) and
            from a server that does not keep offsets, or could not reach its history.
        recovered: None for a subscribe without `since`. True: every message after `since`
            follows the ack, then live ones. False: nothing was replayed; the application
            must refetch its state, and the stream continues from `position`.
    """

    key: str
    position: Position | None
    recovered: bool | None

    @classmethod
    def from_ack(cls, ack: Mapping[str, Any]) -> Subscribed:
        recovered = ack.get("recovered")
        return cls(
            key=str(ack.get("subscription")),
            position=_ack_position(ack),
            recovered=recovered if isinstance(recovered, bool) else None,
        )


def _is_offset(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _ack_position(ack: Mapping[str, Any]) -> Position | None:
    epoch, offset = ack.get("epoch"), ack.get("offset")
    if isinstance(epoch, str) and _is_offset(offset):
        return Position(epoch, offset)
    return None


def _checked_position(value: object, what: str) -> Position:
    """`value` as a Position: a Position or any (epoch, offset) pair, e.g. loaded from JSON."""
    pair: tuple[object, ...] = tuple(value) if isinstance(value, tuple | list) else ()
    if len(pair) != 2:
        raise ValueError(f"{what} must be an (epoch, offset) pair, got {value!r}")
    epoch, offset = pair
    if not isinstance(epoch, str) or not _is_offset(offset):
        raise ValueError(f"{what} needs a string epoch and an offset >= 0, got {value!r}")
    return Position(epoch, offset)


def _message_offsets(message: Mapping[str, Any]) -> dict[str, int]:
    """The offsets a message carries, by key: a topic message's `offset` (key = its topic)
    and the `offsets` map of the others. Empty for snapshots and messages without any."""
    if message.get("type") in SNAPSHOT_TYPES:
        return {}
    found: dict[str, int] = {}
    offsets = message.get("offsets")
    if isinstance(offsets, dict):
        for key, offset in offsets.items():
            if isinstance(key, str) and _is_offset(offset):
                found[key] = offset
    topic, offset = message.get("topic"), message.get("offset")
    if isinstance(topic, str) and _is_offset(offset):
        found[topic] = offset
    return found


@attrs.define(eq=False)
class _Track:
    """One key's offsets within one epoch: which this client has delivered, which it has not.

    Everything up to `offset` is accounted for: delivered here if above `floor`, otherwise
    older than the subscription (or delivered by an earlier process that resumed from
    `floor`). `ahead` holds offsets delivered out of the key's order, above `offset`.
    """

    epoch: str
    offset: int
    floor: int = attrs.field()
    ahead: set[int] = attrs.field(factory=set)

    @floor.default
    def _start_at_offset(self) -> int:
        return self.offset

    def seen(self, offset: int) -> bool:
        """Delivered, or older than the subscription."""
        return offset <= self.offset or offset in self.ahead

    def delivered(self, offset: int) -> bool:
        """Handed to the application by this client."""
        return self.floor < offset <= self.offset or offset in self.ahead

    def record(self, offset: int) -> None:
        if offset == self.offset + 1:
            self.offset = offset
            self._absorb()
        elif offset > self.offset:
            self.ahead.add(offset)
            if len(self.ahead) > MAX_AHEAD:
                lowest = min(self.ahead)
                log.warning(
                    "giving up offsets %d..%d (epoch %s): never received",
                    self.offset + 1,
                    lowest - 1,
                    self.epoch,
                )
                self.skip_to(lowest - 1)

    def skip_to(self, offset: int) -> None:
        """Count everything up to `offset` as not owed (a later starting point)."""
        if offset > self.offset:
            # Below the new floor nothing counts as delivered: losing track of what was is
            # safe (a repeat might get through), claiming what was not would drop messages.
            self.offset = self.floor = offset
            self.ahead = {seen for seen in self.ahead if seen > offset}
            self._absorb()

    def _absorb(self) -> None:
        while self.offset + 1 in self.ahead:
            self.offset += 1
            self.ahead.remove(self.offset)


class _Tracker:
    """Positions of the held keys and duplicate suppression. Pure: no I/O, no trio.

    Driven by the reader in frame order: `acknowledged` for each subscribe ack, `duplicate`
    then `record` for each application message. A key without a track (a pattern, a key
    whose ack gave no position) takes no part in either.

    A message is a duplicate when some tracked key has delivered it already (an offset
    identifies a message within its key and epoch), or when every tracked key it carries an
    offset for is past it. The first catches a replay repeating what another subscription
    delivered live; the second is the plain rule, which also drops what is older than the
    subscriptions. A dropped message is recorded all the same: the keys that had not seen it
    yet (the one being replayed) move past it.
    """

    def __init__(self, resume: Mapping[str, Position] | None = None) -> None:
        self._tracks = {
            key: _Track(position.epoch, position.offset) for key, position in (resume or {}).items()
        }

    def positions(self) -> dict[str, Position]:
        return {key: Position(track.epoch, track.offset) for key, track in self._tracks.items()}

    def position(self, key: str) -> Position | None:
        track = self._tracks.get(key)
        return Position(track.epoch, track.offset) if track is not None else None

    def expect(self, key: str, since: Position) -> bool:
        """A subscribe resuming from `since` is on its way: count what comes meanwhile.

        A key already tracked keeps its track (it knows at least as much). Returns whether
        the track is new."""
        if key in self._tracks:
            return False
        self._tracks[key] = _Track(since.epoch, since.offset)
        return True

    def forget(self, key: str) -> None:
        self._tracks.pop(key, None)

    def forget_all(self) -> None:
        self._tracks.clear()

    def acknowledged(self, key: str, since: Position | None, ack: Mapping[str, Any]) -> bool:
        """Account a subscribe ack; `since` is what the subscribe carried.

        Returns whether the key starts over: a new track, at the ack's position or `since`.
        """
        position = _ack_position(ack)
        if position is None:
            # A pattern, or no position to go on: keep whatever we had, for the next resume.
            return False
        track = self._tracks.get(key)
        if track is not None and track.epoch != position.epoch:
            track = None
        if since is not None and ack.get("recovered") is True:
            # The missed messages follow the ack: count from `since`, or from what we know.
            if track is None:
                self._tracks[key] = _Track(position.epoch, since.offset)
                return True
            track.skip_to(since.offset)
            return False
        if since is not None or track is None:
            # A fresh start (a new key, a failed recovery, a new epoch): nothing up to the
            # key's latest offset is owed.
            self._tracks[key] = _Track(position.epoch, position.offset)
            return True
        # The key was already held in this epoch; the server changed nothing.
        return False

    def marks(self, offsets: Mapping[str, int]) -> dict[str, Position]:
        """The positions of the tracked keys among `offsets`."""
        return {
            key: Position(track.epoch, track.offset)
            for key in offsets
            if (track := self._tracks.get(key)) is not None
        }

    def duplicate(self, offsets: Mapping[str, int]) -> bool:
        """Whether a message carrying `offsets` was delivered already (see the class doc)."""
        tracked = [
            (track, offset) for key, offset in offsets.items() if (track := self._tracks.get(key))
        ]
        if not tracked:
            return False
        return any(track.delivered(offset) for track, offset in tracked) or all(
            track.seen(offset) for track, offset in tracked
        )

    def record(self, offsets: Mapping[str, int]) -> None:
        """Count a delivered message on every tracked key it carries an offset for."""
        for key, offset in offsets.items():
            track = self._tracks.get(key)
            if track is not None:
                track.record(offset)


@attrs.define(eq=False)
class _Delivery:
    """A message in the application's buffer, with the positions taking it reaches."""

    message: dict[str, Any]
    # Advanced within their epoch (see _Committed.advance)...
    marks: dict[str, Position] = attrs.field(factory=dict)
    # ...or set outright: a failed recovery's notice starts its key over.
    resets: dict[str, Position] = attrs.field(factory=dict)


class _Committed:
    """The positions the application has reached: what `GatewayClient.positions` reports.

    The reader's `_Tracker` runs ahead by whatever sits in the buffer; this one moves as the
    iterator hands messages out, so a position saved after processing a message never
    claims one the application did not get. Pure, like `_Tracker`.
    """

    def __init__(self, resume: Mapping[str, Position]) -> None:
        self._at = dict(resume)

    def snapshot(self) -> dict[str, Position]:
        return dict(self._at)

    def set(self, key: str, position: Position) -> None:
        self._at[key] = position

    def drop(self, key: str) -> None:
        self._at.pop(key, None)

    def clear(self) -> None:
        self._at.clear()

    def advance(self, marks: Mapping[str, Position]) -> None:
        """Move forward within each key's epoch; a mark from another epoch is stale."""
        for key, mark in marks.items():
            current = self._at.get(key)
            if current is not None and current.epoch == mark.epoch and mark.offset > current.offset:
                self._at[key] = mark


# --- WebSocket client -----------------------------------------------------------------------


@attrs.frozen
class _Closed:
    """How one connection attempt ended: close code (None without a close frame) and why."""

    code: int | None
    reason: str

    def __str__(self) -> str:
        return f"code {self.code} {self.reason!r}" if self.code is not None else self.reason


async def _open_stream(
    endpoint: Endpoint,
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    if endpoint.tls:
        return await trio.open_ssl_over_tcp_stream(
            endpoint.host, endpoint.port, https_compatible=True
        )
    return await trio.open_tcp_stream(endpoint.host, endpoint.port)


class _Dropped(Exception):
    """The connection a request was made on ended before its reply arrived."""


@attrs.frozen
class _Intent:
    """What a request asks for, so the reader can account its reply (see `_settle`)."""

    subscribe: bool
    # None: unsubscribe from everything.
    key: str | None
    fields: Mapping[str, str]
    since: Position | None = None
    # Sent by `_restore`: a failed recovery is the application's to hear of, not a caller's.
    restore: bool = False


@attrs.define(eq=False)
class _Reply:
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


def _subscription_fields(key: str) -> dict[str, str]:
    """The subscribe message fields for a key: "all", "workspace:W", "session:S", a topic or
    a pattern (the server checks a topic's syntax)."""
    if key == ALL:
        return {"scope": ALL}
    kind, colon, value = key.partition(":")
    field = {WORKSPACE_PREFIX: "workspace_id", SESSION_PREFIX: "session_id"}.get(kind + colon)
    if (colon and (field is None or not value)) or not key:
        raise ValueError(
            f'expected "all", "workspace:<id>", "session:<id>" or a topic, got {key!r}'
        )
    return {field: value} if field is not None else {"topic": key}


def _key_of(fields: Mapping[str, str]) -> str:
    """The key the server acknowledges for these (exactly one) subscribe fields."""
    ((name, value),) = fields.items()
    if name == "workspace_id":
        return WORKSPACE_PREFIX + value
    if name == "session_id":
        return SESSION_PREFIX + value
    return value  # scope ("all") or topic


def _selection(
    scope: str | None, workspace_id: str | None, session_id: str | None, topic: str | None
) -> dict[str, str]:
    given = {
        name: value
        for name, value in (
            ("scope", scope),
            ("workspace_id", workspace_id),
            ("session_id", session_id),
            ("topic", topic),
        )
        if value is not None
    }
    if len(given) != 1:
        raise ValueError("give exactly one of scope, workspace_id, session_id, topic")
    return given


def _subscribe_message(
    key: str, fields: Mapping[str, str], since: Position | None
) -> dict[str, Any]:
    """A subscribe that asks for the key's position (`recover`) and resumes from `since`;
    a pattern is live only and asks for neither."""
    message: dict[str, Any] = {"type": "subscribe", **fields}
    if since is not None:
        message["since"] = {"offset": since.offset, "epoch": since.epoch}
    elif not is_pattern(key):
        message["recover"] = True
    return message


def _decode(frame: str | bytes) -> dict[str, Any] | None:
    if isinstance(frame, bytes):
        return None
    try:
        data = json.loads(frame)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class GatewayClient:
    """Subscriptions to the gateway that survive reconnects; made by `open_client`.

    Iterate it for application messages (`event`, `session.update`, `session.deleted`,
    `remote.update`, topic `message`s, `session.state`, and an `error` the server sends
    unprompted), each a dict exactly as sent on the wire, offsets included, and each once.
    One protocol frame also comes through: the ack of a subscription restored after a
    reconnect (or from `resume`) whose missed messages could not be replayed,
    `{"type":"subscribed","subscription":K,"epoch":E,"offset":N,"recovered":false}`; what
    was published on K before it is lost, so refetch K's state. Other protocol chatter
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
            if is_pattern(key):
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
            if is_pattern(key):
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
                since = None if is_pattern(key) else self._tracker.position(key)
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
            elif kind in ("subscribed", "unsubscribed", "pong", "ready"):
                log.debug("ignoring an unexpected %s message", kind)
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

    def _fell_behind(self) -> _Closed:
        return _Closed(None, f"the application fell {self._max_buffered} messages behind")


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
