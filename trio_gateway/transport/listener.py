"""The accept loop: one task per listener, handing each stream to the connection nursery.

Owns accepting and the listeners' lifetime (closed when the task ends). Must not run
connection code itself: a handler runs in `connection_nursery`, which the supervisor owns,
so that stopping accepts (cancelling this task) leaves live connections untouched.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..observability.jsonlog import fields
from .sockets import reuse_port_socket

log = logging.getLogger("trio_gateway.listener")

# accept() failures that mean "out of file descriptors or memory right now": wait, then retry
# rather than spin or die (the same set trio.serve_listeners treats this way).
CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# Seconds to wait after such a failure before accepting again.
CAPACITY_BACKOFF = 0.1
# Seconds between two log lines about such failures: at the descriptor limit they come ten
# times a second, and one line per failure would flood the log it is meant to inform.
ACCEPT_FAILURE_LOG_INTERVAL = 10.0

Handler = Callable[[trio.abc.Stream], Awaitable[None]]


class _FailureLog:
    """Logs the first accept failure, then at most one line per interval, counting the ones
    it left out."""

    def __init__(self) -> None:
        self._next_line_at = float("-inf")
        self._suppressed = 0

    def failed(self, exc: OSError) -> None:
        now = trio.current_time()
        if now < self._next_line_at:
            self._suppressed += 1
            return
        log.error(
            "accept failed, backing off",
            extra=fields(error=str(exc), suppressed=self._suppressed),
        )
        self._next_line_at = now + ACCEPT_FAILURE_LOG_INTERVAL
        self._suppressed = 0


async def _accept_loop(
    listener: trio.abc.Listener[trio.abc.Stream],
    handler: Handler,
    connection_nursery: trio.Nursery,
) -> None:
    failures = _FailureLog()
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                failures.failed(exc)
                await trio.sleep(CAPACITY_BACKOFF)
            else:
                connection_nursery.start_soon(handler, stream)


async def run_listeners(
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    handler: Handler,
    connection_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on every listener until cancelled; cancelling closes the listeners."""
    async with trio.open_nursery() as accept_nursery:
        for listener in listeners:
            accept_nursery.start_soon(_accept_loop, listener, handler, connection_nursery)
        task_status.started()


async def open_listeners(
    host: str, port: int, *, reuse_port: bool = False
) -> list[trio.SocketListener]:
    """TCP listeners on every address `host` resolves to (port 0 picks a free port).

    With `reuse_port`, SO_REUSEPORT lets several processes bind the same port and the kernel
    spreads new connections over them (`--workers`).

    Raises:
        OSError: nothing could be bound.
    """
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host)
    infos = await trio.socket.getaddrinfo(
        host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    listeners = []
    try:
        for family, type_, proto, _, address in infos:
            sock = reuse_port_socket(family, type_, proto)
            try:
                await sock.bind(address)
                sock.listen(socket.SOMAXCONN)
            except OSError:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except OSError:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners
