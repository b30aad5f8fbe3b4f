"""Presence on this instance: its connections' shares, and what its observers have been told.

Owns, per (presence topic, user), this instance's connections there and the grace of a user
whose last connection went (a reload: neither a leave nor a join if they are back in time);
per observed topic, a `_View`: the members its local subscribers have been told (the state
sent after their subscribe ack, kept up to date by the diffs sent since). Must not write to
a socket other than through `Client.send`, or know how the store keeps shares.

Theory of operation
-------------------
The hub tells the tracker when a client joins or leaves a key's subscribers (`Hub.watch`).
A change to this instance's share is queued and written to the store by one writer task, in
order, retried while the store is down; so a hub callback never waits. The store then tells
every instance which users changed on which topic (`Listener.changed`). An instance with
subscribers on that topic marks those users dirty; the diff task gathers what is dirty for at
most `presence_diff_interval`, reads those users' entries from the store, compares them with
its view and sends one `presence.diff` per topic to the local subscribers. Reading the truth
rather than applying events makes every notification idempotent: a duplicate, a late one, or
one for a change already seen yields no frame. The view a new subscriber gets as
`presence.state` is the same one the diffs are computed against, sent with no checkpoint
after its ack, so a subscriber's state plus the diffs after it is always the truth.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable
from typing import Any

import attrs
import trio

from ..broker import BrokerUnavailable
from ..common.backoff import backoff_delays
from ..fanout.hub import Client, Hub
from ..observability.jsonlog import fields
from ..protocol.frames import text_frame
from ..protocol.presence import Member, Share, apply, diff, diff_text, state_text
from ..protocol.routing import is_pattern_key
from ..protocol.topics import covers
from ..runtime.config import Config
from .store import PresenceStore, Write

log = logging.getLogger("trio_gateway.presence")

# Re-read every member of a topic, not only some users (after the store may have missed
# changes).
EVERYONE = None


def member_id(client: Client) -> str:
    """Who a connection is present as: its user, or for an API key its own client id."""
    return client.identity.user_id or client.id


def _info(client: Client) -> dict[str, Any]:
    info = client.identity.info
    return dict(info) if isinstance(info, dict) else {}


@attrs.define(eq=False)
class _Local:
    """This instance's connections of one user on one topic."""

    info: dict[str, Any]
    clients: set[Client] = attrs.field(factory=set)
    # When the grace of a user whose last connection went ends; None while connected.
    lingers_until: float | None = None


@attrs.define(eq=False)
class _View:
    """What this instance's subscribers of a topic have been told."""

    # None until the first read from the store has answered.
    members: dict[str, Member] | None = None
    # New subscribers, to get their presence.state instead of the next diff.
    waiting: list[Client] = attrs.field(factory=list)
    # The presence.state frame of `members`, built once per change.
    frame: bytes | None = None

    def state_frame(self, topic: str) -> bytes:
        assert self.members is not None
        if self.frame is None:
            self.frame = text_frame(state_text(topic, self.members.values()))
        return self.frame


