"""The Redis broker at its limits and under faults, on a real redis-server.

Many keys held, a hung or dropped Redis, publishes whose outcome is unknown, retried
publishes. Clients are real WebSocket clients and what Redis receives is read with MONITOR;
bounded with `fail_after`, nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import coredis
import trio

from trio_gateway import Config, Gateway, open_gateway
from trio_gateway.client import open_client
from trio_gateway.client.http import http_request

from .helpers import API_KEY, ready, receive_json, request, send_json, subscribe, tcp_client
from .redis_server import RedisServer
from .test_redis_broker import (
    PREFIX,
    TIMEOUT,
    base,
    eventually,
    next_event,
    post_event,
    redis_probe,
)
from .test_redis_broker import redis_config as redis_config  # the fixture


async def ready_is(gateway: Gateway, expected: int) -> bool:
    status, _, _ = await http_request("GET", base(gateway) + "/api/ready")
    return status == expected


async def post_raw(
    gateway: Gateway, body: object, path: str = "/api/events"
) -> tuple[int, list[tuple[str, str]], bytes]:
    status, headers, raw = await http_request(
        "POST",
        base(gateway) + path,
        body=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    return status, headers, raw


PUBSUB_COMMANDS = ("subscribe", "unsubscribe", "psubscribe", "punsubscribe")


class Monitor:
    """A MONITOR connection: the commands Redis runs, each as its list of arguments."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            data = await self._stream.receive_some()
            assert data, "MONITOR connection closed"
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    async def next_pubsub(self) -> list[str]:
        """The next (P)(UN)SUBSCRIBE, its name lowered; anything else is skipped."""
        while True:
            line = await self._line()
            # +1733312345.123456 [0 127.0.0.1:5000] "SUBSCRIBE" "tg-test:workspace:W"
            _, _, quoted = line.decode().partition("] ")
            command = [part.strip('"') for part in quoted.split('" "')]
            if command[0].lower() in PUBSUB_COMMANDS:
                return [command[0].lower(), *command[1:]]


@asynccontextmanager
async def monitor(server: RedisServer) -> AsyncIterator[Monitor]:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(b"MONITOR\r\n")
        watcher = Monitor(stream)
        assert await watcher._line() == b"+OK"
        yield watcher


# --- subscribing with many keys held -----------------------------------------------------------

HELD = 300


async def test_one_more_subscription_sends_redis_only_that_channel(
    redis_config: Config, redis_server: RedisServer
) -> None:
    # A burst of HELD subscribes is beyond the frame budget, which is not under test here.
    config = attrs.evolve(redis_config, client_rate=0)
    with trio.fail_after(TIMEOUT * 3):
        async with open_gateway(config) as gateway, tcp_client(gateway.port) as ws:
            await ready(ws)
            for n in range(HELD):
                await send_json(ws, {"type": "subscribe", "workspace_id": f"W{n}"})
            for _ in range(HELD):
                assert (await receive_json(ws))["type"] == "subscribed"
            async with monitor(redis_server) as redis:
                await subscribe(ws, workspace_id="new")
                assert await redis.next_pubsub() == ["subscribe", PREFIX + "workspace:new"]
                await send_json(ws, {"type": "unsubscribe", "workspace_id": "W7"})
                assert (await receive_json(ws))["type"] == "unsubscribed"
                assert await redis.next_pubsub() == ["unsubscribe", PREFIX + "workspace:W7"]
            await post_event(gateway, workspace_id="new", n=1)
            assert (await next_event(ws))["n"] == 1


async def test_a_glob_two_patterns_share_stays_until_the_last_one_goes(
    redis_config: Config, redis_server: RedisServer
) -> None:
    # "chat.*" needs the glob "chat.*"; "chat.**" needs "chat" and "chat.*".
    with trio.fail_after(TIMEOUT):
        async with open_gateway(redis_config) as gateway, tcp_client(gateway.port) as ws:
            await ready(ws)
            async with monitor(redis_server) as redis:
                await subscribe(ws, topic="chat.*")
                assert await redis.next_pubsub() == ["psubscribe", PREFIX + "chat.*"]
                await subscribe(ws, topic="chat.**")
                assert await redis.next_pubsub() == ["psubscribe", PREFIX + "chat"]
                await send_json(ws, {"type": "unsubscribe", "topic": "chat.**"})
                assert (await receive_json(ws))["type"] == "unsubscribed"
                assert await redis.next_pubsub() == ["punsubscribe", PREFIX + "chat"]
                await send_json(ws, {"type": "unsubscribe", "topic": "chat.*"})
                assert (await receive_json(ws))["type"] == "unsubscribed"
                assert await redis.next_pubsub() == ["punsubscribe", PREFIX + "chat.*"]


