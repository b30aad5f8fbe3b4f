"""The subscription index and the non-blocking fan-out.

Owns: which clients exist, what each is subscribed to, delivery into each client's bounded
outbox, and the flusher task that hands what a fan-out queued on to the sockets. Must not:
await outside that task, or decide how a close is carried out (connection.py does that when a
Client asks to close). It reaches a socket only through outbox.py (`flush_each`), whose
direct writes never wait.

Delivery policy (see python-trio/trio#987 on why nothing here is unbounded): a message is
serialised and framed once by the publisher and the same `bytes` frame is put into each
matching client's bounded outbox without waiting. `WouldBlock` means the client is not
keeping up: it is asked to close with 4008 and skipped from then on, so a slow consumer costs
the others nothing. `ClosedResourceError` means its connection is already going away.

Queueing and writing are two steps. A fan-out only queues (half a microsecond a recipient)
and lists the clients it gave work to; the flusher task then writes to them, a slice of
clients at a time, and lets other tasks run between slices. On loopback a write costs 7-10 us,
so one event to 1,000 clients is some 8 ms of writing: done in one go, every publication that
arrives meanwhile would wait for the end and then for a whole fan-out of its own. Between
slices it is queued at once instead, and joins the same write for every client the flusher has
not reached yet, so under load a client's wait stays about one pass over the clients. The
event loop also stays responsive (pongs, reads, the keepalive) during a large fan-out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

import attrs
import trio

from ..protocol.codec import encode
from ..protocol.errors import SESSION_EXPIRED, SLOW_CONSUMER, CloseReason
from ..protocol.frames import text_frame
from ..protocol.messages import SessionExpired
from ..protocol.routing import user_key
from ..protocol.topics import PatternIndex, is_pattern
from ..session.auth import API_KEY_IDENTITY, Identity
from .outbox import Outbox, flush_each
from .publication import EXPIRE, Delivery, Extra

SESSION_EXPIRED_FRAME = text_frame(encode(SessionExpired()))
# Clients the flusher writes to before it lets other tasks run: some 2-3 ms of loopback
# writes. Each pause costs a scheduler round with the caches cold after the writes: measured
# on 1,000 real sockets, slices of 128 added 0.9 ms to a fan-out, slices of 256 0.6 ms.
FLUSH_SLICE = 256
# Most scheduler turns the flusher gives other tasks between two slices.
EXTRA_TURNS = 16


@attrs.define(eq=False)
class Client:
    """One authenticated connection as the hub sees it."""

    id: str
    outbox: Outbox
    connected_at: float
    last_pong: float
    subscriptions: set[str] = attrs.field(factory=set)
    # Set by the first subscribe that asks for recovery: from then on this client gets the
    # frames that carry offsets.
    offsets: bool = False
    identity: Identity = API_KEY_IDENTITY
    # The reader runs inside this scope when the credential expires; its deadline is the
    # expiry (moved by a refresh). None for credentials that never expire.
    expiry: trio.CancelScope | None = None
    # Set once, by the first close request.
    close_reason: CloseReason | None = None
    flush_before_close: bool = False
    # The connection reads inside this scope; a close request cancels it.
    reader_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

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


class Hub:
    """Clients by id and an index from subscription key to subscribed clients.

    `on_first(key)` runs when a key gets its first local interest (a subscriber, or a client
    recovering it) and `on_last(key)` when the last one goes: that is how the broker learns
    which keys this instance needs (broker/).

    Wildcard subscriptions are keys too ("chat.*"), indexed by a trie (protocol/topics.py):
    a topic message also reaches every pattern that matches its topic, at a cost that depends
    on the topic's segments, not on how many patterns exist.

    Recovery (a subscribe that fetches its key's position or history from the broker): until
    `end_recovery`, what is published on the key for that client is kept aside with its
    offset instead of queued, so the caller can send the ack and the replay first and then
    what arrived meanwhile, with nothing lost or doubled on that key.
    """

    def __init__(
        self,
        on_first: Callable[[str], None] = _ignore,
        on_last: Callable[[str], None] = _ignore,
        recovery_limit: int = 256,
        flush_slice: int = FLUSH_SLICE,
        max_ahead: int = 128,
    ) -> None:
        self.clients: dict[str, Client] = {}
        self._index: dict[str, set[Client]] = {}
        self._patterns = PatternIndex()
        self._recovering: dict[str, dict[Client, list[tuple[int, bytes]]]] = {}
        self._recovery_limit = recovery_limit
        self._on_first = on_first
        self._on_last = on_last
        # Clients with frames queued by a fan-out and not yet handed on, in the order they got
        # them. A client is listed once however many frames wait: `Outbox.stage` says when
        # its outbox was empty.
        self._dirty: deque[Client] = deque()
        self._flusher = trio.lowlevel.ParkingLot()
        self._flush_slice = flush_slice
        # Running totals of clients listed in, and taken off, `_dirty`. A round delivered by
        # `deliver` is written once `_taken` reaches the `_listed` of its end; until then it
        # is in `_rounds` (that mark, its publications) and counts in `_ahead`.
        self._listed = 0
        self._taken = 0
        self._rounds: deque[tuple[int, int]] = deque()
        self._ahead = 0
        self._max_ahead = max_ahead
        self._progress = trio.lowlevel.ParkingLot()
        # Calls of `publish_many`, so the flusher can tell whether publications are coming in.
        self._published = 0

    def __len__(self) -> int:
        return len(self.clients)

    def add(self, client: Client) -> None:
        self.clients[client.id] = client
        if (user_id := client.identity.user_id) is not None:
            # Every connection of a user hears what is sent to that user (send_to_user,
            # expire_sessions) without holding it as a subscription of its own.
            self._join(user_key(user_id), client)

    def remove(self, client: Client) -> None:
        """Forget the client, every subscription it held and any recovery. Idempotent."""
        for key in [key for key, waiting in self._recovering.items() if client in waiting]:
            self._stop_recovery(client, key)
        self.unsubscribe_all(client)
        if self.clients.pop(client.id, None) is not None and client.identity.user_id is not None:
            self._leave(user_key(client.identity.user_id), client)

    def _wanted(self, key: str) -> bool:
        return key in self._index or key in self._recovering

    def subscribe(self, client: Client, key: str) -> None:
        client.subscriptions.add(key)
        self._join(key, client)

    def unsubscribe(self, client: Client, key: str) -> None:
        client.subscriptions.discard(key)
        self._leave(key, client)

    def _join(self, key: str, client: Client) -> None:
        members = self._index.get(key)
        if members is None:
            first = not self._wanted(key)
            members = self._index[key] = set()
            if is_pattern(key):
                self._patterns.add(key)
            if first:
                self._on_first(key)
        members.add(client)

    def _leave(self, key: str, client: Client) -> None:
        members = self._index.get(key)
        if members is not None:
            members.discard(client)
            if not members:
                del self._index[key]
                self._patterns.discard(key)
                if not self._wanted(key):
                    self._on_last(key)

    def unsubscribe_all(self, client: Client) -> None:
        for key in list(client.subscriptions):
            self.unsubscribe(client, key)

    def subscription_count(self) -> int:
        """Distinct keys with at least one subscriber (0 once everyone has left)."""
        return len(self._index)

    def begin_recovery(self, client: Client, key: str) -> None:
        """Start keeping `key`'s publications aside for `client` (see the class docstring)."""
        self.unsubscribe(client, key)
        client.subscriptions.add(key)
        if not self._wanted(key):
            self._recovering[key] = {}
            self._on_first(key)
        self._recovering.setdefault(key, {})[client] = []

    def end_recovery(self, client: Client, key: str) -> list[tuple[int, bytes]]:
        """Subscribe `client` to `key` for real; returns (offset, frame) kept aside, in order."""
        kept = self._stop_recovery(client, key, keep_interest=True)
        if client.close_reason is None:
            self.subscribe(client, key)
        elif not self._wanted(key):
            self._on_last(key)
        return kept

    def _stop_recovery(
        self, client: Client, key: str, *, keep_interest: bool = False
    ) -> list[tuple[int, bytes]]:
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

    def publish_many(self, items: Iterable[Delivery]) -> int:
        """Queue each frame, in order, once for every client subscribed to any of its keys.

        Returns how many deliveries were queued. Never blocks; see the module docstring.
        The flusher task (`run_flusher`) writes them: one write per client for everything
        queued for it by then, made at once when its writer is idle (outbox.py).
        """
        self._published += 1
        dirty = self._dirty
        listed_before = len(dirty)
        delivered = 0
        for plain, complete, keys, offsets, topic, extra in items:
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
            # Iterate a snapshot: a failed send may close a client, which must not resize the
            # set under our feet even though removal happens later in its connection task.
            for client in tuple(recipients):
                staged = client.stage(complete if client.offsets else plain)
                if staged is not None:
                    delivered += 1
                    if staged:
                        dirty.append(client)
        self._listed += len(dirty) - listed_before
        if dirty and self._flusher:
            self._flusher.unpark()
        return delivered

    async def deliver(self, items: Sequence[Delivery]) -> None:
        """`publish_many` for a broker's rounds; waits while more than `max_ahead`
        publications are queued and not yet written.

        So a client the flusher has not reached yet holds at most `max_ahead` frames plus one
        round. The server sets `max_ahead` to half of `queue_depth` and rounds are at most a
        quarter of it, so a burst cannot make a client that reads at full speed look slow.
        The bound counts publications, not rounds: the Redis subscriber's rounds are often a
        single message, and a bound of two rounds would let each pass over the clients
        carry only two messages, far fewer than arrive during it under load.
        """
        self.publish_many(items)
        self._rounds.append((self._listed, len(items)))
        self._ahead += len(items)
        # A round that gave nobody new work may be written already (or be empty).
        self._forget_written()
        while self._ahead > self._max_ahead:
            await self._progress.park()

    def _forget_written(self) -> None:
        rounds = self._rounds
        while rounds and rounds[0][0] <= self._taken:
            self._ahead -= rounds.popleft()[1]

    async def run_flusher(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hand what fan-outs queued on to the clients' sockets, until cancelled.

        A slice of `flush_slice` clients at a time, with a checkpoint between slices (see
        the module docstring). Whatever is still queued when this task ends stays in the
        outboxes, where each connection's writer finds it when the connection closes.
        """
        dirty = self._dirty
        task_status.started()
        while True:
            if not dirty:
                await self._flusher.park()
            count = min(len(dirty), self._flush_slice)
            flush_each([dirty.popleft().outbox for _ in range(count)])
            self._taken += count
            self._forget_written()
            if self._progress:
                self._progress.unpark_all()
            # Other tasks run before the next slice, for as long as publications keep coming
            # (up to EXTRA_TURNS turns): the Redis subscriber gets messages from coredis one
            # per scheduler turn, and what it brings now joins this pass instead of one
            # message waiting for each slice. Two quiet turns in a row end it, because a
            # message takes two turns to get through coredis to the hub.
            seen, quiet = self._published, 0
            for _ in range(EXTRA_TURNS):
                await trio.lowlevel.checkpoint()
                if self._published != seen:
                    seen, quiet = self._published, 0
                elif (quiet := quiet + 1) == 2:
                    break

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
                kept.append((offset, complete if client.offsets else plain))


def _apply(extra: Extra, recipients: set[Client]) -> set[Client]:
    """The recipients left once `extra` has acted: exclusions skip, an expiry closes."""
    left = {client for client in recipients if not _excluded(extra, client)}
    if extra.control == EXPIRE:
        for client in left:
            client.send(SESSION_EXPIRED_FRAME)
            client.close(SESSION_EXPIRED, flush=True)
        return set()
    return left


def _excluded(extra: Extra, client: Client) -> bool:
    return client.id == extra.exclude_client or (
        extra.exclude_user is not None and client.identity.user_id == extra.exclude_user
    )
