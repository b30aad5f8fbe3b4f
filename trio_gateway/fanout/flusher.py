"""The flusher: hands what fan-outs queued on to the sockets, and holds brokers back.

Owns the dirty queue (clients with frames queued by a fan-out and not yet handed on), the
task that writes to them a slice at a time, and the back-pressure of `Hub.deliver`. Must
not: know subscriptions (hub.py) or how a write is done (outbox.py's `flush_each`, whose
direct writes never wait).

Theory of operation
-------------------
Queueing and writing are two steps. A fan-out only queues and lists the clients it gave work
to; the flusher task then writes to them, `slice_size` clients at a time, and lets other tasks
run between slices. When nothing else was queued (the flusher task is parked), there is
nothing for the first slice to join: a fan-out of one publication writes up to `room()`
clients itself as it goes through them, in one pass with no queueing (hub.py), and queues
the rest; otherwise its first slice is written at once by the task that queued it. Either
way the flusher task goes on from the second. Writing a large fan-out in one go would
make every publication arriving meanwhile wait for its end and then for a whole fan-out of
its own. Between slices it is queued at once instead, and joins the same write for every
client the flusher has not reached yet, so under load a client's wait stays about one pass
over the clients. The event loop also stays responsive (pongs, reads, the keepalive) during
a large fan-out.

Back-pressure counts publications, not rounds: a broker's round is written once every client
listed before its end has been taken off the queue; until then its publications count as
"ahead", and `admit` waits while more than `max_ahead` are. The Redis subscriber's rounds are
often a single message, and a bound in rounds would let each pass over the clients carry only
as many messages as rounds, far fewer than arrive during it under load.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import trio

from .outbox import Outbox, flush_each

# Clients written to before other tasks may run: a few ms of loopback writes. Each pause costs
# a scheduler round with the caches cold after the writes, so slices are not made smaller;
# nor larger, since what is published during a slice joins the writes only after it.
FLUSH_SLICE = 256
# Clients a fan-out with nothing queued behind it may write in its own pass (`room`): with
# nothing to join, pauses would only add their cost, so a thousand clients are written in
# one (docs/PERFORMANCE.md).
DIRECT_ROOM = 1024
# Most scheduler turns the flusher gives other tasks between two slices.
EXTRA_TURNS = 16


class _Round(NamedTuple):
    #: The running total of listed clients at the round's end: written once `taken` reaches it.
    end: int
    publications: int
    #: When the round reached the hub (trio's clock).
    queued_at: float


def _ignore(seconds: float) -> None:
    pass


class Flusher:
    """The dirty queue, the task writing it out, and the bound on what is queued ahead."""

    def __init__(
        self,
        slice_size: int = FLUSH_SLICE,
        max_ahead: int = 128,
        direct_room: int = DIRECT_ROOM,
        on_written: Callable[[float], None] = _ignore,
    ) -> None:
        #: The outboxes of clients with frames queued by a fan-out, in the order they got
        #: them; one is listed once however many frames wait (`Outbox.stage` says when it was
        #: empty). The hub appends to it directly: it is the fan-out's per-recipient hot path,
        #: and the outbox rather than its client, so writing never touches the client.
        self.dirty: deque[Outbox] = deque()
        self._slice_size = slice_size
        self._direct_room = direct_room
        self._max_ahead = max_ahead
        # Told, once per broker round, how long the round waited until every client it gave
        # frames to was handed them (the publish-to-write latency metric).
        self._on_written = on_written
        self._idle = trio.lowlevel.ParkingLot()
        self._progress = trio.lowlevel.ParkingLot()
        # Running totals of clients listed in, and taken off, `dirty`; and `_listed` as the
        # last round admitted left it.
        self._listed = 0
        self._taken = 0
        self._admitted = 0
        self._rounds: deque[_Round] = deque()
        self._ahead = 0
        # Fan-outs so far, so the flusher can tell whether publications are coming in.
        self._published = 0

    def room(self) -> int:
        """How many clients a fan-out may write itself, in its pass over them, rather than
        queue: `direct_room` while nothing is queued and the flusher task is idle, else
        none."""
        return self._direct_room if not self.dirty and self._idle else 0

    def queued(self, listed: int, written: int = 0) -> None:
        """A fan-out has appended `listed` clients to `dirty` (0 or more), having written
        `written` itself (within `room()`). With the flusher task idle and nothing written,
        the first slice of those listed is written before this returns."""
        self._published += 1
        # What the fan-out wrote counts as listed and taken at once: its round is written.
        self._listed += listed + written
        self._taken += written
        if written:
            if self.dirty:
                self._idle.unpark()
        elif self.dirty and self._idle:
            # Nothing else was queued: the first slice is written now, by the publishing
            # task, rather than after a scheduler turn in which the publisher's HTTP answer
            # (woken at the same time) runs first half the time.
            self._write_slice()
            if self.dirty:
                self._idle.unpark()

    async def admit(self, publications: int, queued_at: float) -> None:
        """A broker's round of `publications`, which reached the hub at `queued_at` (trio's
        clock), was just queued: wait while more than `max_ahead` publications are queued
        and not yet written."""
        gave_work = self._listed > self._admitted
        self._admitted = self._listed
        if self._listed <= self._taken:
            # Written already, by the fan-out itself (nothing else was queued); or it gave
            # nobody new work, and waited for nothing, so it is not observed.
            if gave_work:
                self._on_written(trio.current_time() - queued_at)
            return
        self._rounds.append(_Round(self._listed, publications, queued_at))
        self._ahead += publications
        while self._ahead > self._max_ahead:
            await self._progress.park()

    def _forget_written(self) -> None:
        rounds = self._rounds
        if not rounds or rounds[0].end > self._taken:
            return
        now = trio.current_time()
        while rounds and rounds[0].end <= self._taken:
            written = rounds.popleft()
            self._ahead -= written.publications
            self._on_written(now - written.queued_at)

    def _write_slice(self) -> None:
        dirty = self.dirty
        count = min(len(dirty), self._slice_size)
        flush_each([dirty.popleft() for _ in range(count)])
        self._taken += count
        self._forget_written()
        if self._progress:
            self._progress.unpark_all()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write what fan-outs queued, until cancelled.

        Whatever is still queued when this task ends stays in the outboxes, where each
        connection flushes it when it closes after a flush was asked for.
        """
        dirty = self.dirty
        task_status.started()
        while True:
            if not dirty:
                await self._idle.park()
            self._write_slice()
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
