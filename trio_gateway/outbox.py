"""A client's outgoing frame queue: bounded, never blocks a producer, one consumer.

Owns the hand-off between the fan-out (which must never wait) and a connection's writer.
Must not know what a frame means or touch a socket.

Why not a trio memory channel: this sits on the per-delivery hot path and exists once per
connection. A channel is built for many senders and receivers that may block; here the
producer never blocks (a full queue is the slow-consumer signal, see hub.py) and the one
consumer wants everything queued at once, to write it in as few `send_all`s as possible. A
list, a limit and one parked task cost a fraction of a channel's memory and time.

The fan-out goes one step further (`stage` then `flush`): it queues publications first, and
the hub's flusher task hands each touched outbox on once, for all that is queued by then. If
that outbox's writer is idle, `flush` writes the frames straight away through `direct` (a
non-blocking write that never waits) instead of waking the writer: on a fan-out of one
message to many clients, a task switch per recipient costs more than the write itself.
What `direct` cannot write at once, and everything while the writer is busy, goes the usual
way, in order.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class Outbox:
    """Up to `limit` frames waiting for one writer task."""

    __slots__ = ("_closed", "_frames", "_limit", "_waiter", "direct")

    def __init__(self, limit: int) -> None:
        self._frames: list[bytes] = []
        self._limit = limit
        self._closed = False
        self._waiter: trio.lowlevel.Task | None = None
        #: Writes bytes without waiting if nothing else is writing: returns how many it
        #: wrote, or -1 if it cannot write now. Set by the connection; None: always queue.
        self.direct: Callable[[bytes], int] | None = None

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
        frames = self._frames
        if self._waiter is None or not frames:
            # The writer is busy (or gone) and takes what is queued on its next round.
            return
        if self.direct is not None:
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            written = self.direct(data)
            # Emptied in place rather than replaced: this runs once per recipient of every
            # publication.
            if written == len(data):
                frames.clear()
                return
            if written > 0:
                frames.clear()
                frames.append(data[written:])
        self._wake()

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