# --- a hung Redis ------------------------------------------------------------------------------

# OPERATIONS.md, "When Redis goes away": a Redis that stops answering is noticed within 5 s.
HUNG_NOTICED_WITHIN = 5.0


async def test_a_hung_redis_is_noticed_within_the_documented_time(
    redis_config: Config, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT * 3):
        async with open_gateway(redis_config) as gateway, tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, workspace_id="W")
            redis_server.pause()
            hung_at = trio.current_time()
            with trio.fail_after(HUNG_NOTICED_WITHIN):
                await eventually(lambda: ready_is(gateway, 503))
            status, _, body = await post_raw(gateway, {"workspace_id": "W", "n": 1})
            assert status == 503
            assert json.loads(body)["error"].startswith("Broker unavailable")
            assert trio.current_time() - hung_at < HUNG_NOTICED_WITHIN

            redis_server.resume()
            await eventually(lambda: ready_is(gateway, 200))
            await post_event(gateway, workspace_id="W", n=2)
            assert (await next_event(ws))["n"] == 2


# --- idempotent publishing and publishes whose outcome is unknown ------------------------------


async def test_a_retry_with_the_same_idempotency_key_on_another_instance_is_not_delivered_twice(
    redis_config: Config,
) -> None:
    message = {"topic": "orders", "data": {"n": 1}, "idempotency_key": "order-1"}
    with trio.fail_after(TIMEOUT):
        async with (
            open_gateway(redis_config) as a,
            open_gateway(redis_config) as b,
            tcp_client(a.port) as ws,
        ):
            await ready(ws)
            await subscribe(ws, topic="orders")
            status, _, body = await post_raw(a, message, "/api/publish")
            assert (status, json.loads(body)) == (
                202,
                {"accepted": 1, "duplicates": 0, "offsets": [1]},
            )
            status, _, body = await post_raw(b, [message, {**message, "data": 2}], "/api/publish")
            # Both are repeats of order-1: answered with its offset, not published.
            assert (status, json.loads(body)) == (
                202,
                {"accepted": 2, "duplicates": 2, "offsets": [1, 1]},
            )
            status, _, body = await post_raw(
                b, {"topic": "orders", "data": {"n": 2}}, "/api/publish"
            )
            assert json.loads(body) == {"accepted": 1, "offsets": [2]}
            assert [(await receive_json(ws))["data"] for _ in range(2)] == [{"n": 1}, {"n": 2}]


async def test_a_publish_redis_did_not_confirm_is_504_and_its_retry_lands_once(
    redis_config: Config, redis_server: RedisServer
) -> None:
    event = {"workspace_id": "W", "n": 1, "idempotency_key": "evt-1"}
    with trio.fail_after(TIMEOUT * 3):
        async with open_gateway(redis_config) as gateway, tcp_client(gateway.port) as ws:
            await ready(ws)
            ack = await request(ws, type="subscribe", workspace_id="W", recover=True)
            redis_server.pause()
            status, _, body = await post_raw(gateway, event)
            assert status == 504
            assert json.loads(body) == {
                "error": "Publish outcome unknown: the broker did not confirm it; retry with "
                "the same idempotency_key to publish it at most once",
                "code": "outcome_unknown",
            }
            # Redis runs what it had already received when it wakes up.
            redis_server.resume()
            await eventually(lambda: ready_is(gateway, 200))
            status, _, body = await post_raw(gateway, event)
            # It was: the retry is its duplicate.
            assert (status, json.loads(body)) == (202, {"accepted": 1, "duplicates": 1})
            await post_event(gateway, workspace_id="W", n=2)
            # What the key holds since the subscribe: the event once, then the next one.
            await send_json(ws, {"type": "unsubscribe", "workspace_id": "W"})
            while (await receive_json(ws))["type"] != "unsubscribed":
                pass
            resumed = await request(
                ws,
                type="subscribe",
                workspace_id="W",
                since={"offset": ack["offset"], "epoch": ack["epoch"]},
            )
            assert resumed["recovered"] is True
            replay = [await receive_json(ws) for _ in range(2)]
            assert [frame["event"]["n"] for frame in replay] == [1, 2]
            assert [frame["offsets"]["workspace:W"] for frame in replay] == [1, 2]
            assert "idempotency_key" not in replay[0]["event"]


