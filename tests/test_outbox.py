"""Outbox: the bounded, never-blocking hand-off between the fan-out and one writer."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_gateway.outbox import Outbox


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


async def test_flush_writes_directly_when_the_writer_is_idle() -> None:
    outbox = Outbox(10)
    written: list[bytes] = []

    def direct(data: bytes) -> int:
        written.append(data)
        return len(data)

    outbox.direct = direct
    woken: list[list[bytes]] = []

    async def writer() -> None:
        woken.append(await outbox.take())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        outbox.stage(b"a")
        outbox.stage(b"b")
        outbox.flush()
        # Both frames went out in one direct write; the idle writer was not woken.
        assert written == [b"ab"]
        assert outbox.take_nowait() == []
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        nursery.cancel_scope.cancel()


async def test_flush_queues_what_a_direct_write_leaves_and_wakes_the_writer() -> None:
    outbox = Outbox(10)
    outbox.direct = lambda data: 3  # the kernel took 3 bytes
    async with trio.open_nursery() as nursery:
        taken: list[list[bytes]] = []

        async def writer() -> None:
            taken.append(await outbox.take())

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        outbox.stage(b"12345")
        outbox.stage(b"678")
        outbox.flush()
    assert taken == [[b"45678"]]


async def test_flush_leaves_frames_to_a_busy_writer() -> None:
    outbox = Outbox(10)
    calls: list[bytes] = []

    def direct(data: bytes) -> int:
        calls.append(data)
        return len(data)

    outbox.direct = direct
    outbox.stage(b"x")
    outbox.flush()  # no writer parked: it is busy, and takes the frame on its next round
    assert calls == []
    assert await outbox.take() == [b"x"]


async def test_direct_refusal_wakes_the_writer() -> None:
    outbox = Outbox(10)
    outbox.direct = lambda data: -1
    async with trio.open_nursery() as nursery:
        taken: list[list[bytes]] = []

        async def writer() -> None:
            taken.append(await outbox.take())

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        outbox.stage(b"x")
        outbox.flush()
    assert taken == [[b"x"]]
