"""The subscription index, recovery, and the non-blocking fan-out into clients' outboxes.

Owns: which clients exist, what each is subscribed to (a dict per key, patterns by shape),
recovery buffers, and queuing a publication's frame into each matching client's bounded
outbox (or, with nothing queued anywhere, writing it in the same pass: see flusher.py).
Must not: await (writing is flusher.py's task), or decide how a close is carried out
(session/connection.py does that when a Client asks to close).

Delivery policy (see python-trio/trio#987 on why nothing here is unbounded): a message is
serialised and framed once by the publisher and the same `bytes` frame is put into each
matching client's bounded outbox without waiting. `WouldBlock` means the client is not
keeping up: it is asked to close with 4008 and skipped from then on, so a slow consumer costs
the others nothing. `ClosedResourceError` means its connection is already going away.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any, Protocol

import attrs
import trio

from ..protocol.codec import encode
from ..protocol.errors import SESSION_DELETED, SESSION_EXPIRED, SLOW_CONSUMER, CloseReason
from ..protocol.frames import text_frame
from ..protocol.messages import Gap
from ..protocol.replies import SESSION_EXPIRED_FRAME
from ..protocol.routing import is_pattern_key, personal_keys
from ..protocol.topics import PatternIndex
from ..session.auth import API_KEY_IDENTITY, Identity
from ..session.ratelimit import TokenBucket
from .flusher import Flusher
from .outbox import WRITE_RUN, Outbox, write_each
from .publication import EPOCH, EXPIRE, UNBIND, Delivery, Extra, OffsetFrame


class TaskStarter(Protocol):
    """Starts a task that belongs to a connection's session (a nursery will do)."""

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None: ...


@attrs.define(eq=False)
class Client:
    """One authenticated connection as the hub sees it."""

    id: str
    outbox: Outbox
    connected_at: float
    # When the peer last sent a frame of any kind (a message, a ping or a pong, at the
    # WebSocket level or as JSON): what the keepalive reaps by. A field, not a task, so an
    # idle connection costs no more for it.
    last_seen: float
    subscriptions: set[str] = attrs.field(factory=set)
    # Set by the first subscribe that asks for recovery: from then on this client gets the
    # frames that carry offsets.
    offsets: bool = False
    identity: Identity = API_KEY_IDENTITY
    # Every frame the peer sends takes a token (session/ratelimit.py); None: no limit.
    frames: TokenBucket | None = None
    # The reader runs inside this scope when the credential expires; its deadline is the
    # expiry (moved by a refresh). None for credentials that never expire.
    expiry: trio.CancelScope | None = None
    # Set once, by the first close request.
    close_reason: CloseReason | None = None
    flush_before_close: bool = False
    # The connection reads inside this scope; a close request cancels it.
    reader_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    # Where work of this connection runs beside its reader (command calls): the session's
    # tasks (session/tasks.py) while the reader runs, else None.
    tasks: TaskStarter | None = None
    # Per-connection state that features keep for as long as the connection lives (the
    # commands' Caller.state).
    state: dict[str, Any] = attrs.field(factory=dict)

    def admit(self, now: float) -> bool:
        """The connection's frame gate (transport/websocket.py): a frame arrived at `now`;
        False when it is over the client's frame budget."""
        self.last_seen = now
        frames = self.frames
        return frames is None or frames.admit(now)

    def send(self, frame: bytes) -> bool:
        """Queue one frame without waiting; False if the client is closing or just closed."""
        staged = self.stage(frame)
        if staged is None:
            return False
        self.outbox.flush()
        return True

    def stage(self, frame: bytes) -> bool | None:
        """Queue one frame for a later `outbox.flush()`; None if it was not queued.

        Returns True when the outbox was empty (this client needs the flush), False when the
        frame joined frames already waiting, None when the client is closing, just closed,
        or was just found too slow (and asked to close).
        """
        if self.close_reason is not None:
            return None
        try:
            return self.outbox.stage(frame)
        except trio.WouldBlock:
            self.close(SLOW_CONSUMER)
            return None
        except trio.ClosedResourceError:
            return None

    def close(self, reason: CloseReason, *, flush: bool = False) -> None:
        """Ask the connection to close; the first reason wins. Never blocks.

        Reading stops at once and nothing more is queued; the writer ends after the frames
        already queued (with `flush`) or after the one it is writing (without).
        """
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self.flush_before_close = flush
        self.outbox.close()
        self.reader_scope.cancel()


