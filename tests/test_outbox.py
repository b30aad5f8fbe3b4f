"""Outbox: the bounded, never-blocking hand-off between the fan-out and one connection's
writes (direct, or through a writer started only when needed)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from trio_gateway.fanout.outbox import Outbox

from .helpers import recording_writer


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


async def test_without_a_direct_path_a_flush_starts_one_writer_for_all_queued(
    nursery: trio.Nursery,
) -> None:
    outbox = Outbox(10)
    started: list[bool] = []

    class Starter:
        def start_writer(self) -> None:
            started.append(True)

    outbox.writers = Starter()
    outbox.stage(b"x")
    outbox.flush()
    outbox.stage(b"y")  # the writer is already starting; this one rides along
    outbox.flush()
    assert started == [True]
    assert outbox.writing
    assert outbox.take_nowait() == [b"x", b"y"]
    outbox.writer_stopped()
    outbox.stage(b"z")
    outbox.flush()  # the last writer ended: a new one starts
    assert started == [True, True]


async def test_a_writer_takes_until_nothing_is_left_then_ends(nursery: trio.Nursery) -> None:
    outbox = Outbox(10)
    taken = recording_writer(nursery, outbox)
    outbox.stage(b"1")
    outbox.flush()
    await trio.testing.wait_all_tasks_blocked()
    assert taken == [[b"1"]]
    assert not outbox.writing
    outbox.stage(b"2")
    outbox.stage(b"3")
    outbox.flush()
    await trio.testing.wait_all_tasks_blocked()
    assert taken == [[b"1"], [b"2", b"3"]]


async def test_a_closed_outbox_still_hands_what_it_holds_to_the_writer(
    nursery: trio.Nursery,
) -> None:
    outbox = Outbox(10)
    taken = recording_writer(nursery, outbox)
    outbox.stage(b"last")
    outbox.close()
    outbox.flush()
    await trio.testing.wait_all_tasks_blocked()
    assert taken == [[b"last"]]


def test_frames_wait_while_no_writer_can_be_started() -> None:
    outbox = Outbox(10)  # before its session starts, and after it ends
    outbox.stage(b"ready")
    outbox.flush()
    assert not outbox.writing
    assert outbox.take_nowait() == [b"ready"]


class SocketPair:
    """A real socket pair: the outbox writes to `ours` directly, the test reads `theirs`."""

    def __init__(self, sndbuf: int | None = None) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.theirs.setblocking(False)
        if sndbuf is not None:
            self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.outbox: Outbox | None = None
        self._usable = True
        self.partly = False

    def attach(self, outbox: Outbox) -> None:
        """Lend `outbox` the direct path, as a connection does."""
        self.outbox = outbox
        outbox.direct = self
        self.usable = True

    @property
    def usable(self) -> bool:
        return self._usable

    @usable.setter
    def usable(self, usable: bool) -> None:
        # What a connection keeps in step: the descriptor while a write may go out now.
        self._usable = usable
        if self.outbox is not None:
            self.outbox.fd = self.ours.fileno() if usable else -1

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


async def test_flush_writes_directly_when_no_writer_runs(
    nursery: trio.Nursery, sockets: SocketPair
) -> None:
    outbox = Outbox(10)
    sockets.attach(outbox)
    taken = recording_writer(nursery, outbox)
    outbox.stage(b"a")
    outbox.stage(b"b")
    outbox.flush()
    # Both frames went out in one direct write; no writer was started.
    assert sockets.received() == b"ab"
    assert outbox.take_nowait() == []
    assert not outbox.writing
    await trio.testing.wait_all_tasks_blocked()
    assert taken == []
    assert not sockets.partly


async def test_flush_queues_what_a_direct_write_leaves_and_starts_the_writer(
    nursery: trio.Nursery,
) -> None:
    small = SocketPair(sndbuf=4096)
    try:
        outbox = Outbox(10)
        small.attach(outbox)
        taken = recording_writer(nursery, outbox)
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


async def test_flush_leaves_frames_to_a_running_writer(
    nursery: trio.Nursery, sockets: SocketPair
) -> None:
    outbox = Outbox(10)
    sockets.attach(outbox)
    taken = recording_writer(nursery, outbox)
    sockets.usable = False
    outbox.stage(b"x")
    outbox.flush()  # not writable now: a writer starts
    sockets.usable = True
    outbox.stage(b"y")
    outbox.flush()  # the writer runs: it takes this one too, in order
    assert sockets.received() == b""
    await trio.testing.wait_all_tasks_blocked()
    assert taken == [[b"x", b"y"]]


async def test_direct_refusal_starts_the_writer(nursery: trio.Nursery, sockets: SocketPair) -> None:
    outbox = Outbox(10)
    sockets.attach(outbox)
    sockets.usable = False  # e.g. a pong being written, or the connection closing
    taken = recording_writer(nursery, outbox)
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
        broken.attach(outbox)
        taken = recording_writer(nursery, outbox)
        outbox.stage(b"x")
        outbox.flush()
        await trio.testing.wait_all_tasks_blocked()
        assert taken == [[b"x"]]  # its own write meets the error and reports it
    finally:
        broken.ours.close()
