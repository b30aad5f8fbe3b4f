"""The in-memory broker: one process; offsets, history and retained state live here.

Owns each key's log (epoch, latest offset, the last `history_size` frames), the retained
session states, the idempotency keys seen within `idempotency_ttl`, and the sweep that
forgets what has expired. Must not be used by several
processes: there is no shared state, which is exactly why `--workers` refuses it.

A log is created by the first publication on its key, or by the first subscriber asking for
its position, with a fresh random epoch; a log idle for longer than `LOG_IDLE_LIMIT` is
forgotten, and if it comes back it comes back with a new epoch, so a client resuming across
that gap is told `recovered: false` rather than handed a silent gap.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Sequence

import attrs
import trio

from ..fanout.publication import (
    Assigned,
    Delivery,
    OffsetFrame,
    Position,
    Publication,
    delivery,
)
from ..protocol.messages import Since
from ..runtime.config import Config
from . import Deliver, history_window

# Seconds a key's log (epoch and offset) outlives its last publication or position query:
# long enough that a resume after a quiet spell is not a false "recovered: false".
LOG_IDLE_LIMIT = 24 * 3600.0


def new_epoch() -> str:
    return secrets.token_hex(4)


@attrs.define(eq=False)
class _Log:
    epoch: str
    offset: int = 0
    # (offset, publish time, frame), oldest first, at most history_size.
    entries: deque[tuple[int, float, bytes]] = attrs.field(factory=deque)
    touched: float = 0.0


class MemoryBroker:
    kind = "memory"
    ok = True
    reconnects = 0

    def __init__(self, config: Config, round_size: int) -> None:
        self._round_size = round_size
        self._history_size = config.history_size
        self._history_ttl = config.history_ttl
        self._state_ttl = config.state_ttl
        self._deliver: Deliver | None = None
        self._logs: dict[str, _Log] = {}
        # Keys local clients hold: their logs are kept however quiet, since forgetting one
        # would restart its offsets under a client that is tracking them.
        self._wanted: set[str] = set()
        # key -> (state message text, expiry time)
        self._states: dict[str, tuple[str, float]] = {}
        self._idempotency_ttl = config.idempotency_ttl
        # idempotency key -> (the offsets it was published with, expiry time), by trio's clock
        self._seen: dict[str, tuple[tuple[int, ...], float]] = {}

    def want(self, key: str) -> None:
        self._wanted.add(key)

    def unwant(self, key: str) -> None:
        self._wanted.discard(key)

    def when_live(self, key: str, callback: Callable[[], None]) -> None:
        callback()

    def _log(self, key: str, now: float) -> _Log:
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = _Log(new_epoch())
        log.touched = now
        return log

    async def publish(self, publications: Sequence[Publication]) -> list[Assigned]:
        assert self._deliver is not None, "publish before run"
        now = trio.current_time()
        assigned = []
        for start in range(0, len(publications), self._round_size):
            # Delivered in rounds, and `deliver` waits while the sockets are two rounds
            # behind: one large batch queued whole would make a client reading at full
            # speed look slow.
            if start:
                await trio.lowlevel.checkpoint()
            round_: list[Delivery] = []
            for publication in publications[start : start + self._round_size]:
                if (seen := self._repeat(publication.idempotency_key, now)) is not None:
                    assigned.append(Assigned(seen, duplicate=True))
                    continue
                logs = [self._log(key, now) for key in publication.keys]
                for log in logs:
                    log.offset += 1
                offsets = tuple(log.offset for log in logs)
                item = delivery(
                    publication.body,
                    publication.keys,
                    offsets,
                    publication.topic,
                    publication.extra,
                )
                for log in logs:
                    # Replayed only to clients that asked for recovery: the frame with offsets.
                    log.entries.append((log.offset, now, item[1]))
                    if len(log.entries) > self._history_size:
                        log.entries.popleft()
                if (retain := publication.retain) is not None:
                    if retain.state is None:
                        self._states.pop(retain.key, None)
                    else:
                        self._states[retain.key] = (retain.state, now + self._state_ttl)
                if publication.idempotency_key is not None:
                    self._seen[publication.idempotency_key] = (
                        offsets,
                        now + self._idempotency_ttl,
                    )
                assigned.append(Assigned(offsets))
                round_.append(item)
            await self._deliver(round_)
        return assigned

    def _repeat(self, key: str | None, now: float) -> tuple[int, ...] | None:
        """The offsets `key` was published with, if it was within `idempotency_ttl`."""
        if key is None or (seen := self._seen.get(key)) is None:
            return None
        if seen[1] <= now:
            del self._seen[key]
            return None
        return seen[0]

    async def fetch(self, key: str, since: Since | None, *, state: bool) -> Position:
        now = trio.current_time()
        log = self._log(key, now)
        recovered = None
        replay: tuple[OffsetFrame, ...] = ()
        if since is not None:
            entries = [(offset, at, frame) for offset, at, frame in log.entries]
            window = history_window(since, log.epoch, log.offset, entries, now - self._history_ttl)
            recovered = window is not None
            replay = window or ()
        retained = self._retained(key, now) if state else None
        return Position(log.epoch, log.offset, recovered, replay, retained)

    async def state(self, key: str) -> str | None:
        return self._retained(key, trio.current_time())

    def _retained(self, key: str, now: float) -> str | None:
        retained = self._states.get(key)
        if retained is None:
            return None
        if retained[1] <= now:
            del self._states[key]
            return None
        return retained[0]

    async def run(
        self, deliver: Deliver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._deliver = deliver
        task_status.started()
        # Forget what expired, so memory is bounded by what is recent, not by all time.
        period = min(self._history_ttl, self._state_ttl, self._idempotency_ttl, 60.0)
        while True:
            await trio.sleep(period)
            self._sweep(trio.current_time())

    def _sweep(self, now: float) -> None:
        horizon = now - self._history_ttl
        for key, log in list(self._logs.items()):
            while log.entries and log.entries[0][1] < horizon:
                log.entries.popleft()
            if not log.entries and log.touched < now - LOG_IDLE_LIMIT and key not in self._wanted:
                del self._logs[key]
        for key, (_, expires) in list(self._states.items()):
            if expires <= now:
                del self._states[key]
        for key, (_, expires) in list(self._seen.items()):
            if expires <= now:
                del self._seen[key]
