"""Inbound rate limits under the autojump clock: exact virtual times, what the client sees.

The frame budget (`client_rate` 50/s, `client_burst` 100) counts every frame, WebSocket
pings included; over it the client gets an error and close 4008 `Rate limited`. Publishes and
commands have a budget of their own (`client_publish_rate`, `client_publish_burst`); over it
each is refused and the connection stays.
"""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
import trio_websocket

from trio_gateway import Config
from trio_gateway.session.ratelimit import TokenBucket

from .conftest import with_settings
from .helpers import (
    closed_with,
    memory_client,
    ready,
    receive_json,
    send_json,
    serve_in_memory,
)

PING = json.dumps({"type": "ping"})
RATE_LIMITED = {
    "type": "error",
    "message": "Rate limited: more than 50 frames a second (bursts of 100)",
    "code": "rate_limited",
}


# --- the bucket, directly ------------------------------------------------------------------


def test_bucket_passes_a_burst_then_one_per_interval() -> None:
    bucket = TokenBucket(rate=50, burst=100, now=10.0)
    assert all(bucket.admit(10.0) for _ in range(100))
    assert not bucket.admit(10.0)
    assert not bucket.admit(10.0 + 0.019)
    assert bucket.admit(10.0 + 0.02)
    assert not bucket.admit(10.0 + 0.02)
    # Idle for a long time: the bucket refills to the burst, never beyond.
    assert all(bucket.admit(1000.0) for _ in range(100))
    assert not bucket.admit(1000.0)


def test_bucket_sustains_its_rate() -> None:
    bucket = TokenBucket(rate=50, burst=1, now=0.0)
    admitted = sum(bucket.admit(n * 0.01) for n in range(1000))  # 100/s offered for 10 s
    assert admitted == 500


# --- frames, on the wire -------------------------------------------------------------------


async def test_burst_passes_and_the_101st_frame_in_the_same_instant_closes(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        t0 = trio.current_time()
        for _ in range(100):
            await ws.send_message(PING)
        for _ in range(100):
            assert await receive_json(ws) == {"type": "pong"}
        assert trio.current_time() == t0
        await ws.send_message(PING)
        assert await receive_json(ws) == RATE_LIMITED
        reason = await closed_with(ws)
        assert (reason.code, reason.reason) == (4008, "Rate limited")
        assert trio.current_time() == t0
    assert gateway.client_count() == 0
    assert gateway.metrics.rate_limited == {"frames": 1}
    # A rate-limit close is not a slow consumer.
    assert gateway.metrics.slow_consumers == 0


async def test_one_frame_more_after_each_interval(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        t0 = trio.current_time()
        for _ in range(100):
            await ws.send_message(PING)
        for _ in range(100):
            await receive_json(ws)
        for n in range(1, 6):
            # One token back every 1/50 s: exactly one frame may follow each time.
            await trio.sleep_until(t0 + n * 0.02)
            await ws.send_message(PING)
            assert await receive_json(ws) == {"type": "pong"}
        await ws.send_message(PING)
        assert await receive_json(ws) == RATE_LIMITED
        assert (await closed_with(ws)).code == 4008
        assert trio.current_time() == pytest.approx(t0 + 0.1)


async def test_websocket_pings_count(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        for n in range(100):
            await ws.ping(str(n).encode())
        await ws.send_message(PING)
        assert await receive_json(ws) == RATE_LIMITED
        assert (await closed_with(ws)).code == 4008
    assert gateway.client_count() == 0


async def test_steady_client_within_the_rate_is_never_limited(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    # 50 frames a second for 10 s, after a full burst: exactly at the limit.
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        t0 = trio.current_time()
        for n in range(600):
            await trio.sleep_until(t0 + n * 0.02)
            await ws.send_message(PING)
        for _ in range(600):
            assert await receive_json(ws) == {"type": "pong"}
        assert gateway.client_count() == 1


async def test_rate_limit_holds_before_identify(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener, token=None) as ws:
        assert (await receive_json(ws))["type"] == "hello"
        for _ in range(101):
            await ws.send_message(PING)
        replies, reason = await replies_until_closed(ws)
        assert replies[:100] == [replies[0]] * 100
        assert replies[0]["code"] == "unauthorized"
        assert replies[100:] == [RATE_LIMITED]
        assert (reason.code, reason.reason) == (4008, "Rate limited")


async def replies_until_closed(
    ws: trio_websocket.WebSocketConnection,
) -> tuple[list[dict[str, object]], trio_websocket.CloseReason]:
    replies = []
    while True:
        try:
            replies.append(await receive_json(ws))
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            break
    assert reason is not None
    return replies, reason


async def test_zero_rate_turns_the_frame_limit_off(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    gateway, listener = await serve_in_memory(nursery, with_settings(config, client_rate=0))
    async with memory_client(listener) as ws:
        await ready(ws)
        for _ in range(1000):
            await ws.send_message(PING)
        for _ in range(1000):
            assert await receive_json(ws) == {"type": "pong"}
        assert gateway.client_count() == 1


# --- publishes and commands ----------------------------------------------------------------


async def test_publishes_beyond_their_budget_are_refused_and_the_connection_stays(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    config = with_settings(config, client_publish_rate=2, client_publish_burst=3)
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        t0 = trio.current_time()
        for n in range(4):
            await send_json(ws, {"type": "publish", "topic": "news", "data": n})
        replies = [await receive_json(ws) for _ in range(4)]
        assert [reply["type"] for reply in replies] == ["published"] * 3 + ["error"]
        assert replies[3] == {
            "type": "error",
            "message": "Rate limited: more than 2 publishes and commands a second (bursts of 3)",
            "code": "rate_limited",
        }
        # A command shares the budget, and is refused in the command error form.
        await send_json(ws, {"command": "echo", "id": "c1"})
        assert await receive_json(ws) == {
            "event": "error",
            "payload": {
                "command": "echo",
                "message": "Rate limited: more than 2 publishes and commands a second "
                "(bursts of 3)",
                "code": "rate_limited",
            },
            "id": "c1",
        }
        # Other messages are not metered by this budget.
        await send_json(ws, {"type": "subscribe", "topic": "news"})
        assert (await receive_json(ws))["type"] == "subscribed"
        # Half a second later one token is back.
        await trio.sleep_until(t0 + 0.5)
        await send_json(ws, {"type": "publish", "topic": "news", "data": 4})
        assert (await receive_json(ws))["type"] in {"published", "message"}
        assert gateway.client_count() == 1
    assert gateway.metrics.rate_limited == {"publish": 2}
