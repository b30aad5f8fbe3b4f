"""Outbox: the bounded, never-blocking hand-off between the fan-out and one writer."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_gateway.outbox import Outbox


def test_put_up_to_the_limit_then_would_block() -> None:
    outbox = Outbox(2)
    outbox.put(b"a")
    outbox.put(b"b")
    with pytest.raises(trio.WouldBlock):
        outbox.put(b"c")
    assert len(outbox) == 2
    assert outbox.take_nowait() == [b"a", b"b"]
    assert len(outbox) == 0
    outbox.put(b"c")  # room again once taken
    assert outbox.take_nowait() == [b"c"]


def test_put_after_close_raises_but_queued_frames_stay() -> None:
    outbox = Outbox(4)
    outbox.put(b"a")
    outbox.close()
    outbox.close()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        outbox.put(b"b")
    assert outbox.take_nowait() == [b"a"]


async def test_take_returns_everything_queued_in_order() -> None:
    outbox = Outbox(10)
    for frame in (b"1", b"2", b"3"):
        outbox.put(frame)
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
        outbox.put(b"x")
        outbox.put(b"y")  # the writer is already woken; this one rides along
    assert taken == [[b"x", b"y"]]


async def test_close_drains_then_ends() -> None:
    outbox = Outbox(10)
    outbox.put(b"last")
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
    outbox.put(b"after")
    assert await outbox.take() == [b"after"]


async def test_two_takers_is_a_bug() -> None:
    outbox = Outbox(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.take)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await outbox.take()
        nursery.cancel_scope.cancel()
