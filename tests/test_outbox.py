"""Outbox: the bounded, never-blocking hand-off between the fan-out and one writer."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from trio_gateway.fanout.outbox import Outbox


def test_stage_up_to_the_limit_then_would_block() -> None:
    outbox = Outbox(2)
    assert outbox.stage(b"a") is True  # was empty: the caller must flush
    assert outbox.stage(b"b") is False
    with pytest.raises(trio.WouldBlock):
        outbox.stage(b"c")
    assert outbox.take_nowait() == [b"a", b"b"]
    assert outbox.stage(b"c") is True  # room again once taken
    assert outbox.take_nowait() == [b"c"]


def test_stage_after_close_raises_but_queued_frames_stay() -> None:
    outbox = Outbox(4)
    outbox.stage(b"a")
    outbox.close()
    outbox.close()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        outbox.stage(b"b")
    assert outbox.take_nowait() == [b"a"]


async def test_take_returns_everything_queued_in_order() -> None:
    outbox = Outbox(10)
    for frame in (b"1", b"2", b"3"):
        outbox.stage(frame)
    assert await outbox.take() == [b"1", b"2", b"3"]


async def test_take_waits_for_a_put_and_wakes_once() -> None:
    outbox = Outbox(10)
    taken: list[list[bytes]] = []

    async def writer() -> None:
        taken.append(await outbox.take())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert taken == []
        outbox.stage(b"x")
        outbox.flush()
        outbox.stage(b"y")  # the writer is already woken; this one rides along
        outbox.flush()
    assert taken == [[b"x", b"y"]]


async def test_close_drains_then_ends() -> None:
    outbox = Outbox(10)
    outbox.stage(b"last")
    outbox.close()
    assert await outbox.take() == [b"last"]
    with pytest.raises(trio.EndOfChannel):
        await outbox.take()


async def test_close_wakes_a_waiting_taker_with_end_of_channel() -> None:
    outbox = Outbox(10)
    async with trio.open_nursery() as nursery:

        async def writer() -> None:
            with pytest.raises(trio.EndOfChannel):
                await outbox.take()

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        outbox.close()


async def test_cancelled_take_leaves_the_outbox_usable() -> None:
    outbox = Outbox(10)
    with trio.move_on_after(0.01):
        await outbox.take()
    outbox.stage(b"after")
    assert await outbox.take() == [b"after"]


async def test_two_takers_is_a_bug() -> None:
    outbox = Outbox(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.take)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await outbox.take()
        nursery.cancel_scope.cancel()


class SocketPair:
    """A real socket pair: the outbox writes to `ours` directly, the test reads `theirs`."""

    def __init__(self, sndbuf: int | None = None) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.theirs.setblocking(False)
        if sndbuf is not None:
            self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.usable = True
        self.partly = False

    def writable_fd(self) -> int:
        return self.ours.fileno() if self.usable else -1

    def wrote_partly(self) -> None:
        self.partly = True

    def received(self) -> bytes:
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := self.theirs.recv(1 << 20):
                data += chunk
        return data

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def sockets() -> Iterator[SocketPair]:
    pair = SocketPair()
    yield pair
    pair.close()


async def parked_writer(nursery: trio.Nursery, outbox: Outbox) -> list[list[bytes]]:
    """A writer task parked in take(), as a connection's idle writer is; what it takes."""
    taken: list[list[bytes]] = []

    async def writer() -> None:
        with contextlib.suppress(trio.EndOfChannel):
            while True:
                taken.append(await outbox.take())

    nursery.start_soon(writer)
    await trio.testing.wait_all_tasks_blocked()
    return taken


async def test_flush_writes_directly_when_the_writer_is_idle(
    nursery: trio.Nursery, sockets: SocketPair
) -> None:
    outbox = Outbox(10)
    outbox.direct = sockets
    taken = await parked_writer(nursery, outbox)
    outbox.stage(b"a")
    outbox.stage(b"b")
    outbox.flush()
    # Both frames went out in one direct write; the idle writer was not woken.
    assert sockets.received() == b"ab"
    assert outbox.take_nowait() == []
    await trio.testing.wait_all_tasks_blocked()
    assert taken == []
    assert not sockets.partly


async def test_flush_queues_what_a_direct_write_leaves_and_wakes_the_writer(
    nursery: trio.Nursery,
) -> None:
    small = SocketPair(sndbuf=4096)
    try:
        outbox = Outbox(10)
        outbox.direct = small
        taken = await parked_writer(nursery, outbox)
        big = bytes(range(256)) * 4096
        outbox.stage(big)
        outbox.stage(b"next")
        outbox.flush()
        written = small.received()
        assert 0 < len(written) < len(big)
        assert small.partly  # the writer must finish the frame before anything else
        await trio.testing.wait_all_tasks_blocked()
        assert taken == [[big[len(written) :] + b"next"]]
    finally:
        small.close()


async def test_flush_leaves_frames_to_a_busy_writer(sockets: SocketPair) -> None:
    outbox = Outbox(10)
    outbox.direct = sockets
    outbox.stage(b"x")
    outbox.flush()  # no writer parked: it is busy, and takes the frame on its next round
    assert sockets.received() == b""
    assert await outbox.take() == [b"x"]


async def test_direct_refusal_wakes_the_writer(nursery: trio.Nursery, sockets: SocketPair) -> None:
    outbox = Outbox(10)
    outbox.direct = sockets
    sockets.usable = False  # e.g. a pong being written, or the connection closing
    taken = await parked_writer(nursery, outbox)
    outbox.stage(b"x")
    outbox.flush()
    await trio.testing.wait_all_tasks_blocked()
    assert taken == [[b"x"]]
    assert sockets.received() == b""


async def test_a_write_error_is_left_to_the_writer(nursery: trio.Nursery) -> None:
    broken = SocketPair()
    broken.theirs.close()
    try:
        outbox = Outbox(10)
        outbox.direct = broken
        taken = await parked_writer(nursery, outbox)
        outbox.stage(b"x")
        outbox.flush()
        await trio.testing.wait_all_tasks_blocked()
        assert taken == [[b"x"]]  # its own write meets the error and reports it
    finally:
        broken.ours.close()
