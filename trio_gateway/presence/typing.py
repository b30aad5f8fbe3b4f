"""Typing indicators: started and stopped by clients, deduplicated across instances.

Owns this instance's typists: per (topic, user), the connections that said they are typing,
when one last did, and when the indicator lapses unless extended. A start is written to the
store at most twice per `typing_ttl` however often clients send it (the store announces it
once, to every instance); an indicator lapses `typing_ttl` after the last start, and is
stopped at once by an explicit stop or when the last connection that started it goes. Each
instance sends what the store announces to its own subscribers of the topic, never to the
typing user's connections. Must not: keep history or offsets for typing.
"""

from __future__ import annotations

import heapq
import logging

import attrs
import trio

from ..broker import BrokerUnavailable
from ..fanout.hub import Client, Hub
from ..observability.jsonlog import fields
from ..protocol.frames import text_frame
from ..protocol.presence import typing_text
from ..runtime.config import Config
from .store import PresenceStore
from .tracker import member_id

log = logging.getLogger("trio_gateway.presence.typing")


@attrs.define(eq=False)
class _Typist:
    clients: set[str] = attrs.field(factory=set)
    # The last start from any of them, and when the store's indicator lapses (local clock).
    seen: float = 0.0
    lapses: float = 0.0


class Typists:
    def __init__(self, config: Config, hub: Hub, store: PresenceStore) -> None:
        self._ttl = config.typing_ttl
        self._hub = hub
        self._store = store
        self._typists: dict[tuple[str, str], _Typist] = {}
        # (lapses, topic, user), earliest first; stale entries are skipped.
        self._timers: list[tuple[float, str, str]] = []
        self._timers_changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def start(self, client: Client, topic: str) -> None:
        """Raises BrokerUnavailable when the store cannot take a start it needs."""
        key = (topic, member_id(client))
        now = trio.current_time()
        typist = self._typists.get(key)
        # Recently written: the lapse timer extends it from `seen` when the time comes.
        if typist is None or typist.lapses - now <= self._ttl / 2:
            await self._store.typing_start(topic, key[1], self._ttl)
            typist = self._typists.setdefault(key, _Typist())
            typist.lapses = trio.current_time() + self._ttl
            heapq.heappush(self._timers, (typist.lapses, *key))
            self._timers_changed.set()
        typist.clients.add(client.id)
        typist.seen = now

    async def stop(self, client: Client, topic: str) -> None:
        """Raises BrokerUnavailable when the store cannot take the stop."""
        user_id = member_id(client)
        self._typists.pop((topic, user_id), None)
        await self._store.typing_stop(topic, user_id)

    def disconnected(self, client: Client) -> None:
        for key, typist in list(self._typists.items()):
            typist.clients.discard(client.id)
            if not typist.clients:
                del self._typists[key]
                if self._nursery is not None:
                    self._nursery.start_soon(self._stop_quietly, *key)

    def typed(self, topic: str, user_id: str, state: str) -> None:
        """Send what the store announced to this instance's other subscribers of `topic`."""
        frame = text_frame(typing_text(topic, user_id, state))
        for client in tuple(self._hub.subscribers(topic)):
            if member_id(client) != user_id:
                client.send(frame)

    async def _stop_quietly(self, topic: str, user_id: str) -> None:
        try:
            await self._store.typing_stop(topic, user_id)
        except BrokerUnavailable as exc:
            # The indicator lapses in the store by itself.
            log.warning("typing stop not written", extra=fields(error=str(exc)))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                while not self._timers:
                    self._timers_changed = trio.Event()
                    await self._timers_changed.wait()
                lapses, topic, user_id = self._timers[0]
                self._timers_changed = trio.Event()
                with trio.move_on_at(lapses):
                    await self._timers_changed.wait()
                if trio.current_time() < lapses:
                    continue
                heapq.heappop(self._timers)
                typist = self._typists.get((topic, user_id))
                if typist is not None and typist.lapses == lapses:
                    await self._lapse(topic, user_id, typist)

    async def _lapse(self, topic: str, user_id: str, typist: _Typist) -> None:
        key = (topic, user_id)
        try:
            if typist.seen + self._ttl > typist.lapses:
                # Sent again since it was written: extend it to a ttl after that.
                left = typist.seen + self._ttl - trio.current_time()
                await self._store.typing_start(topic, user_id, left)
            else:
                # None: stopped, by this call or another instance's. Else it has time left
                # (another instance extended it, or the store's clock is behind ours): look
                # again then, so that some instance always ends it.
                remaining = await self._store.typing_lapse(topic, user_id)
                if remaining is None:
                    if self._typists.get(key) is typist:
                        del self._typists[key]
                    return
                left = remaining
        except BrokerUnavailable as exc:
            if self._typists.get(key) is typist:
                del self._typists[key]
            log.warning("typing lapse not written", extra=fields(error=str(exc)))
            return
        if self._typists.get(key) is typist:
            typist.lapses = trio.current_time() + left
            heapq.heappush(self._timers, (typist.lapses, topic, user_id))
