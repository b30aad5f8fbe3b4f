"""One task that waits for input on every idle WebSocket, so that their readers wait cheaply.

Theory of operation
-------------------
An idle connection's reader spends its life waiting for its socket to become readable, and
what that wait holds is a large share of what an idle connection costs: trio's
`wait_readable` goes through four coroutine frames of its I/O manager plus a closure and a
waiter record per descriptor, all held for as long as the connection is idle. Here a reader
registers its descriptor in an epoll set of our own (`expect`) and parks in one trap
(`trio.lowlevel.wait_task_rescheduled`); the `run` task waits for that epoll set to become
readable through trio, and reschedules the readers whose descriptors are ready. A reader
costs one dict entry while it waits, and a wake-up one more scheduler hop.

Registrations are one-shot (EPOLLONESHOT), like trio's own: a descriptor is armed for one
event per wait, and an event for a reader that stopped waiting (cancelled) is ignored. The
kernel drops a descriptor from the set when it is closed, so a number reused by a newer
socket is registered afresh.

Must not read, write or close descriptors, and must not know what a WebSocket is.
"""

from __future__ import annotations

import select

import trio

# Events taken from the epoll set per turn; more ready than this are taken on the next one.
MAX_EVENTS = 1024
_ARMED = select.EPOLLIN | select.EPOLLONESHOT


class Readiness:
    """The shared epoll set and the readers waiting on it."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._waiting: dict[int, trio.lowlevel.Task] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, fd: int) -> None:
        """Arm `fd` for the current task, which must then park in
        `trio.lowlevel.wait_task_rescheduled`, with an abort that calls `forget(fd)`.

        Raises:
            trio.BusyResourceError: another task is already waiting for `fd`.
            OSError: `fd` cannot be watched (closed, say); nothing was armed.
        """
        if fd in self._waiting:
            raise trio.BusyResourceError("another task is already waiting for this socket")
        try:
            self._epoll.modify(fd, _ARMED)
        except FileNotFoundError:
            self._epoll.register(fd, _ARMED)
        self._waiting[fd] = trio.lowlevel.current_task()

    def forget(self, fd: int) -> None:
        """The task waiting for `fd` stops waiting (its wait was aborted)."""
        self._waiting.pop(fd, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wake the readers whose descriptors are ready, until cancelled."""
        epoll, waiting = self._epoll, self._waiting
        try:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0, MAX_EVENTS):
                    task = waiting.pop(fd, None)
                    if task is not None:
                        trio.lowlevel.reschedule(task)
        finally:
            epoll.close()
