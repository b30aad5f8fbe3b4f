"""The accept loop: one task per listener, handing each stream to the connection nursery.

Owns accepting and the listeners' lifetime (closed when the task ends). Must not run
connection code itself: a handler runs in `connection_nursery`, which the supervisor owns,
so that stopping accepts (cancelling this task) leaves live connections untouched.

Out of descriptors (EMFILE, ENFILE). trio's `serve_listeners`, and this loop before, log
and sleep 100 ms, then try again: meanwhile the connections waiting in the kernel's backlog
get nothing at all (a hang for their clients), and once the backlog is full the kernel drops
new SYNs, which clients retry only after 1, 3 and 7 s: a gateway takes seconds to answer
again after a flood ends. Here each loop holds one spare descriptor instead (libuv's trick):
on EMFILE it closes the spare, accepts the waiting connection with it, writes it the
prebuilt `overflow` answer (HTTP 503 with Retry-After) and closes it, then takes the spare
back. So the backlog drains with answers, not silence. When even the spare cannot be taken
back (another task got the descriptor first), the loop tries again every 10 ms, so
accepting resumes as soon as a descriptor is free. (Polling, rather than an event from each
connection that ends: that would cost every connection a coroutine frame, ~290 bytes.)
The connection caps (limits.py) keep the WebSockets under the descriptor limit, so this is
the last line, for floods of connections that never send a request.

Accepting in batches. Each `await accept()` is a trip through trio's scheduler, which runs
every other runnable task before the next accept: in a storm of connects the accept queue
fills faster than one accept a round empties it, and once it is full the kernel drops SYNs,
which clients retry only a second later. So each round the loop takes everything waiting,
with plain non-blocking accepts on a duplicate of the listening descriptor (its own file
object: closing it never closes the listener), into a queue of its own. It starts the
handlers from that queue in order, `START_PER_ROUND` a round: started all at once, 5,000
connections would each take one step a round and all finish together, at the end of the
storm; started in order, the first ones are done while the last ones wait.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..observability.jsonlog import fields
from .limits import DESCRIPTORS
from .sockets import reuse_port_socket

log = logging.getLogger("trio_gateway.listener")

# accept() failures that mean "out of file descriptors or memory right now": wait, then retry
# rather than spin or die (the same set trio.serve_listeners treats this way).
CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# Seconds between two log lines about such failures: at the descriptor limit they come a
# hundred times a second, and one line per failure would flood the log it is meant to inform.
ACCEPT_FAILURE_LOG_INTERVAL = 10.0
# Seconds between tries while no descriptor is free: a failed accept costs a system call,
# and a client waits at most this long once one frees up.
CAPACITY_RETRY = 0.01
# Seconds the accept of a connection known to be waiting may take (it returns at once).
OVERFLOW_ACCEPT_TIMEOUT = 0.1
# Seconds the overflow answer may take to write before the connection is just closed.
OVERFLOW_WRITE_TIMEOUT = 0.1
# Most connections accepted and not started yet: as many as the kernel's own accept queue
# holds on Linux (net.core.somaxconn, 4096 by default). Past that the kernel's queue fills
# again, and then drops SYNs, as it would without this one.
MAX_WAITING = 4096
# Connections started per scheduler round while others wait: each round every connection
# in progress takes a step too, so the ones started first finish first (see above).
START_PER_ROUND = 64

Handler = Callable[[trio.abc.Stream], Awaitable[None]]
#: Told of every connection refused at accept, with the reason.
Refused = Callable[[str], None]


def _ignore(reason: str) -> None:
    pass


def _take_spare() -> int:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return -1


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


def _waiting_queue(listener: trio.abc.Listener[trio.abc.Stream]) -> socket.socket | None:
    if not isinstance(listener, trio.SocketListener):
        return None
    try:
        queue = socket.socket(fileno=os.dup(listener.socket.fileno()))
    except OSError:
        return None
    queue.setblocking(False)
    return queue


def _take_waiting(queue: socket.socket, waiting: deque[trio.abc.Stream]) -> OSError | None:
    """Move what the kernel's accept queue holds to `waiting`, up to MAX_WAITING; returns
    the capacity error that stopped it, if one did (any other failure ends it quietly: the
    next round tries again)."""
    while len(waiting) < MAX_WAITING:
        try:
            sock, _ = queue.accept()
        except BlockingIOError:
            return None
        except OSError as exc:
            return exc if exc.errno in CAPACITY_ERRNOS else None
        waiting.append(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
    return None


async def _accept_loop(
    listener: trio.abc.Listener[trio.abc.Stream],
    handler: Handler,
    connection_nursery: trio.Nursery,
    overflow: bytes,
    refused: Refused,
) -> None:
    spare = _take_spare()
    failures = _FailureLog()
    queue = _waiting_queue(listener)
    waiting: deque[trio.abc.Stream] = deque()
    try:
        async with listener:
            while True:
                if waiting:
                    # Let the connections started last round move on before more start.
                    await trio.lowlevel.checkpoint()
                else:
                    try:
                        waiting.append(await listener.accept())
                    except OSError as exc:
                        if exc.errno not in CAPACITY_ERRNOS:
                            raise
                        spare = await _overflow(listener, spare, overflow, refused, exc, failures)
                        continue
                if queue is not None and (error := _take_waiting(queue, waiting)) is not None:
                    spare = await _overflow(listener, spare, overflow, refused, error, failures)
                for _ in range(min(len(waiting), START_PER_ROUND)):
                    connection_nursery.start_soon(handler, waiting.popleft())
    finally:
        # Accepted but never started: closed as the kernel would reset them from its queue.
        for stream in waiting:
            if isinstance(stream, trio.SocketStream):
                stream.socket.close()
        if queue is not None:
            queue.close()
        if spare >= 0:
            os.close(spare)


async def _overflow(
    listener: trio.abc.Listener[trio.abc.Stream],
    spare: int,
    overflow: bytes,
    refused: Refused,
    error: OSError,
    failures: _FailureLog,
) -> int:
    """Answer one connection waiting in the backlog with `overflow`, using the spare
    descriptor; without a spare, wait a little for one. Returns the spare (or -1)."""
    if spare >= 0 and isinstance(listener, trio.SocketListener):
        os.close(spare)
        remote = None
        # The failed accept means a connection is waiting: this returns at once.
        with trio.move_on_after(OVERFLOW_ACCEPT_TIMEOUT):
            sock, address = await listener.socket.accept()
            with sock:
                remote = f"{address[0]}:{address[1]}"
                with trio.move_on_after(OVERFLOW_WRITE_TIMEOUT):
                    await sock.send(overflow)
        if remote is not None:
            refused(DESCRIPTORS)
            log.warning("connection refused", extra=fields(reason=DESCRIPTORS, remote=remote))
        spare = _take_spare()
        if spare >= 0:
            return spare
    # No spare to answer with (or a listener that is not a socket's): wait for a descriptor.
    failures.failed(error)
    await trio.sleep(CAPACITY_RETRY)
    return spare if spare >= 0 else _take_spare()


async def run_listeners(
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    handler: Handler,
    connection_nursery: trio.Nursery,
    *,
    overflow: bytes = b"",
    refused: Refused = _ignore,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on every listener until cancelled; cancelling closes the listeners.

    Args:
        overflow: written to a connection refused for want of descriptors, unread.
        refused: told of each such refusal.
    """
    async with trio.open_nursery() as accept_nursery:
        for listener in listeners:
            accept_nursery.start_soon(
                _accept_loop, listener, handler, connection_nursery, overflow, refused
            )
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