async def test_a_client_publish_redis_did_not_confirm_is_told_its_outcome_is_unknown(
    redis_config: Config, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT * 2):
        async with open_gateway(redis_config) as gateway, tcp_client(gateway.port) as ws:
            await ready(ws)
            redis_server.pause()
            reply = await request(ws, type="publish", topic="chat", data=1)
            assert reply == {
                "type": "error",
                "message": "Publish outcome unknown: the broker did not confirm it",
                "code": "outcome_unknown",
            }
            redis_server.resume()
            await eventually(lambda: ready_is(gateway, 200))
            # Redis ran it when it woke up: the next publish on the topic is its second.
            assert await request(ws, type="publish", topic="chat", data=2) == {
                "type": "published",
                "topic": "chat",
                "offset": 2,
            }


# --- a subscriber cut off while another instance publishes -------------------------------------


async def _subscriber_id(probe: coredis.Redis[bytes], gateway: Gateway) -> int:
    name = f"{PREFIX}subscriber:{gateway.instance}"
    for client in await probe.client_list():
        if client["name"] == name:
            return int(client["id"])
    raise AssertionError(f"no subscriber connection named {name!r}")


@asynccontextmanager
async def subscriber_cut_off(probe: coredis.Redis[bytes], gateway: Gateway) -> AsyncIterator[None]:
    """Drop `gateway`'s subscriber connection and keep it out (no room for a new connection)
    for the block; the other connections stay, but for its liveness probe's, which goes with
    the subscriber."""
    connected = len(await probe.client_list())
    await probe.config_set({"maxclients": connected - 2})
    try:
        await probe.client_kill(identifier=await _subscriber_id(probe, gateway))
        await eventually(lambda: ready_is(gateway, 503))
        yield
    finally:
        await probe.config_set({"maxclients": 10000})


async def test_clients_of_an_instance_whose_subscriber_was_cut_off_are_told_of_the_gap(
    redis_config: Config, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT * 3):
        async with (
            redis_probe(redis_server) as probe,
            open_gateway(redis_config) as a,
            open_gateway(redis_config) as b,
            tcp_client(a.port) as plain,
            tcp_client(a.port) as tracked,
            tcp_client(b.port) as elsewhere,
        ):
            for ws in (plain, tracked, elsewhere):
                await ready(ws)
            await subscribe(plain, workspace_id="W")
            await subscribe(plain, topic="chat.*")
            ack = await request(tracked, type="subscribe", workspace_id="W", recover=True)
            await subscribe(elsewhere, workspace_id="W")
            await post_event(b, workspace_id="W", n=1)
            for ws in (plain, tracked, elsewhere):
                assert (await next_event(ws))["n"] == 1
            async with subscriber_cut_off(probe, a):
                status, _, body = await post_raw(b, {"workspace_id": "W", "n": 2})
                assert (status, json.loads(body)) == (202, {"accepted": 1})
                assert (await next_event(elsewhere))["n"] == 2
            await eventually(lambda: ready_is(a, 200))
            # What A's clients missed is named: up to offset 2 of workspace:W; a pattern has
            # no offsets, so its subscribers are told whenever the subscriber was cut off.
            assert {json.dumps(await receive_json(plain)) for _ in range(2)} == {
                json.dumps(
                    {
                        "type": "gap",
                        "subscription": "workspace:W",
                        "epoch": ack["epoch"],
                        "offset": 2,
                    }
                ),
                json.dumps({"type": "gap", "subscription": "chat.*"}),
            }
            gap = await receive_json(tracked)
            assert gap == {
                "type": "gap",
                "subscription": "workspace:W",
                "epoch": ack["epoch"],
                "offset": 2,
            }
            resumed = await request(
                tracked,
                type="subscribe",
                workspace_id="W",
                since={"offset": 1, "epoch": ack["epoch"]},
            )
            assert resumed["recovered"] is True
            assert (await next_event(tracked))["n"] == 2
            await post_event(b, workspace_id="W", n=3)
            for ws in (plain, tracked, elsewhere):
                assert (await next_event(ws))["n"] == 3


async def test_the_client_library_fetches_what_a_gap_names(
    redis_config: Config, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT * 3):
        async with (
            redis_probe(redis_server) as probe,
            open_gateway(redis_config) as a,
            open_gateway(redis_config) as b,
            open_client(
                f"ws://127.0.0.1:{a.port}/api/ws", API_KEY, subscriptions=["workspace:W"]
            ) as client,
        ):
            await post_event(b, workspace_id="W", n=1)
            async with subscriber_cut_off(probe, a):
                await post_event(b, workspace_id="W", n=2)
            await eventually(lambda: ready_is(a, 200))
            received = []
            async for message in client:
                received.append((message["event"]["n"], message["offsets"]["workspace:W"]))
                if len(received) == 2:
                    break
            assert received == [(1, 1), (2, 2)]
