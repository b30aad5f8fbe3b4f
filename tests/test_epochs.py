"""Epoch changes under live subscriptions are never silent (issue 18): Redis restarted or
flushed while clients stay connected, and every client following the key with recovery is
told the new epoch before the new epoch's first message, by raw WebSocket clients and the
Python client library (the JavaScript client's tests are in clients/js/test/)."""

from __future__ import annotations

from typing import Any

import coredis
import trio

from trio_gateway import Config, open_gateway
from trio_gateway.broker.epochs import EpochWatch
from trio_gateway.client import Position, open_client

from .conftest import with_settings
from .helpers import API_KEY, TIMEOUT, receive_json, request, ws_url
from .redis_server import RedisServer
from .test_resume import numbers, publish_events_to, ready_becomes, subscribed


def test_a_watch_reports_a_change_once_and_only_for_keys_fetched() -> None:
    watch = EpochWatch()
    assert list(watch.seen(["all"], ["e1"])) == []  # never fetched here: nobody recovers it
    assert watch.learned("all", "e1") is None
    assert list(watch.seen(["all"], ["e1"])) == []
    (notice,) = watch.seen(["all"], ["e2"])
    assert notice.keys == ("all",)
    assert notice.plain == notice.complete
    assert list(watch.seen(["all"], ["e2"])) == []
    assert watch.learned("all", "e3") is not None  # a fetch found it first
    watch.forget("all")
    assert list(watch.seen(["all"], ["e4"])) == []


async def restart(redis_server: RedisServer, gateway: Any) -> None:
    redis_server.kill()
    await ready_becomes(gateway, 503)
    redis_server.start()
    await ready_becomes(gateway, 200)


async def test_a_raw_client_is_told_of_a_redis_restart_before_the_new_epochs_messages(
    config: Config, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT * 2):
        async with (
            open_gateway(with_settings(config, redis_url=redis_server.url)) as gateway,
            subscribed(gateway, workspace_id="W", recover=True) as (ws, ack),
            subscribed(gateway, workspace_id="W") as (seed_client, _),
        ):
            await publish_events_to(gateway, "W", range(3))
            assert await numbers(ws, 3) == [0, 1, 2]
            assert await numbers(seed_client, 3) == [0, 1, 2]
            await restart(redis_server, gateway)
            await publish_events_to(gateway, "W", range(3, 5))
            notice = await receive_json(ws)
            assert notice == {
                "type": "epoch",
                "subscription": "workspace:W",
                "epoch": notice["epoch"],
                "offset": 0,
            }
            assert notice["epoch"] != ack["epoch"]
            first, second = await receive_json(ws), await receive_json(ws)
            assert (first["event"]["n"], first["offsets"]["workspace:W"]) == (3, 1)
            assert (second["event"]["n"], second["offsets"]["workspace:W"]) == (4, 2)
            # A client that never asked for recovery gets the seed's frames, and no notice.
            assert await numbers(seed_client, 2) == [3, 4]
            # The notice is a position to resume from: all of the new epoch is there.
            async with subscribed(
                gateway, workspace_id="W", since={"offset": 0, "epoch": notice["epoch"]}
            ) as (resumed, resumed_ack):
                assert resumed_ack["recovered"] is True
                assert await numbers(resumed, 2) == [3, 4]


async def test_a_flush_is_announced_once_per_key_and_a_later_fetch_finds_no_news(
    config: Config, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT * 2):
        async with (
            open_gateway(with_settings(config, redis_url=redis_server.url)) as gateway,
            subscribed(gateway, scope="all", recover=True) as (ws, _),
        ):
            assert (await request(ws, type="subscribe", workspace_id="W", recover=True))[
                "type"
            ] == "subscribed"
            await publish_events_to(gateway, "W", range(1))
            assert (await receive_json(ws))["offsets"] == {"all": 1, "workspace:W": 1}
            async with coredis.Redis.from_url(redis_server.url) as redis:
                await redis.flushall()
            # A subscribe that fetches first finds the new epoch: the others hear of it then.
            async with subscribed(gateway, session_id="S", recover=True):
                pass
            await publish_events_to(gateway, "W", range(1, 2))
            notices = [await receive_json(ws), await receive_json(ws)]
            assert sorted(notice["subscription"] for notice in notices) == ["all", "workspace:W"]
            assert {notice["type"] for notice in notices} == {"epoch"}
            event = await receive_json(ws)
            assert (event["event"]["n"], event["offsets"]) == (1, {"all": 1, "workspace:W": 1})


async def test_the_python_client_reports_a_new_epoch_as_recovered_false_and_keeps_up(
    config: Config, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT * 2):
        async with open_gateway(with_settings(config, redis_url=redis_server.url)) as gateway:
            url = ws_url(gateway.port, token=None)
            async with open_client(url, API_KEY, subscriptions=["workspace:W"]) as client:
                await publish_events_to(gateway, "W", range(3))
                got = [message["event"]["n"] async for message in _take(client, 3)]
                assert got == [0, 1, 2]
                old_epoch = client.positions["workspace:W"].epoch
                await restart(redis_server, gateway)
                await publish_events_to(gateway, "W", range(3, 5))
                messages = [message async for message in _take(client, 3)]
            notice, *events = messages
            assert notice["type"] == "subscribed"
            assert notice["recovered"] is False
            assert notice["subscription"] == "workspace:W"
            assert notice["epoch"] != old_epoch
            # Offsets 1 and 2 again, in the new epoch: delivered, not dropped as duplicates.
            assert [event["event"]["n"] for event in events] == [3, 4]
            assert client.positions["workspace:W"] == Position(notice["epoch"], 2)


async def _take(client: Any, count: int) -> Any:
    async for message in client:
        yield message
        count -= 1
        if not count:
            return
