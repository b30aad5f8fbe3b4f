"""One gateway's presence and typing: the tracker, the typists and their store, together.

Owns wiring them: the hub's subscription watch to the tracker (only when presence topics
are set, so a gateway without presence pays nothing per subscribe), and the store's
`Listener` callbacks to whichever of the two they are for. Must not hold state of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from ..fanout.hub import Hub
from ..runtime.config import Config
from .store import PresenceStore
from .tracker import Tracker
from .typing import Typists


class Presence:
    def __init__(self, config: Config, hub: Hub, store: PresenceStore) -> None:
        self.store = store
        self.tracker = Tracker(config, hub, store)
        self.typists = Typists(config, hub, store)
        if self.tracker.enabled:
            hub.watch(self.tracker.subscribed, self.tracker.unsubscribed)

    def changed(self, topic: str, users: Iterable[str]) -> None:
        self.tracker.changed(topic, users)

    def resync(self, settle: float) -> None:
        self.tracker.resync(settle)

    def typed(self, topic: str, user_id: str, state: str) -> None:
        self.typists.typed(topic, user_id, state)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.tracker.run)
            await nursery.start(self.typists.run)
            await nursery.start(self.store.run, self)
            task_status.started()
