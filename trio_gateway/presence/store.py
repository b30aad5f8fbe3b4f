"""Where presence lives: the `PresenceStore` seam and the in-memory store of one process.

A store holds, per topic and user, each instance's `Share` (its connections there), each
user's status, and the typing indicators; it tells every instance's `Listener` which
(topic, users) changed and which typing indicators started or stopped. It decides nothing
about who observes what, and never touches clients (tracker.py and typing.py do).

Must not: block; the memory store's methods never wait, the Redis store's wait on Redis.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import trio

from ..protocol.presence import START, STOP, Member, Share, member

#: One write of this instance's share of a user on a topic; None removes it.
Write = tuple[str, str, Share | None]


class Listener(Protocol):
    """What a store calls back; every method is synchronous and must not block."""

    def changed(self, topic: str, users: Iterable[str]) -> None:
        """These users' entries on `topic` may have changed (on any instance)."""

    def typed(self, topic: str, user_id: str, state: str) -> None:
        """A typing indicator started or stopped (deduplicated across instances)."""

    def resync(self, settle: float) -> None:
        """The store may have lost or missed changes: write every share again now, re-read
        every observed topic after `settle` seconds (when other instances have too)."""


class PresenceStore(Protocol):
    async def put(self, writes: Sequence[Write]) -> None:
        """Apply this instance's share writes, in order, all or nothing.

        Raises:
            BrokerUnavailable: nothing was written.
        """

    async def set_status(self, user_id: str, status: str) -> None:
        """Set `user_id`'s status on every topic they are on (and those they join while it
        lasts).

        Raises:
            BrokerUnavailable: the store cannot answer now.
        """

    async def members(self, topic: str) -> dict[str, Member]:
        """Every visible member of `topic`, by user id.

        Raises:
            BrokerUnavailable: the store cannot answer now.
        """

    async def read(self, topic: str, users: Sequence[str]) -> dict[str, Member | None]:
        """These users' entries on `topic` now (None: not visibly present).

        Raises:
            BrokerUnavailable: the store cannot answer now.
        """

    async def user(self, user_id: str) -> tuple[str | None, list[str]]:
        """`user_id`'s status (None if never set) and the topics they are present on.

        Raises:
            BrokerUnavailable: the store cannot answer now.
        """

    async def typing_start(self, topic: str, user_id: str, ttl: float) -> bool:
        """Start (True, announced to every instance) or extend (False) a typing indicator,
        which lapses `ttl` seconds from now unless extended.

        Raises:
            BrokerUnavailable: the store cannot answer now.
        """

    async def typing_stop(self, topic: str, user_id: str) -> None:
        """End a typing indicator; the stop is announced once, if it was running.

        Raises:
            BrokerUnavailable: the store cannot answer now.
        """

    async def typing_lapse(self, topic: str, user_id: str) -> float | None:
        """End the indicator if its time is up (announcing the stop once, whichever instance
        asks first); else the seconds it has left, since another instance extended it.

        Raises:
            BrokerUnavailable: the store cannot answer now.
        """

    async def run(
        self, listener: Listener, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The store's background work (Redis: renewals, sweeps, notifications)."""

    async def close(self) -> None:
        """A graceful stop: this instance's shares are to go after the grace. Never raises."""


class MemoryStore:
    """Presence of one process: every share is this instance's, nothing can go stale."""

    def __init__(self, status_ttl: float) -> None:
        self._shares: dict[str, dict[str, Share]] = {}
        # user -> topics they have a share on
        self._topics: dict[str, set[str]] = {}
        # user -> (status, expiry while they are on no topic, else None)
        self._status: dict[str, tuple[str, float | None]] = {}
        self._status_ttl = status_ttl
        # (topic, user) -> when the indicator lapses
        self._typing: dict[tuple[str, str], float] = {}
        self._listener: Listener | None = None

    def _notify(self, topic: str, users: Iterable[str]) -> None:
        if self._listener is not None:
            self._listener.changed(topic, users)

    async def put(self, writes: Sequence[Write]) -> None:
        changed: dict[str, list[str]] = {}
        for topic, user_id, share in writes:
            shares = self._shares.setdefault(topic, {})
            if shares.get(user_id) == share:
                if not shares:
                    del self._shares[topic]
                continue
            if share is None:
                del shares[user_id]
                if not shares:
                    del self._shares[topic]
                topics = self._topics[user_id]
                topics.discard(topic)
                if not topics:
                    del self._topics[user_id]
                    self._status.pop(user_id, None)
            else:
                shares[user_id] = share
                self._topics.setdefault(user_id, set()).add(topic)
                if (status := self._status.get(user_id)) is not None:
                    self._status[user_id] = (status[0], None)
            changed.setdefault(topic, []).append(user_id)
        for topic, users in changed.items():
            self._notify(topic, users)

    def _status_of(self, user_id: str) -> str | None:
        entry = self._status.get(user_id)
        if entry is None:
            return None
        status, expires = entry
        if expires is not None and expires <= trio.current_time():
            del self._status[user_id]
            return None
        return status

    async def set_status(self, user_id: str, status: str) -> None:
        topics = self._topics.get(user_id, ())
        expires = None if topics else trio.current_time() + self._status_ttl
        self._status[user_id] = (status, expires)
        for topic in sorted(topics):
            self._notify(topic, (user_id,))

    def _entry(self, topic: str, user_id: str) -> Member | None:
        share = self._shares.get(topic, {}).get(user_id)
        return member(user_id, [share] if share else [], self._status_of(user_id))

    async def members(self, topic: str) -> dict[str, Member]:
        entries = {user_id: self._entry(topic, user_id) for user_id in self._shares.get(topic, {})}
        return {user_id: entry for user_id, entry in entries.items() if entry is not None}

    async def read(self, topic: str, users: Sequence[str]) -> dict[str, Member | None]:
        return {user_id: self._entry(topic, user_id) for user_id in users}

    async def user(self, user_id: str) -> tuple[str | None, list[str]]:
        return self._status_of(user_id), sorted(self._topics.get(user_id, ()))

    def _typed(self, topic: str, user_id: str, state: str) -> None:
        if self._listener is not None:
            self._listener.typed(topic, user_id, state)

    async def typing_start(self, topic: str, user_id: str, ttl: float) -> bool:
        key = (topic, user_id)
        started = key not in self._typing
        self._typing[key] = trio.current_time() + ttl
        if started:
            self._typed(topic, user_id, START)
        return started

    async def typing_stop(self, topic: str, user_id: str) -> None:
        if self._typing.pop((topic, user_id), None) is not None:
            self._typed(topic, user_id, STOP)

    async def typing_lapse(self, topic: str, user_id: str) -> float | None:
        lapses = self._typing.get((topic, user_id))
        if lapses is None:
            return None
        left = lapses - trio.current_time()
        if left > 0:
            return left
        await self.typing_stop(topic, user_id)
        return None

    async def run(
        self, listener: Listener, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._listener = listener
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._listener = None

    async def close(self) -> None:
        pass