def _ignore(key: str) -> None:
    pass


#: Told that a client joined (or left) the subscribers of a key: presence follows these.
Watcher = Callable[[Client, str], None]


class Hub:
    """Clients by id and an index from subscription key to subscribed clients.

    `on_first(key)` runs when a key gets its first local interest (a subscriber, or a client
    recovering it) and `on_last(key)` when the last one goes: that is how the broker learns
    which keys this instance needs (broker/).

    Wildcard subscriptions are keys too ("chat.*"), indexed by shape (protocol/topics.py):
    a topic message also reaches every pattern that matches its topic, at a cost of one
    lookup per pattern shape held, not per pattern.

    Recovery (a subscribe that fetches its key's position or history from the broker): until
    `end_recovery`, what is published on the key for that client is kept aside with its
    offset instead of queued, so the caller can send the ack and the replay first and then
    what arrived meanwhile, with nothing lost or doubled on that key.
    """

    def __init__(
        self,
        flusher: Flusher | None = None,
        on_first: Callable[[str], None] = _ignore,
        on_last: Callable[[str], None] = _ignore,
        recovery_limit: int = 256,
    ) -> None:
        self.clients: dict[str, Client] = {}
        #: Writes what `publish_many` queued (its task is started by the server).
        self.flusher = flusher if flusher is not None else Flusher()
        self._index: dict[str, set[Client]] = {}
        self._patterns = PatternIndex()
        self._recovering: dict[str, dict[Client, list[OffsetFrame]]] = {}
        self._recovery_limit = recovery_limit
        self._on_first = on_first
        self._on_last = on_last
        self._watchers: list[tuple[Watcher, Watcher]] = []
        #: Frames queued by `publish_many` so far, and the recipients it tried (the
        #: difference: frames not queued for a client closing or too slow). Counted per
        #: publication, for the metrics.
        self.deliveries = 0
        self.recipients = 0
        #: Publications brought by the broker (`deliver`), every instance's.
        self.brought = 0

    def __len__(self) -> int:
        return len(self.clients)

    def add(self, client: Client) -> None:
        self.clients[client.id] = client
        # Every connection of a user (and of a backend session) hears what is sent to that
        # user (send_to_user, expire_sessions) without holding it as a subscription.
        for key in personal_keys(client.identity.user_id, client.identity.session_id):
            self._join(key, client)

    def remove(self, client: Client) -> None:
        """Forget the client, every subscription it held and any recovery. Idempotent."""
        for key in [key for key, waiting in self._recovering.items() if client in waiting]:
            self._stop_recovery(client, key)
        self.unsubscribe_all(client)
        if self.clients.pop(client.id, None) is not None:
            for key in personal_keys(client.identity.user_id, client.identity.session_id):
                self._leave(key, client)

    def _wanted(self, key: str) -> bool:
        return key in self._index or key in self._recovering

    def watch(self, on_subscribe: Watcher, on_unsubscribe: Watcher) -> None:
        """Call `on_subscribe(client, key)` whenever a client becomes one of a key's
        subscribers, and `on_unsubscribe` when it stops being one (unsubscribe, disconnect),
        after the index has changed. Watchers must not block or raise."""
        self._watchers.append((on_subscribe, on_unsubscribe))

    @property
    def patterns(self) -> PatternIndex:
        """The patterns subscribed here, for the limits on them; the caller must not change
        it (subscribe and unsubscribe do)."""
        return self._patterns

    def subscribers(self, key: str) -> Collection[Client]:
        """The clients subscribed to `key` right now (not those still recovering it); the
        caller must not change it."""
        return self._index.get(key, ())

    def subscribe(self, client: Client, key: str) -> None:
        client.subscriptions.add(key)
        joined = self._join(key, client)
        if joined and self._watchers:
            for on_subscribe, _ in self._watchers:
                on_subscribe(client, key)

    def unsubscribe(self, client: Client, key: str) -> None:
        client.subscriptions.discard(key)
        left = self._leave(key, client)
        if left and self._watchers:
            for _, on_unsubscribe in self._watchers:
                on_unsubscribe(client, key)

    def _join(self, key: str, client: Client) -> bool:
        """Index `client` under `key`; False if it already was."""
        members = self._index.get(key)
        if members is None:
            first = not self._wanted(key)
            members = self._index[key] = set()
            if is_pattern_key(key):
                self._patterns.add(key)
            if first:
                self._on_first(key)
        elif client in members:
            return False
        members.add(client)
        return True

    def _leave(self, key: str, client: Client) -> bool:
        """Drop `client` from `key`'s index; False if it was not there."""
        members = self._index.get(key)
        if members is None or client not in members:
            return False
        members.discard(client)
        if not members:
            del self._index[key]
            self._patterns.discard(key)
            if not self._wanted(key):
                self._on_last(key)
        return True

    def unsubscribe_all(self, client: Client) -> None:
        for key in list(client.subscriptions):
            self.unsubscribe(client, key)

    def subscription_count(self) -> int:
        """Distinct keys with at least one subscriber (0 once everyone has left)."""
        return len(self._index)

    def key_members(self) -> Iterable[tuple[str, set[Client]]]:
        """Every key with a subscriber here and its subscribers (for the statistics)."""
        return self._index.items()

    def gap(self, key: str, epoch: str | None, offset: int | None) -> None:
        """Tell `key`'s subscribers that publications on it (up to `offset`) may not have
        reached them live; the broker found it out after its subscriber was cut off."""
        members = self._index.get(key)
        if not members:
            return
        frame = text_frame(encode(Gap(key, epoch, offset)))
        for client in tuple(members):
            client.send(frame)

    def begin_recovery(self, client: Client, key: str) -> None:
        """Start keeping `key`'s publications aside for `client` (see the class docstring)."""
        self.unsubscribe(client, key)
        client.subscriptions.add(key)
        if not self._wanted(key):
            self._recovering[key] = {}
            self._on_first(key)
        self._recovering.setdefault(key, {})[client] = []

    def end_recovery(self, client: Client, key: str) -> list[OffsetFrame]:
        """Subscribe `client` to `key` for real; returns (offset, frame) kept aside, in order."""
        kept = self._stop_recovery(client, key, keep_interest=True)
        if client.close_reason is None:
            self.subscribe(client, key)
        elif not self._wanted(key):
            self._on_last(key)
        return kept

    def _stop_recovery(
        self, client: Client, key: str, *, keep_interest: bool = False
    ) -> list[OffsetFrame]:
        waiting = self._recovering.get(key)
        if waiting is None or client not in waiting:
            return []
        kept = waiting.pop(client)
        if not waiting:
            del self._recovering[key]
        if not keep_interest:
            client.subscriptions.discard(key)
            if not self._wanted(key):
                self._on_last(key)
        return kept

    def publish_many(self, items: Sequence[Delivery]) -> int:
        """Queue each frame, in order, once for every client subscribed to any of its keys.

        Returns how many deliveries were queued. Never blocks; see the module docstring.
        The flusher writes them: one write per client for everything queued for it by then,
        made at once when its writer is idle (outbox.py).
        """
        dirty = self.flusher.dirty
        listed_before = len(dirty)
        delivered = 0
        recipients_tried = 0
        # One publication with nothing queued: written in the pass that finds its recipients
        # (up to the flusher's room). Several are queued, so that each client gets them in
        # one write.
        room = self.flusher.room() if len(items) == 1 else 0
        written = 0
        for plain, complete, keys, offsets, topic, extra in items:
            if extra is not None and extra.control == EPOCH:
                # Only those tracking offsets on the key itself (patterns have no epoch);
                # a client still recovering learns the epoch from its ack.
                for client in tuple(self._index.get(keys[0], ())):
                    if client.offsets and (staged := client.stage(complete)) is not None:
                        delivered += 1
                        if staged:
                            dirty.append(client.outbox)
                continue
            groups = [members for key in keys if (members := self._index.get(key))]
            if topic is not None and self._patterns:
                groups += [self._index[pattern] for pattern in self._patterns.match(topic)]
            if self._recovering:
                self._keep_aside(plain, complete, keys, offsets, groups, extra)
            if not groups:
                continue
            # A client matching several keys (all + workspace + session) gets one copy.
            recipients = groups[0] if len(groups) == 1 else set().union(*groups)
            if extra is not None:
                recipients = _apply(extra, recipients)
            recipients_tried += len(recipients)
            queued, written = _stage_each(recipients, plain, complete, dirty, room)
            delivered += queued + written
            if extra is not None and extra.control == UNBIND:
                _close_bound(recipients, keys)
        self.flusher.queued(len(dirty) - listed_before, written)
        self.deliveries += delivered
        self.recipients += recipients_tried
        return delivered

    async def deliver(self, items: Sequence[Delivery]) -> None:
        """`publish_many` for a broker's rounds, then wait while the flusher is too far
        behind (`Flusher.admit`).

        So a client the flusher has not reached yet holds at most `max_ahead` frames plus one
        round. The server sets `max_ahead` to half of `queue_depth` and rounds are at most a
        quarter of it, so a burst cannot make a client that reads at full speed look slow.
        """
        reached = trio.current_time()
        self.publish_many(items)
        self.brought += len(items)
        await self.flusher.admit(len(items), reached)

    def _keep_aside(
        self,
        plain: bytes,
        complete: bytes,
        keys: tuple[str, ...],
        offsets: tuple[int, ...],
        live: list[set[Client]],
        extra: Extra | None,
    ) -> None:
        for key, offset in zip(keys, offsets, strict=True):
            waiting = self._recovering.get(key)
            if not waiting:
                continue
            for client, kept in waiting.items():
                # Queued live through another of its subscriptions: that copy is enough.
                if any(client in members for members in live):
                    continue
                if extra is not None and _excluded(extra, client):
                    continue
                if len(kept) >= self._recovery_limit:
                    client.close(SLOW_CONSUMER)
                    continue
                kept.append(OffsetFrame(offset, complete if client.offsets else plain))


