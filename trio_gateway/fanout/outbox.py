"""A client's outgoing frame queue: bounded, never blocks a producer, one consumer.

Owns the hand-off between the fan-out (which must never wait) and a connection's writer.
Must not know what a frame means or touch a socket.

Why not a trio memory channel: this sits on the per-delivery hot path and exists once per
connection. A channel is built for many senders and receivers that may block; here the
producer never blocks (a full queue is the slow-consumer signal, see hub.py) and the one
consumer wants everything queued at once, to write it in as few `send_all`s as possible. A
list, a limit and one parked task cost a fraction of a channel's memory and time.

The fan-out goes one step further (`stage` then `flush_each`): it queues publications
first, and the flusher task (flusher.py) hands each touched outbox on once, for all that is queued
by then. If that outbox's writer is idle, the frames are written straight away with one
non-blocking write(2) to the descriptor the connection lends (`direct`) instead of waking
the writer: on a fan-out of one message to many clients, a task switch per recipient costs
more than the write itself. What cannot be written at once, and everything while the writer
is busy, goes the usual way, in order.

`flush_each` makes every check first and then the writes back to back. A write to a
loopback socket runs the receiver's TCP input on this core too and leaves the CPU caches
cold, so Python that touches objects between two writes costs several times what it costs
in a warm loop (docs/PERFORMANCE.md has the figures).
This module writes to descriptors but never opens, closes or waits on one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol

import trio


class DirectWriter(Protocol):
    """What the connection lends an outbox for writes that skip its writer task."""

    def writable_fd(self) -> int:
        """The descriptor to write data frames to now, or -1 when not now (another write
        is in progress, the connection is closing, or the stream is not a socket)."""
        ...

    def wrote_partly(self) -> None:
        """A direct write stopped inside a frame: the writer must send the rest first."""
        ...


class Outbox:
    """Up to `limit` frames waiting for one writer task."""

    __slots__ = ("_closed", "_frames", "_limit", "_waiter", "direct", "written")

    def __init__(self, limit: int) -> None:
        self._frames: list[bytes] = []
        self._limit = limit
        self._closed = False
        self._waiter: trio.lowlevel.Task | None = None
        #: Set by the connection while its session runs; None: always through the writer.
        self.direct: DirectWriter | None = None
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
        """Hand staged frames on: written at once if the writer is idle, else left to it."""
        flush_each((self,))

    def close(self) -> None:
        """Accept no more frames; the writer still gets those already queued. Idempotent."""
        self._closed = True
        self._wake()

    def take_nowait(self) -> list[bytes]:
        """Every queued frame, oldest first (possibly none)."""
        frames, self._frames = self._frames, []
        return frames

    async def take(self) -> list[bytes]:
        """Every queued frame, oldest first, waiting while there is none.

        Raises:
            trio.EndOfChannel: the outbox is closed and empty.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._frames and not self._closed:
            if self._waiter is not None:
                raise trio.BusyResourceError("another task is already taking from this outbox")
            self._waiter = trio.lowlevel.current_task()
            # A bound method, not a closure: the waiting writer holds it for as long as its
            # connection is idle, and a closure with its cell costs three times as much.
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
        if not self._frames:
            raise trio.EndOfChannel
        return self.take_nowait()

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake(self) -> None:
        if self._waiter is not None:
            trio.lowlevel.reschedule(self._waiter)
            self._waiter = None


def flush_each(outboxes: Iterable[Outbox]) -> None:
    """`Outbox.flush` for many outboxes: all the checks, then all the writes (see above)."""
    writes: list[tuple[int, bytes, Outbox, DirectWriter]] = []
    for outbox in outboxes:
        frames = outbox._frames
        if outbox._waiter is None or not frames:
            # The writer is busy (or gone) and takes what is queued on its next round.
            continue
        direct = outbox.direct
        fd = -1 if direct is None else direct.writable_fd()
        if fd < 0 or direct is None:
            outbox._wake()
            continue
        writes.append((fd, frames[0] if len(frames) == 1 else b"".join(frames), outbox, direct))
        # Emptied in place rather than replaced: this runs once per recipient of every
        # publication.
        frames.clear()
    write = os.write
    for fd, data, outbox, direct in writes:
        try:
            written = write(fd, data)
        except OSError:
            # Full (BlockingIOError) or broken: the writer waits, or meets the error and
            # reports it.
            written = 0
        outbox.written += written
        if written != len(data):
            if written:
                direct.wrote_partly()
            outbox._frames.insert(0, data[written:])
            outbox._wake()
