"""Delivery you can rely on: offsets, history, resume, topics and retained session state.

Each scenario runs on both brokers where it applies (memory, and Redis with a real
redis-server): the guarantees are the broker's, so both must keep them. Real sockets and
`fail_after` bounds; TTL expiry runs under the autojump clock over memory streams.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

from trio_gateway import Config, Gateway, open_gateway
from trio_gateway.client.http import http_request, publish_events

from .conftest import with_settings
from .helpers import (
    API_KEY,
    closed_with,
    memory_client,
    post,
    raw_client,
    ready,
    receive_json,
    request,
    send_json,
    serve_in_memory,
    tcp_client,
)
from .redis_server import RedisServer

TIMEOUT = 10


async def publish_events_to(gateway: Gateway, workspace: str, numbers: range) -> None:
    events = [{"workspace_id": workspace, "n": n} for n in numbers]
    await publish_events(f"http://127.0.0.1:{gateway.port}", API_KEY, events)


async def numbers(ws: trio_websocket.WebSocketConnection, count: int) -> list[Any]:
    got = []
    for _ in range(count):
        frame = await receive_json(ws)
        assert frame["type"] == "event", frame
        got.append(frame["event"]["n"])
    return got


@asynccontextmanager
async def subscribed(
    gateway: Gateway, **subscribe: Any
) -> AsyncIterator[tuple[trio_websocket.WebSocketConnection, dict[str, Any]]]:
    async with tcp_client(gateway.port) as ws:
        await ready(ws)
        ack = await request(ws, type="subscribe", **subscribe)
        assert ack["type"] == "subscribed", ack
        yield ws, ack


# --- positions and offsets ---------------------------------------------------------------------


async def test_seed_style_clients_get_the_seed_bytes_and_recovering_ones_get_offsets(
    any_broker: Config,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            open_gateway(any_broker) as gateway,
            subscribed(gateway, workspace_id="W") as (plain, plain_ack),
            subscribed(gateway, workspace_id="W", recover=True) as (tracked, tracked_ack),
        ):
            assert plain_ack == {"type": "subscribed", "subscription": "workspace:W"}
            assert tracked_ack["offset"] == 0
            assert isinstance(tracked_ack["epoch"], str)
            assert tracked_ack["epoch"]
            await publish_events_to(gateway, "W", range(2))
            assert await receive_json(plain) == {
                "type": "event",
                "event": {"workspace_id": "W", "n": 0},
            }
            first = await receive_json(tracked)
            assert first["offsets"]["workspace:W"] == 1
            assert set(first["offsets"]) == {"all", "workspace:W"}
            assert (await receive_json(tracked))["offsets"]["workspace:W"] == 2


async def test_resume_replays_exactly_what_was_missed_then_goes_live(any_broker: Config) -> None:
    # Room for the gap and for what is published during the replay.
    roomy = with_settings(any_broker, history_size=1000)
    with trio.fail_after(TIMEOUT * 2):
        async with open_gateway(roomy) as gateway:
            async with subscribed(gateway, workspace_id="W", recover=True) as (ws, ack):
                await publish_events_to(gateway, "W", range(5))
                assert await numbers(ws, 5) == list(range(5))
            epoch = ack["epoch"]
            # Disconnected: 100 messages go by.
            await publish_events_to(gateway, "W", range(5, 105))

            async with tcp_client(gateway.port) as ws:
                await ready(ws)

                async def keep_publishing() -> None:
                    # Concurrent with the replay: none may be lost or doubled.
                    for n in range(105, 155):
                        await publish_events_to(gateway, "W", range(n, n + 1))

                async with trio.open_nursery() as nursery:
                    await send_json(
                        ws,
                        {
                            "type": "subscribe",
                            "workspace_id": "W",
                            "since": {"offset": 5, "epoch": epoch},
                        },
                    )
                    nursery.start_soon(keep_publishing)
                    ack = await receive_json(ws)
                    assert ack["type"] == "subscribed"
                    assert ack["recovered"] is True
                    assert ack["epoch"] == epoch
                    assert ack["offset"] >= 105
                    assert await numbers(ws, 150) == list(range(5, 155))


async def test_a_resume_from_a_changed_epoch_or_too_far_back_is_not_recovered(
    config: Config,
) -> None:
    small = with_settings(config, history_size=10)
    with trio.fail_after(TIMEOUT):
        async with open_gateway(small) as gateway:
            async with subscribed(gateway, topic="news", recover=True) as (ws, ack):
                epoch = ack["epoch"]
            for n in range(30):
                await post(gateway.port, "/api/publish", {"topic": "news", "data": n})
            async with subscribed(gateway, topic="news", since={"offset": 5, "epoch": epoch}) as (
                ws,
                ack,
            ):
                # 25 missed, 10 kept: the client must refetch its state.
                assert ack == {
                    "type": "subscribed",
                    "subscription": "news",
                    "epoch": epoch,
                    "offset": 30,
                    "recovered": False,
                }
                await post(gateway.port, "/api/publish", {"topic": "news", "data": "live"})
                # Nothing replayed: the next frame is the live one.
                assert await receive_json(ws) == {
                    "type": "message",
                    "topic": "news",
                    "data": "live",
                    "offset": 31,
                }
            async with subscribed(
                gateway, topic="news", since={"offset": 30, "epoch": "another-epoch"}
            ) as (ws, ack):
                assert ack["recovered"] is False
                assert ack["epoch"] == epoch
            async with subscribed(gateway, topic="news", since={"offset": 25, "epoch": epoch}) as (
                ws,
                ack,
            ):
                assert ack["recovered"] is True
                replayed = [await receive_json(ws) for _ in range(6)]
                assert [frame["offset"] for frame in replayed] == [26, 27, 28, 29, 30, 31]


async def test_history_older_than_its_ttl_is_not_replayed(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    short = with_settings(config, history_ttl=60.0, ping_interval=1000.0)
    gateway, listener = await serve_in_memory(nursery, short)
    async with memory_client(listener) as ws:
        await ready(ws)
        ack = await request(ws, type="subscribe", topic="t", recover=True)
    await gateway.broadcaster.publish("t", 1)
    await trio.sleep(61)
    await gateway.broadcaster.publish("t", 2)
    async with memory_client(listener) as ws:
        await ready(ws)
        stale = await request(
            ws, type="subscribe", topic="t", since={"offset": 0, "epoch": ack["epoch"]}
        )
        assert stale["recovered"] is False
        fresh = await request(
            ws, type="subscribe", topic="t", since={"offset": 1, "epoch": ack["epoch"]}
        )
        assert fresh["recovered"] is True
        assert (await receive_json(ws))["data"] == 2


async def test_a_slow_consumer_closed_4008_resumes_with_nothing_lost(config: Config) -> None:
    tight = with_settings(config, queue_depth=8)
    with trio.fail_after(TIMEOUT * 2):
        async with open_gateway(tight) as gateway:
            got: list[int] = []
            async with raw_client(gateway.port, rcvbuf=4096) as stuck:
                await ready(stuck.ws)
                ack = await request(stuck.ws, type="subscribe", topic="feed", recover=True)
                for n in range(60):
                    payload = {"n": n, "pad": "x" * 2000}
                    await post(gateway.port, "/api/publish", {"topic": "feed", "data": payload})
                reason = await closed_with(stuck.ws)
                assert reason.code == 4008
            async with tcp_client(gateway.port) as ws:
                await ready(ws)
                resumed = await request(
                    ws, type="subscribe", topic="feed", since={"offset": 0, "epoch": ack["epoch"]}
                )
                assert resumed["recovered"] is True
                for _ in range(60):
                    got.append((await receive_json(ws))["data"]["n"])
            assert got == list(range(60))


# --- topics and patterns ---------------------------------------------------------------------


async def test_topic_messages_reach_topic_and_pattern_subscribers(any_broker: Config) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            open_gateway(any_broker) as gateway,
            subscribed(gateway, topic="chat.room.1") as (exact, _),
            subscribed(gateway, topic="chat.*.1") as (one, one_ack),
            subscribed(gateway, topic="chat.**") as (rest, _),
            subscribed(gateway, topic="other.*") as (other, _),
            subscribed(gateway, scope="all") as (everyone, _),
        ):
            assert one_ack == {"type": "subscribed", "subscription": "chat.*.1"}
            status, answer = await post(
                gateway.port,
                "/api/publish",
                [{"topic": "chat.room.1", "data": {"text": "hi"}}, {"topic": "chat", "data": 2}],
            )
            assert (status, answer) == (202, {"accepted": 2, "offsets": [1, 1]})
            hello = {"type": "message", "topic": "chat.room.1", "data": {"text": "hi"}, "offset": 1}
            assert await receive_json(exact) == hello
            assert await receive_json(one) == hello
            assert await receive_json(rest) == hello
            assert await receive_json(rest) == {
                "type": "message",
                "topic": "chat",
                "data": 2,
                "offset": 1,
            }
            # Neither "other.*" nor "all" matched: a marker proves nothing came before it.
            gateway.broadcaster.publish_nowait("other.x", "marker")
            assert (await receive_json(other))["data"] == "marker"
            gateway.broadcaster.broadcast_event({"workspace_id": "W", "n": 0})
            assert (await receive_json(everyone))["type"] == "event"


async def test_wildcard_subscriptions_are_live_only(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            for extra in ({"since": {"offset": 1, "epoch": "e"}}, {"recover": True}):
                reply = await request(ws, type="subscribe", topic="chat.*", **extra)
                assert reply["type"] == "error"
                assert reply["message"] == (
                    "Invalid subscribe: wildcard topics are live only (no since or recover)"
                )
            for bad, why in [
                ("chat..x", "empty"),
                ("chat.**.x", "'**' may only be the last segment"),
                ("all", "reserved"),
            ]:
                reply = await request(ws, type="subscribe", topic=bad)
                assert reply["type"] == "error"
                assert why in reply["message"]


async def test_publish_api_validates_every_message(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        assert (
            await post(gateway.port, "/api/publish", {"topic": "a.*", "data": 1})
            == (
                400,
                {"error": "topic segments may contain only letters, digits, '_' and '-'"},
            )
            or (await post(gateway.port, "/api/publish", {"topic": "a.*", "data": 1}))[0] == 400
        )
        status, body = await post(
            gateway.port, "/api/publish", [{"topic": "a", "data": 1}, {"topic": "b"}]
        )
        assert (status, body) == (400, {"error": "messages[1]: data is required", "index": 1})
        status, body = await post(gateway.port, "/api/publish", [{"topic": "a", "data": 1}, 5])
        assert status == 400
        assert body["index"] == 1


async def test_patterns_work_across_instances(config: Config, redis_server: RedisServer) -> None:
    shared = with_settings(config, redis_url=redis_server.url)
    with trio.fail_after(TIMEOUT):
        async with (
            open_gateway(shared) as a,
            open_gateway(shared) as b,
            subscribed(a, topic="orders.*") as (ws, _),
        ):
            await post(b.port, "/api/publish", {"topic": "orders.eu", "data": 1})
            await post(b.port, "/api/publish", {"topic": "orders.eu.late", "data": 2})
            await post(b.port, "/api/publish", {"topic": "orders.us", "data": 3})
            # "orders.eu.late" reaches the instance (Redis globs over-match) but not the client.
            assert [(await receive_json(ws))["data"] for _ in range(2)] == [1, 3]


async def test_another_instances_fetch_markers_are_not_foreign_messages(
    config: Config, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A "**" subscriber makes A PSUBSCRIBE a glob that also covers B's marker channel.
    shared = with_settings(config, redis_url=redis_server.url)
    with trio.fail_after(TIMEOUT):
        async with (
            open_gateway(shared) as a,
            open_gateway(shared) as b,
            subscribed(a, topic="**") as (everything, _),
        ):
            async with subscribed(b, workspace_id="W", recover=True) as (_, ack):
                assert ack["offset"] == 0
            await post(b.port, "/api/publish", {"topic": "orders.eu", "data": 1})
            assert (await receive_json(everything))["data"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


# --- across instances and Redis restarts ------------------------------------------------------


async def test_resume_on_another_instance_misses_nothing(
    config: Config, redis_server: RedisServer
) -> None:
    shared = with_settings(config, redis_url=redis_server.url)
    with trio.fail_after(TIMEOUT):
        async with open_gateway(shared) as a, open_gateway(shared) as b:
            async with subscribed(a, session_id="S", recover=True) as (ws, ack):
                pass
            for n in range(20):
                b.broadcaster.broadcast_event({"workspace_id": "W", "session_id": "S", "n": n})
            await publish_events_to(b, "W", range(0))  # a round trip: the broadcasts are out
            for gateway in (a, b):
                async with subscribed(
                    gateway, session_id="S", since={"offset": 0, "epoch": ack["epoch"]}
                ) as (ws, resumed):
                    assert resumed["recovered"] is True
                    assert await numbers(ws, 20) == list(range(20))


async def test_a_redis_restart_loses_history_and_says_so(
    config: Config, redis_server: RedisServer
) -> None:
    shared = with_settings(config, redis_url=redis_server.url)
    with trio.fail_after(TIMEOUT * 2):
        async with open_gateway(shared) as gateway:
            async with subscribed(gateway, workspace_id="W", recover=True) as (ws, ack):
                await publish_events_to(gateway, "W", range(3))
                assert await numbers(ws, 3) == [0, 1, 2]
            redis_server.kill()
            await ready_becomes(gateway, 503)
            redis_server.start()
            await ready_becomes(gateway, 200)
            await publish_events_to(gateway, "W", range(3, 4))
            async with subscribed(
                gateway, workspace_id="W", since={"offset": 3, "epoch": ack["epoch"]}
            ) as (ws, resumed):
                # Never a silent gap: a new epoch, and the client is told to refetch.
                assert resumed["recovered"] is False
                assert resumed["epoch"] != ack["epoch"]
                assert resumed["offset"] == 1


async def ready_becomes(gateway: Gateway, expected: int) -> None:
    """Poll /api/ready (an observable state of the gateway) until it answers `expected`."""
    with trio.fail_after(5):
        while True:
            status, _, _ = await http_request("GET", f"http://127.0.0.1:{gateway.port}/api/ready")
            if status == expected:
                return
            await trio.sleep(0.05)


# --- session state -------------------------------------------------------------------------------


async def test_session_state_is_sent_first_and_cleared_by_delete(any_broker: Config) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_gateway(any_broker) as gateway:
            update = {"session_id": "S", "workspace_id": "W", "lifecycle": "active"}
            assert (await post(gateway.port, "/api/session-updates", update))[0] == 202
            final = {**update, "lifecycle": "ended", "summary": "done"}
            assert (await post(gateway.port, "/api/session-updates", final))[0] == 202
            state = {
                "type": "session.state",
                "session_id": "S",
                "lifecycle": "ended",
                "summary": "done",
            }
            async with subscribed(gateway, session_id="S") as (ws, ack):
                assert ack == {"type": "subscribed", "subscription": "session:S"}
                assert await receive_json(ws) == state
                assert await request(ws, type="sync", session_id="S") == state

                deleted = {"session_id": "S", "workspace_id": "W"}
                assert (await post(gateway.port, "/api/session-deleted", deleted))[0] == 202
                assert await receive_json(ws) == {"type": "session.deleted", "session_id": "S"}
                assert await request(ws, type="sync", session_id="S") == {
                    "type": "error",
                    "message": "No state retained for session S",
                }
            async with subscribed(gateway, session_id="S") as (ws, _):
                await post(gateway.port, "/api/session-updates", {**update, "lifecycle": "x"})
                # No state any more: the first frame is the live update.
                assert (await receive_json(ws))["type"] == "session.update"


async def test_retained_state_expires_after_its_ttl(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    # Pings every 1000 s: this client does not answer them.
    short = with_settings(config, state_ttl=100.0, ping_interval=1000.0)
    gateway, listener = await serve_in_memory(nursery, short)
    gateway.broadcaster.broadcast_session_update("S", "W", "active")
    await trio.testing.wait_all_tasks_blocked()
    async with memory_client(listener) as ws:
        await ready(ws)
        await trio.sleep(99)
        assert (await request(ws, type="sync", session_id="S"))["type"] == "session.state"
        await trio.sleep(2)
        assert (await request(ws, type="sync", session_id="S"))["type"] == "error"


async def test_a_quiet_key_keeps_its_epoch_while_someone_holds_it(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, with_settings(config, ping_interval=100_000.0))
    async with memory_client(listener) as holder:
        await ready(holder)
        held = await request(holder, type="subscribe", topic="held", recover=True)
        async with memory_client(listener) as passer:
            await ready(passer)
            dropped = await request(passer, type="subscribe", topic="dropped", recover=True)
        await trio.sleep(2 * 24 * 3600)
        async with memory_client(listener) as later:
            await ready(later)
            # Held all along: the same epoch (offsets tracked by the holder stay valid).
            assert (await request(later, type="subscribe", topic="held", recover=True))[
                "epoch"
            ] == held["epoch"]
            # Nobody held it for two days: forgotten, and back with a new epoch.
            assert (await request(later, type="subscribe", topic="dropped", recover=True))[
                "epoch"
            ] != dropped["epoch"]
