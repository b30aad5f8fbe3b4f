"""Scale-out over Redis: instances on one real redis-server behave as one gateway.

Every test runs real redis-server processes (tests/redis_server.py) and real gateways on
loopback sockets; clients are real WebSocket clients. Bounded with `fail_after`; nothing
sleeps to synchronise (waits poll an observable state: health, PUBSUB NUMSUB).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import coredis
import pytest
import trio
import trio_websocket

from trio_gateway import Config, Gateway, open_gateway
from trio_gateway.broker import BrokerUnavailable
from trio_gateway.client.http import http_request, publish_events

from .conftest import with_settings
from .helpers import API_KEY, ready, receive_json, send_json, subscribe, tcp_client
from .redis_server import RedisServer

TIMEOUT = 10
PREFIX = "tg-test:"


@pytest.fixture
def redis_config(config: Config, redis_server: RedisServer) -> Config:
    return with_settings(config, redis_url=redis_server.url, redis_prefix=PREFIX)


@asynccontextmanager
async def two_gateways(config: Config) -> AsyncIterator[tuple[Gateway, Gateway]]:
    async with open_gateway(config) as a, open_gateway(config) as b:
        yield a, b


def base(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


async def post_event(gateway: Gateway, **event: Any) -> None:
    await publish_events(base(gateway), API_KEY, event)


async def get_health(gateway: Gateway) -> tuple[int, dict[str, Any]]:
    status, _, body = await http_request("GET", base(gateway) + "/api/health")
    return status, json.loads(body)


async def next_event(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    frame = await receive_json(ws)
    assert frame["type"] == "event", frame
    event: dict[str, Any] = frame["event"]
    return event


async def eventually(check: Callable[[], Awaitable[bool]], interval: float = 0.02) -> None:
    """Poll an observable condition (bounded by the caller's fail_after)."""
    while True:
        if await check():
            return
        await trio.sleep(interval)


@asynccontextmanager
async def redis_probe(server: RedisServer) -> AsyncIterator[coredis.Redis[bytes]]:
    async with coredis.Redis.from_url(server.url) as client:
        yield client


# --- cross-instance delivery -----------------------------------------------------------------


async def test_a_client_on_one_instance_gets_what_is_posted_to_another(
    redis_config: Config,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            two_gateways(redis_config) as (a, b),
            tcp_client(a.port) as w1,
            tcp_client(a.port) as w2,
            tcp_client(a.port) as everyone,
            tcp_client(a.port) as both,
        ):
            for ws in (w1, w2, everyone, both):
                await ready(ws)
            await subscribe(w1, workspace_id="W1")
            await subscribe(w2, workspace_id="W2")
            await subscribe(everyone, scope="all")
            await subscribe(both, workspace_id="W1")
            await subscribe(both, session_id="S1")

            await post_event(b, workspace_id="W1", session_id="S1", n=1)
            await post_event(b, workspace_id="W2", n=2)

            assert (await next_event(w1))["n"] == 1
            assert [(await next_event(everyone))["n"] for _ in range(2)] == [1, 2]
            # Subscribed to the workspace and the session of event 1: one copy, then event
            # 2 is not for it, so a marker event proves nothing else arrived.
            assert (await next_event(both))["n"] == 1
            assert (await next_event(w2))["n"] == 2
            await post_event(b, workspace_id="W1", n=3)
            assert (await next_event(both))["n"] == 3
            assert (await next_event(w1))["n"] == 3


async def test_publish_order_is_kept_across_instances(redis_config: Config) -> None:
    count = 1000
    with trio.fail_after(TIMEOUT * 2):
        async with two_gateways(redis_config) as (a, b), tcp_client(a.port) as ws:
            await ready(ws)
            await subscribe(ws, workspace_id="W")
            for start in range(0, count, 100):
                batch = [{"workspace_id": "W", "n": n} for n in range(start, start + 100)]
                await publish_events(base(b), API_KEY, batch)
            for n in range(count // 2, count):
                b.broadcaster.broadcast_event({"workspace_id": "W", "n": count + n})
            received = [(await next_event(ws))["n"] for _ in range(count + count // 2)]
            assert received == list(range(count)) + list(range(count + count // 2, 2 * count))


async def test_an_instance_subscribes_only_to_channels_its_clients_hold(
    redis_config: Config, redis_server: RedisServer
) -> None:
    async def numsub(probe: coredis.Redis[bytes], key: str) -> int:
        counts = await probe.pubsub_numsub(PREFIX + key)
        return int(counts[(PREFIX + key).encode()])

    with trio.fail_after(TIMEOUT):
        async with redis_probe(redis_server) as probe, open_gateway(redis_config) as gateway:
            # Its own channel only (history fetches mark their place in the stream there).
            own = {f"{PREFIX}instance:{gateway.instance}".encode()}
            assert await probe.pubsub_channels(PREFIX + "*") == own
            async with tcp_client(gateway.port) as first, tcp_client(gateway.port) as second:
                await ready(first)
                await ready(second)
                await subscribe(first, workspace_id="W")
                # Acked only once the channel is live, so no waiting here.
                assert await numsub(probe, "workspace:W") == 1
                await subscribe(second, workspace_id="W")
                assert await numsub(probe, "workspace:W") == 1  # one channel per instance
                await send_json(first, {"type": "unsubscribe", "workspace_id": "W"})
                assert (await receive_json(first))["type"] == "unsubscribed"
                # The other local subscriber still needs it.
                assert await numsub(probe, "workspace:W") == 1
            # Both clients gone: the instance lets the channel go.
            await eventually(lambda: _is_zero(numsub(probe, "workspace:W")))
            assert await probe.pubsub_channels(PREFIX + "*") == own


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def test_health_names_the_instance_and_the_redis_broker(redis_config: Config) -> None:
    with trio.fail_after(TIMEOUT):
        async with two_gateways(redis_config) as (a, b):
            status_a, health_a = await get_health(a)
            status_b, health_b = await get_health(b)
    assert status_a == status_b == 200
    assert health_a["broker"] == health_b["broker"] == {"kind": "redis", "ok": True}
    assert health_a["instance"] == a.instance
    assert health_b["instance"] == b.instance != a.instance


# --- faults ----------------------------------------------------------------------------------


async def test_delivery_resumes_after_redis_restarts_with_clients_still_connected(
    redis_config: Config, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT * 2):
        async with two_gateways(redis_config) as (a, b), tcp_client(a.port) as ws:
            await ready(ws)
            await subscribe(ws, workspace_id="W")
            await post_event(b, workspace_id="W", n=1)
            assert (await next_event(ws))["n"] == 1

            redis_server.kill()
            await eventually(lambda: _ready_is(b, 503))
            # Liveness stays: the process runs, and restarting it would not bring Redis back.
            status, health = await get_health(b)
            assert status == 200
            assert health["broker"] == {"kind": "redis", "ok": False}
            assert health["status"] == "degraded"
            _, _, body = await http_request("GET", base(b) + "/api/ready")
            assert json.loads(body) == {
                "ready": False,
                "reasons": ["broker_unavailable"],
                "instance": b.instance,
            }
            status, headers, body = await http_request(
                "POST",
                base(b) + "/api/events",
                body=json.dumps({"workspace_id": "W", "n": 2}).encode(),
                headers={"authorization": f"Bearer {API_KEY}"},
            )
            assert status == 503
            assert json.loads(body)["error"].startswith("Broker unavailable")
            assert ("retry-after", "1") in headers
            with pytest.raises(BrokerUnavailable):
                b.broadcaster.broadcast_event({"workspace_id": "W", "n": 2})

            redis_server.start()
            with trio.fail_after(5):
                await eventually(lambda: _ready_is(a, 200))
                await eventually(lambda: _ready_is(b, 200))
            await post_event(b, workspace_id="W", n=3)
            # The client never left, and the instance subscribed its channel again.
            assert (await next_event(ws))["n"] == 3
            assert a.client_count() == 1


async def _ready_is(gateway: Gateway, expected: int) -> bool:
    status, _, _ = await http_request("GET", base(gateway) + "/api/ready")
    return status == expected


async def test_startup_with_redis_unreachable_is_a_clear_error(
    config: Config, redis_server: RedisServer
) -> None:
    redis_server.stop()
    unreachable = with_settings(config, redis_url=redis_server.url)
    with trio.fail_after(TIMEOUT), pytest.raises(BrokerUnavailable, match="cannot reach Redis"):
        async with open_gateway(unreachable):
            pass


async def test_redis_wait_starts_once_redis_is_up(
    config: Config, redis_server: RedisServer
) -> None:
    redis_server.stop()
    waiting = with_settings(config, redis_url=redis_server.url, redis_wait=True)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            started = trio.Event()

            async def run() -> None:
                async with open_gateway(waiting) as gateway:
                    status, health = await get_health(gateway)
                    assert status == 200
                    assert health["broker"]["ok"] is True
                    started.set()

            nursery.start_soon(run)
            await trio.testing.wait_all_tasks_blocked(0.2)
            assert not started.is_set()
            redis_server.start()
            await started.wait()