def _stage_each(
    recipients: Collection[Client],
    plain: bytes,
    complete: bytes,
    dirty: deque[Outbox],
    room: int = 0,
) -> tuple[int, int]:
    """`Client.stage` for every recipient of one publication, listing in `dirty` those whose
    outbox was empty, except that up to `room` recipients with nothing queued whose socket
    takes a write now are written to instead, WRITE_RUN at a time (outbox.py); returns how
    many were queued a frame and how many were written one.

    `Client.stage` and `Outbox.stage` are written out here: this loop runs once per
    recipient of every publication and comes before the first write of a fan-out, and the
    two calls were 40% of it (docs/PERFORMANCE.md, "Fan-out"). The rules are theirs: a
    closing client or a closed outbox is skipped, a full one closes its client 4008. `room`
    is only for a fan-out nothing else is queued behind (`Flusher.room`); nothing can run
    between a recipient's checks here and its write, so writing is the same as queueing and
    flushing at once, without a second pass over the outboxes.
    """
    queued_for = 0
    written = 0
    writes: list[tuple[int, bytes, Outbox]] = []
    # Iterate a snapshot: a full outbox closes its client, which must not resize the set
    # under our feet even though removal happens later in its connection task.
    for client in tuple(recipients):
        if client.close_reason is not None:
            continue
        outbox = client.outbox
        if outbox._closed:
            continue
        frames = outbox._frames
        frame = complete if client.offsets else plain
        if written < room and not frames and not outbox._writing and (fd := outbox.fd) >= 0:
            writes.append((fd, frame, outbox))
            written += 1
            if len(writes) == WRITE_RUN:
                write_each(writes)
                writes = []
            continue
        queued = len(frames)
        if queued >= outbox._limit:
            client.close(SLOW_CONSUMER)
            continue
        frames.append(frame)
        queued_for += 1
        if not queued:
            dirty.append(outbox)
    write_each(writes)
    return queued_for, written


def _apply(extra: Extra, recipients: set[Client]) -> set[Client]:
    """The recipients left once `extra` has acted: exclusions skip, an expiry closes."""
    left = {client for client in recipients if not _excluded(extra, client)}
    if extra.control == EXPIRE:
        for client in left:
            client.send(SESSION_EXPIRED_FRAME)
            client.close(SESSION_EXPIRED, flush=True)
        return set()
    return left


def _close_bound(recipients: Iterable[Client], keys: tuple[str, ...]) -> None:
    """A session's deletion ends the connections the backend bound to that session, once
    they have the message."""
    for client in recipients:
        if any(key in client.identity.subscriptions for key in keys):
            client.close(SESSION_DELETED, flush=True)


def _excluded(extra: Extra, client: Client) -> bool:
    return client.id == extra.exclude_client or (
        extra.exclude_user is not None and client.identity.user_id == extra.exclude_user
    )
