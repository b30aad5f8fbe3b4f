"""The staged drain of a graceful shutdown, under the autojump clock: exact virtual times.

Up to 100 clients are closed 1001 at once, as before; more go in batches of 100, one batch
at a random point of each slot of `drain_window`, all before it ends, and `serve` returns.
"""

from __future__ import annotations

import functools
import random

import trio
import trio.testing

from trio_gateway import Config, Gateway, serve
from trio_gateway.session.drain import DRAIN_BATCH, schedule

from .conftest import with_settings
from .helpers import MemoryListener, closed_with, memory_client, ready


def test_schedule_is_one_point_in_each_slot() -> None:
    times = schedule(250, 6.0, random.Random(7))
    assert len(times) == 3
    for n, offset in enumerate(times):
        assert n * 2.0 <= offset < (n + 1) * 2.0
    assert times == sorted(times)


def test_few_clients_close_at_once() -> None:
    assert schedule(DRAIN_BATCH, 6.0, random.Random(7)) == [0.0]
    assert schedule(0, 6.0, random.Random(7)) == [0.0]
    assert schedule(1000, 0.0, random.Random(7)) == [0.0] * 10


async def close_times(config: Config, clients: int) -> tuple[float, list[float]]:
    """Shut a gateway with `clients` clients down; (time of shutdown(), each close time)."""
    listener = MemoryListener()
    closed: list[float] = []
    async with trio.open_nursery() as nursery:
        gateway: Gateway = await nursery.start(
            functools.partial(serve, config, listeners=[listener])
        )
        all_ready = trio.Event()
        count = 0

        async def client() -> None:
            nonlocal count
            async with memory_client(listener) as ws:
                await ready(ws)
                count += 1
                if count == clients:
                    all_ready.set()
                reason = await closed_with(ws)
                assert (reason.code, reason.reason) == (1001, "Server shutting down")
                closed.append(trio.current_time())

        async with trio.open_nursery() as clients_nursery:
            for _ in range(clients):
                clients_nursery.start_soon(client)
            await all_ready.wait()
            started = trio.current_time()
            gateway.shutdown()
    # serve has returned, and nothing of it is left.
    assert not nursery.child_tasks
    return started, closed


async def test_many_clients_close_in_batches_across_the_window(
    autojump_clock: trio.testing.MockClock, config: Config
) -> None:
    config = with_settings(config, drain_window=6.0, ping_interval=3600)
    started, closed = await close_times(config, 250)
    assert len(closed) == 250
    offsets = sorted(round(t - started, 9) for t in closed)
    # Three batches (100, 100, 50), each at one instant inside its own 2 s slot.
    batches: dict[float, int] = {}
    for offset in offsets:
        batches[offset] = batches.get(offset, 0) + 1
    assert sorted(batches.values()) == [50, 100, 100]
    for n, offset in enumerate(sorted(batches)):
        assert n * 2.0 <= offset < (n + 1) * 2.0
    assert offsets[-1] < 6.0


async def test_up_to_a_batch_closes_at_once(
    autojump_clock: trio.testing.MockClock, config: Config
) -> None:
    config = with_settings(config, drain_window=6.0, ping_interval=3600)
    started, closed = await close_times(config, DRAIN_BATCH)
    assert closed == [started] * DRAIN_BATCH


async def test_the_window_ends_close_timeout_before_the_drain_deadline(
    autojump_clock: trio.testing.MockClock, config: Config
) -> None:
    # A window longer than the shutdown allows is cut: drain_timeout 4, close_timeout 1.
    config = with_settings(
        config, drain_window=60.0, drain_timeout=4.0, close_timeout=1.0, ping_interval=3600
    )
    started, closed = await close_times(config, 2 * DRAIN_BATCH)
    assert len(closed) == 2 * DRAIN_BATCH
    assert max(closed) - started < 3.0
