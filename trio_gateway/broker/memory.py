"""The in-memory broker: one process, publications go straight to the local hub.

Owns nothing but the delivery rounds. Must not be used by several processes: there is no
shared state, which is exactly why `--workers` refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from ..publication import Publication
from . import Deliver


class MemoryBroker:
    kind = "memory"
    ok = True

    def __init__(self, round_size: int) -> None:
        self._round_size = round_size
        self._deliver: Deliver | None = None

    def want(self, key: str) -> None:
        pass

    def unwant(self, key: str) -> None:
        pass

    def when_live(self, key: str, callback: Callable[[], None]) -> None:
        callback()

    async def publish(self, publications: Sequence[Publication]) -> None:
        assert self._deliver is not None, "publish before run"
        # Delivered in rounds with a checkpoint between them, so the writers run: one large
        # batch queued whole would make a client reading at full speed look slow.
        for start in range(0, len(publications), self._round_size):
            if start:
                await trio.lowlevel.checkpoint()
            self._deliver(
                (publication.frame, publication.keys)
                for publication in publications[start : start + self._round_size]
            )

    async def run(
        self, deliver: Deliver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._deliver = deliver
        task_status.started()
