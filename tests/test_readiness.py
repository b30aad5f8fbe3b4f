"""Readiness: readers parked on a shared epoll set wake when their socket has input."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from trio_gateway.transport.readiness import Readiness


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


@pytest.fixture
async def readiness(nursery: trio.Nursery) -> Readiness:
    """A Readiness with its task running."""
    started = Readiness()
    await nursery.start(started.run)
    return started


async def wait_for_input(readiness: Readiness, fd: int) -> None:
    """What a WebSocket's reader does (transport/websocket.py)."""

    def abort(_: object) -> trio.lowlevel.Abort:
        readiness.forget(fd)
        return trio.lowlevel.Abort.SUCCEEDED

    readiness.expect(fd)
    await trio.lowlevel.wait_task_rescheduled(abort)


async def started_reader(nursery: trio.Nursery, readiness: Readiness, fd: int) -> trio.Event:
    """A reader task waiting for input on `fd`; the event is set once it woke."""
    woke = trio.Event()

    async def reader() -> None:
        await wait_for_input(readiness, fd)
        woke.set()

    nursery.start_soon(reader)
    await trio.testing.wait_all_tasks_blocked()
    return woke


async def test_a_reader_wakes_when_its_socket_has_input_and_not_before(
    nursery: trio.Nursery, readiness: Readiness, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    woke = await started_reader(nursery, readiness, ours.fileno())
    assert not woke.is_set()
    assert len(readiness) == 1
    theirs.send(b"x")
    with trio.fail_after(5):
        await woke.wait()
    assert len(readiness) == 0
    # A second wait on the same socket re-arms it (one-shot registrations).
    assert ours.recv(10) == b"x"
    woke = await started_reader(nursery, readiness, ours.fileno())
    assert not woke.is_set()
    theirs.send(b"y")
    with trio.fail_after(5):
        await woke.wait()


async def test_a_cancelled_reader_is_forgotten_and_its_input_ignored(
    nursery: trio.Nursery, readiness: Readiness, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    with trio.move_on_after(0.05):
        await wait_for_input(readiness, ours.fileno())
    assert len(readiness) == 0
    theirs.send(b"late")
    await trio.testing.wait_all_tasks_blocked()
    # The poller saw the event and found nobody: it is still running and can serve again.
    readiness.expect(ours.fileno())
    readiness.forget(ours.fileno())


async def test_the_peer_leaving_wakes_the_reader(
    nursery: trio.Nursery, readiness: Readiness, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    woke = await started_reader(nursery, readiness, ours.fileno())
    theirs.close()
    with trio.fail_after(5):
        await woke.wait()
    assert ours.recv(10) == b""


async def test_two_readers_of_one_socket_is_a_bug(
    nursery: trio.Nursery, readiness: Readiness, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, _ = pair
    nursery.start_soon(wait_for_input, readiness, ours.fileno())
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(trio.BusyResourceError):
        readiness.expect(ours.fileno())
    nursery.cancel_scope.cancel()


async def test_a_descriptor_number_reused_by_a_new_socket_is_armed_afresh(
    nursery: trio.Nursery, readiness: Readiness
) -> None:
    first, peer = socket.socketpair()
    readiness.expect(first.fileno())
    readiness.forget(first.fileno())
    number = first.fileno()
    first.close()  # the kernel drops it from the epoll set
    peer.close()
    again, other = socket.socketpair()
    try:
        assert number in (again.fileno(), other.fileno())
        mine = again if again.fileno() == number else other
        theirs = other if mine is again else again
        woke = await started_reader(nursery, readiness, mine.fileno())
        theirs.send(b"z")
        with trio.fail_after(5):
            await woke.wait()
    finally:
        again.close()
        other.close()
