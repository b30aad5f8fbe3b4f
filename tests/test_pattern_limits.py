"""Wildcard pattern caps as a client sees them (the error reply, what stays unheld), and the
patterns and shapes an operator reads in /metrics and /api/stats.

Real sockets; a real HTTP backend for the connect hook's subscriptions.
"""

from __future__ import annotations

from typing import Any

import trio

from trio_gateway import Config, Gateway, serve
from trio_gateway.protocol.topics import PatternIndex
from trio_gateway.session.pattern_quota import within_quota

from .backend_server import Backend
from .conftest import with_settings
from .helpers import TIMEOUT, ready, receive_json, request, subscribe, tcp_client
from .test_metrics import get_json, scrape, value


def too_many_patterns(limit: int) -> dict[str, str]:
    return {
        "type": "error",
        "message": f"Too many patterns: at most {limit} per connection",
        "code": "too_many",
    }


async def test_patterns_beyond_the_cap_are_refused(nursery: trio.Nursery, config: Config) -> None:
    gateway: Gateway = await nursery.start(serve, with_settings(config, max_patterns=2))
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            assert await subscribe(ws, topic="a.*") == "a.*"
            assert await subscribe(ws, topic="b.**") == "b.**"
            assert await request(ws, type="subscribe", topic="c.*") == too_many_patterns(2)
            # Plain topics are not patterns, and a held pattern is not a new one.
            assert await subscribe(ws, topic="c.x") == "c.x"
            assert await subscribe(ws, topic="a.*") == "a.*"
            # The refused pattern was not taken: "c.y" reaches nobody, the marker does.
            await gateway.broadcaster.publish("c.y", "refused")
            await gateway.broadcaster.publish("a.marker", "marker")
            assert (await receive_json(ws))["data"] == "marker"
            # Dropping a pattern makes room for another.
            assert (await request(ws, type="unsubscribe", topic="b.**"))["type"] == "unsubscribed"
            assert await subscribe(ws, topic="c.*") == "c.*"
            await gateway.broadcaster.publish("c.y", "now held")
            assert (await receive_json(ws))["data"] == "now held"


async def test_the_cap_is_per_connection(nursery: trio.Nursery, config: Config) -> None:
    gateway: Gateway = await nursery.start(serve, with_settings(config, max_patterns=1))
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as first, tcp_client(gateway.port) as second:
            await ready(first)
            await ready(second)
            assert await subscribe(first, topic="a.*") == "a.*"
            assert await subscribe(second, topic="b.*") == "b.*"
            assert await request(first, type="subscribe", topic="b.*") == too_many_patterns(1)


async def test_connect_hook_patterns_beyond_the_cap_are_not_held(
    nursery: trio.Nursery, config: Config
) -> None:
    held = ["workspace:W1", "a.*", "a.*", "b.**", "c.*", "chat.lobby"]

    async def answer(path: str, body: Any) -> tuple[int, Any]:
        return 200, {"user_id": "carol", "sub_topics": ["**"], "subscriptions": held}

    backend: Backend = await nursery.start(Backend(answer).serve)
    settings = with_settings(config, connect_url=backend.url("/connect"), max_patterns=2)
    gateway: Gateway = await nursery.start(serve, settings)
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, "tok-carol") as ws:
            bound = (await receive_json(ws))["subscriptions"]
            assert bound == ["workspace:W1", "a.*", "b.**", "chat.lobby"]
            assert await request(ws, type="subscribe", topic="c.*") == too_many_patterns(2)


TOO_MANY_SHAPES = {
    "type": "error",
    "message": "Too many pattern shapes: at most 2 on this gateway",
    "code": "too_many",
}


async def test_patterns_of_a_new_shape_beyond_the_instance_cap_are_refused(
    nursery: trio.Nursery, config: Config
) -> None:
    gateway: Gateway = await nursery.start(serve, with_settings(config, max_pattern_shapes=2))
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as first, tcp_client(gateway.port) as second:
            await ready(first)
            await ready(second)
            assert await subscribe(first, topic="a.*") == "a.*"
            assert await subscribe(first, topic="*.b") == "*.b"
            # Shapes already held take any number of patterns, from anyone.
            assert await subscribe(second, topic="c.*") == "c.*"
            assert await subscribe(second, topic="*.d") == "*.d"
            assert await request(second, type="subscribe", topic="x.y.*") == TOO_MANY_SHAPES
            assert await request(second, type="subscribe", topic="x.**") == TOO_MANY_SHAPES
            # A shape is freed once nobody holds a pattern of it.
            await request(first, type="unsubscribe", topic="*.b")
            assert await request(second, type="subscribe", topic="x.y.*") == TOO_MANY_SHAPES
            await request(second, type="unsubscribe", topic="*.d")
            assert await subscribe(second, topic="x.y.*") == "x.y.*"
            await gateway.broadcaster.publish("x.y.z", "through")
            assert (await receive_json(second))["data"] == "through"


async def test_connect_hook_patterns_of_new_shapes_beyond_the_cap_are_not_held(
    nursery: trio.Nursery, config: Config
) -> None:
    held = ["a.*", "b.*", "*.c", "x.y.*", "d.*", "chat.lobby"]

    async def answer(path: str, body: Any) -> tuple[int, Any]:
        return 200, {"user_id": "carol", "subscriptions": held}

    backend: Backend = await nursery.start(Backend(answer).serve)
    settings = with_settings(config, connect_url=backend.url("/connect"), max_pattern_shapes=2)
    gateway: Gateway = await nursery.start(serve, settings)
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, "tok-carol") as ws:
            bound = (await receive_json(ws))["subscriptions"]
            assert bound == ["a.*", "b.*", "*.c", "d.*", "chat.lobby"]


async def test_patterns_and_shapes_held_are_reported(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as first, tcp_client(gateway.port) as second:
            await ready(first)
            await ready(second)
            for ws, pattern in ((first, "a.*"), (second, "a.*"), (second, "b.*"), (first, "*.x")):
                assert await subscribe(ws, topic=pattern) == pattern
            assert await subscribe(first, topic="plain") == "plain"
            samples = await scrape(gateway.port)
            _, stats = await get_json(gateway.port, "/api/stats")
    assert value(samples, "patterns") == 3
    assert value(samples, "pattern_shapes") == 2
    assert stats["subscriptions"]["patterns"] == 3
    assert stats["subscriptions"]["pattern_shapes"] == 2


def test_within_quota_counts_only_shapes_the_instance_does_not_hold() -> None:
    index = PatternIndex()
    index.add("held.*")
    config = Config(max_pattern_shapes=2, max_patterns=3)
    # "b.*" has a held shape: only "*.c" is new, which fits; "x.y.*" would be a third.
    keys = ["b.*", "*.c", "x.y.*", "d.*", "e.*", "topic"]
    assert within_quota(config, index, keys) == ["b.*", "*.c", "d.*", "topic"]
