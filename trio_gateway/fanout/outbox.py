"""A client's outgoing frame queue: bounded, never blocks a producer, one consumer.

Owns the hand-off between the fan-out (which must never wait) and a connection's writer.
Must not know what a frame means or touch a socket.

Why not a trio memory channel: this sits on the per-delivery hot path and exists once per
connection. A channel is built for many senders and receivers that may block; here the
producer never blocks (a full queue is the slow-consumer signal, see hub.py) and the one
consumer wants everything queued at once, to write it in as few `send_all`s as possible.

Nor is there a writer task waiting on the queue: most connections are idle most of the
time, and a parked task is most of what an idle connection would cost. Frames are written
straight away instead, with one non-blocking write(2) to the descriptor the connection lends
(`fd`, kept in step by the connection with its own writes and state). Only what cannot be
written at once (the socket is full, another write is in progress, or the stream is not a
socket) starts a writer task (`writers`), which takes everything queued, writes it in order,
and ends once nothing is left; while it runs, frames wait for it. A fan-out queues
publications (`stage`), and the flusher task (flusher.py) hands each touched outbox on once
(`flush_each`), for all that is queued by then: on a fan-out of one message to many
clients, a task switch per recipient would cost more than the write itself. With nothing
queued anywhere, a fan-out writes instead of queueing (hub.py, `write_each`).

`flush_each` makes the checks of a run of outboxes first and then their writes back to back
(`write_each`, which the hub's one-pass fan-out shares). A write to a loopback socket runs
the receiver's TCP input on this core too and leaves the CPU caches cold, so Python that
touches objects between two writes costs several times what it costs in a warm loop, and
every object a recipient's write needs is one more cache miss (docs/PERFORMANCE.md has the
figures).
This module writes to descriptors but never opens, closes or waits on one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import trio

# Outboxes whose checks are made before their writes: enough to keep the checks' Python
# and the kernel's writes apart, few enough that the first write does not wait for a whole
# slice's checks.
WRITE_RUN = 64


class DirectWriter(Protocol):
    """What the connection lends an outbox for writes that skip its writer task."""

    def wrote_partly(self) -> None:
        """A direct write stopped inside a frame: the writer must send the rest first."""
        ...


class WriterStarter(Protocol):
    """What the connection lends an outbox to start its writer."""

    def start_writer(self) -> None:
        """Start a task that takes frames (`take_nowait`) until none are left and then
        calls `writer_stopped`."""
        ...


class Outbox:
    """Up to `limit` frames waiting for one connection's writer."""

    __slots__ = ("_closed", "_frames", "_limit", "_writing", "direct", "fd", "writers", "written")

    def __init__(self, limit: int) -> None:
        self._frames: list[bytes] = []
        self._limit = limit
        self._closed = False
        # True from when `start_writer` is called until that writer says it has stopped.
        self._writing = False
        #: Set by the connection while its session runs; None: always through the writer.
        self.direct: DirectWriter | None = None
        #: The descriptor frames may be written to right now, or -1: kept by the connection
        #: (transport/websocket.py `lend_fd`) while `direct` is set, -1 otherwise.
        self.fd = -1
        #: Set by the connection while its session runs. None: frames wait until it is set
        #: and the outbox flushed.
        self.writers: WriterStarter | None = None
        #: Bytes written from this outbox, directly here or by its writer (the metrics).
        self.written = 0

    def stage(self, frame: bytes) -> bool:
        """Queue `frame` without handing it on yet; `flush` must follow. Never blocks.

        Returns:
            True if the outbox was empty, i.e. the caller must remember to flush it.

        Raises:
            trio.WouldBlock: `limit` frames are already waiting.
            trio.ClosedResourceError: the outbox was closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("outbox is closed")
        frames = self._frames
        queued = len(frames)
        if queued >= self._limit:
            raise trio.WouldBlock
        frames.append(frame)
        return queued == 0

    def flush(self) -> None:
        """Hand staged frames on: written at once if no writer is running, else left to it."""
        flush_each((self,))

    def close(self) -> None:
        """Accept no more frames; a running writer still gets those already queued.
        Idempotent."""
        self._closed = True

    @property
    def writing(self) -> bool:
        """A writer task is running (it takes what is queued before it stops)."""
        return self._writing

    def take_nowait(self) -> list[bytes]:
        """Every queued frame, oldest first (possibly none)."""
        frames, self._frames = self._frames, []
        return frames

    def writer_stopped(self) -> None:
        """Said by the writer as it ends (having taken everything, or cut short)."""
        self._writing = False

    def _hand_to_writer(self) -> None:
        if not self._writing and self.writers is not None:
            self._writing = True
            self.writers.start_writer()


def flush_each(outboxes: Sequence[Outbox]) -> None:
    """`Outbox.flush` for many outboxes: the checks of WRITE_RUN of them, then their writes
    (see above)."""
    for start in range(0, len(outboxes), WRITE_RUN):
        writes: list[tuple[int, bytes, Outbox]] = []
        for outbox in outboxes[start : start + WRITE_RUN]:
            frames = outbox._frames
            if outbox._writing or not frames:
                # A writer is running and takes what is queued before it stops.
                continue
            fd = outbox.fd
            if fd < 0:
                outbox._hand_to_writer()
                continue
            writes.append((fd, frames[0] if len(frames) == 1 else b"".join(frames), outbox))
            # Emptied in place rather than replaced: this runs once per recipient of every
            # publication.
            frames.clear()
        write_each(writes)


def write_each(writes: Sequence[tuple[int, bytes, Outbox]]) -> None:
    """Write each `(fd, data, outbox)` at once, for outboxes with nothing else queued whose
    `fd` was just read; what a write leaves (the socket is full, or broken) goes first in
    its outbox, to the writer."""
    write = os.write
    for fd, data, outbox in writes:
        try:
            written = write(fd, data)
        except OSError:
            # Full (BlockingIOError) or broken: the writer waits, or meets the error and
            # reports it.
            written = 0
        outbox.written += written
        if written != len(data):
            if written and outbox.direct is not None:
                outbox.direct.wrote_partly()
            outbox._frames.insert(0, data[written:])
            outbox._hand_to_writer()