class Tracker:
    """Presence of one gateway instance: the `changed` and `resync` half of its store's
    `Listener` (typing.py has `typed`)."""

    def __init__(self, config: Config, hub: Hub, store: PresenceStore) -> None:
        self._patterns = config.presence_topics
        self._grace = config.presence_grace
        self._interval = config.presence_diff_interval
        self._hub = hub
        self.store = store
        self._local: dict[tuple[str, str], _Local] = {}
        # Share writes not yet in the store, by (topic, user), in the order they were made.
        self._writes: dict[tuple[str, str], Share | None] = {}
        self._write_wanted = trio.Event()
        # (lingers_until, topic, user), earliest first; stale entries are skipped.
        self._lingering: list[tuple[float, str, str]] = []
        self._linger_changed = trio.Event()
        self._views: dict[str, _View] = {}
        self._dirty: dict[str, set[str] | None] = {}
        self._diff_wanted = trio.Event()
        self._nursery: trio.Nursery | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._patterns)

    @property
    def local_members(self) -> int:
        """(topic, user) pairs present through this instance's connections (the metrics)."""
        return len(self._local)

    def tracks(self, key: str) -> bool:
        """Whether `key` is a topic (not a pattern) whose subscribers are present on it."""
        return (
            bool(self._patterns)
            and ":" not in key
            and not is_pattern_key(key)
            and any(covers(pattern, key) for pattern in self._patterns)
        )

    # --- this instance's connections (Hub.watch) ------------------------------------------

    def subscribed(self, client: Client, key: str) -> None:
        if not self.tracks(key):
            return
        if key not in self._views:
            self._views[key] = view = _View()
            self._start_soon(self._load, key, view)
        user_id = member_id(client)
        local = self._local.get((key, user_id))
        if local is None:
            local = self._local[(key, user_id)] = _Local(_info(client))
        local.clients.add(client)
        local.lingers_until = None
        self._write(key, user_id, Share(len(local.clients), local.info))

    def unsubscribed(self, client: Client, key: str) -> None:
        if not self.tracks(key):
            return
        if not self._hub.subscribers(key):
            self._views.pop(key, None)
            self._dirty.pop(key, None)
        user_id = member_id(client)
        local = self._local.get((key, user_id))
        if local is None or client not in local.clients:
            return
        local.clients.discard(client)
        if local.clients:
            self._write(key, user_id, Share(len(local.clients), local.info))
            return
        # The share stays as written (at least one connection) until the grace ends.
        local.lingers_until = until = trio.current_time() + self._grace
        heapq.heappush(self._lingering, (until, key, user_id))
        self._linger_changed.set()

    def _write(self, topic: str, user_id: str, share: Share | None) -> None:
        # A later write to the same (topic, user) replaces the queued one, in the queue's
        # order of first writes: the store only ever needs the latest.
        self._writes[(topic, user_id)] = share
        self._write_wanted.set()

    def send_state(self, client: Client, topic: str) -> None:
        """Send `client` the presence.state of `topic` if it is a presence topic the client is
        subscribed to (its ack queued), with the next diff of that topic: by then it holds
        the client's own join, and the client gets no diff from before its state."""
        view = self._views.get(topic)
        if view is None or client not in self._hub.subscribers(topic):
            return
        view.waiting.append(client)
        self.changed(topic, ())

    async def state_frame(self, topic: str) -> bytes:
        """The presence.state of `topic`, from this instance's view when it has one.

        Raises:
            BrokerUnavailable: the store cannot answer now.
        """
        view = self._views.get(topic)
        if view is not None and view.members is not None:
            return view.state_frame(topic)
        return text_frame(state_text(topic, await self.members(topic)))

    async def members(self, topic: str) -> list[Member]:
        """Who is on `topic`, by user id, as this instance's observers were told if it has
        any, else from the store.

        Raises:
            BrokerUnavailable: the store cannot answer now.
        """
        view = self._views.get(topic)
        if view is not None and view.members is not None:
            present = view.members
        else:
            present = await self.store.members(topic)
        return [present[user_id] for user_id in sorted(present)]

    # --- what the store reports (Listener) --------------------------------------------------

    def changed(self, topic: str, users: Iterable[str]) -> None:
        if topic not in self._views:
            return
        dirty = self._dirty.get(topic, set())
        if dirty is not EVERYONE:
            dirty.update(users)
        self._dirty[topic] = dirty
        self._diff_wanted.set()

    def resync(self, settle: float) -> None:
        for (topic, user_id), local in self._local.items():
            self._writes.setdefault((topic, user_id), Share(max(1, len(local.clients)), local.info))
        self._write_wanted.set()
        self._start_soon(self._reread_later, settle)

    async def _reread_later(self, settle: float) -> None:
        await trio.sleep(settle)
        for topic in self._views:
            self._dirty[topic] = EVERYONE
        self._diff_wanted.set()

    # --- background work ------------------------------------------------------------------

    def _start_soon(self, *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(*args)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._write_forever)
            nursery.start_soon(self._end_graces)
            nursery.start_soon(self._diff_forever)
            for topic, view in self._views.items():
                nursery.start_soon(self._load, topic, view)
            task_status.started()

    async def _load(self, topic: str, view: _View) -> None:
        """Fill a new view from the store (retrying while it is down); its subscribers get
        their state with the diff that follows."""
        delays = backoff_delays(initial=0.1, maximum=5.0, jitter=0.5)
        while True:
            try:
                members = await self.store.members(topic)
                break
            except BrokerUnavailable:
                await trio.sleep(next(delays))
            if self._views.get(topic) is not view:
                return
        if self._views.get(topic) is not view:
            return
        view.members = members
        self.changed(topic, ())

    async def _write_forever(self) -> None:
        delays = backoff_delays(initial=0.1, maximum=5.0, jitter=0.5)
        while True:
            await self._write_wanted.wait()
            self._write_wanted = trio.Event()
            writes: list[Write] = [(t, u, share) for (t, u), share in self._writes.items()]
            try:
                await self.store.put(writes)
            except BrokerUnavailable as exc:
                log.warning("presence not written; retrying", extra=fields(error=str(exc)))
                self._write_wanted.set()
                await trio.sleep(next(delays))
                continue
            delays = backoff_delays(initial=0.1, maximum=5.0, jitter=0.5)
            for topic, user_id, share in writes:
                # Written meanwhile again: that newer write is still to go.
                if self._writes.get((topic, user_id), share) is share:
                    self._writes.pop((topic, user_id), None)

    async def _end_graces(self) -> None:
        while True:
            while not self._lingering:
                self._linger_changed = trio.Event()
                await self._linger_changed.wait()
            until, topic, user_id = self._lingering[0]
            self._linger_changed = trio.Event()
            with trio.move_on_at(until):
                await self._linger_changed.wait()
            if trio.current_time() < until:
                continue
            heapq.heappop(self._lingering)
            local = self._local.get((topic, user_id))
            if local is not None and local.lingers_until == until and not local.clients:
                del self._local[(topic, user_id)]
                self._write(topic, user_id, None)

    async def _diff_forever(self) -> None:
        while True:
            await self._diff_wanted.wait()
            # Gather: everything that changes within the interval goes out as one diff.
            await trio.sleep(self._interval)
            self._diff_wanted = trio.Event()
            dirty, self._dirty = self._dirty, {}
            for topic, users in dirty.items():
                await self._send_diff(topic, users)

    async def _send_diff(self, topic: str, users: set[str] | None) -> None:
        view = self._views.get(topic)
        if view is None:
            return
        if view.members is None:
            # Still loading: that read will include these changes or come before them.
            self.changed(topic, users or ())
            return
        try:
            if users is EVERYONE:
                present = await self.store.members(topic)
                fresh: dict[str, Member | None] = {u: None for u in view.members}
                fresh.update(present)
            else:
                fresh = await self.store.read(topic, sorted(users))
        except BrokerUnavailable:
            # Tried again after the next interval.
            if users is EVERYONE:
                self._dirty[topic] = EVERYONE
                self._diff_wanted.set()
            else:
                self.changed(topic, users)
            return
        if self._views.get(topic) is not view:
            return
        change = diff(view.members, fresh)
        waiting, view.waiting = set(view.waiting), []
        if change:
            apply(view.members, change)
            view.frame = None
            frame = text_frame(diff_text(topic, change))
            for client in tuple(self._hub.subscribers(topic)):
                if client not in waiting:
                    client.send(frame)
        for client in waiting:
            if client in self._hub.subscribers(topic):
                client.send(view.state_frame(topic))
