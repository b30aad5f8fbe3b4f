"""The accept loop under a storm: every waiting connection is taken at once, and handlers
start in the order the connections arrived, a round at a time."""

from __future__ import annotations

import contextlib
import socket

import trio

from trio_gateway.transport.listener import (
    START_PER_ROUND,
    Handler,
    open_listeners,
    run_listeners,
)

CLIENTS = 3 * START_PER_ROUND + 10


async def serve_until(
    listeners: list[trio.SocketListener], handler: Handler, done: trio.Event
) -> None:
    """Run the accept loop over `listeners` with `handler` until `done` is set, then stop it."""
    with trio.fail_after(5):
        async with trio.open_nursery() as connection_nursery:
            await connection_nursery.start(run_listeners, listeners, handler, connection_nursery)
            await done.wait()
            connection_nursery.cancel_scope.cancel()


async def test_a_storm_is_started_in_arrival_order_a_round_at_a_time() -> None:
    listeners = await open_listeners("127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    # Connected before the loop runs: all of them wait in the kernel's accept queue.
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CLIENTS)]
    arrival = [client.getsockname()[1] for client in clients]
    started: list[int] = []
    all_started = trio.Event()

    async def handler(stream: trio.abc.Stream) -> None:
        assert isinstance(stream, trio.SocketStream)
        started.append(stream.socket.getpeername()[1])
        if len(started) == CLIENTS:
            all_started.set()
        await stream.send_all(b"hello")
        await stream.aclose()

    try:
        await serve_until(listeners, handler, all_started)
        # Each round's handlers run in the round after it, in an order of trio's choosing.
        for first in range(0, CLIENTS, START_PER_ROUND):
            rounds = slice(first, first + START_PER_ROUND)
            assert set(started[rounds]) == set(arrival[rounds])
        for client in clients:
            assert client.recv(16) == b"hello"
    finally:
        for client in clients:
            client.close()


async def test_connections_accepted_but_not_started_are_closed_with_the_loop() -> None:
    listeners = await open_listeners("127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CLIENTS)]
    first_round = trio.Event()

    async def handler(stream: trio.abc.Stream) -> None:
        # The first round's handlers stop the loop before any other round starts.
        first_round.set()
        await stream.aclose()

    try:
        await serve_until(listeners, handler, first_round)
        # Every client sees its connection end: none is left open with nobody serving it.
        for client in clients:
            client.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(16) == b""
    finally:
        for client in clients:
            client.close()
