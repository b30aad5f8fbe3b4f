"""Presence and typing across instances on a real redis-server: tabs on two instances, an
instance killed with SIGKILL, typing de-duplicated. Real sockets and real time (Redis keeps
the clock of leases and typing), with short TTLs; waits are for frames, bounded by
`fail_after`, and a window without frames is how "no leave" is asserted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_websocket

from trio_gateway import Config, Gateway, open_gateway
from trio_gateway.client.http import http_request

from .conftest import with_settings
from .helpers import API_KEY, ready, receive_json, send_json, tcp_client
from .redis_server import RedisServer
from .test_presence import SECRET, TOPIC, diff, member, token
from .test_redis_broker import eventually

TIMEOUT = 15
LISTENING = re.compile(r"^trio-gateway listening on ws://127\.0\.0\.1:(\d+)/api/ws ")
SETTINGS: dict[str, Any] = {
    "presence_grace": 0.3,
    "presence_ttl": 1.5,
    "typing_ttl": 0.5,
    "presence_diff_interval": 0.05,
}


@pytest.fixture
def redis_config(config: Config, redis_server: RedisServer) -> Config:
    return with_settings(
        config,
        redis_url=redis_server.url,
        jwt_secret=SECRET,
        presence_topics=("chat.*",),
        ping_interval=3600,
        **SETTINGS,
    )


@asynccontextmanager
async def present(
    gateway: Gateway | int, user: str
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    port = gateway if isinstance(gateway, int) else gateway.port
    async with tcp_client(port, token(user)) as ws:
        await ready(ws)
        await send_json(ws, {"type": "subscribe", "topic": TOPIC})
        assert (await receive_json(ws))["type"] == "subscribed"
        state = await receive_json(ws)
        assert state["type"] == "presence.state", state
        yield ws


@asynccontextmanager
async def two_gateways(config: Config) -> AsyncIterator[tuple[Gateway, Gateway]]:
    with trio.fail_after(TIMEOUT):
        async with open_gateway(config) as a, open_gateway(config) as b:
            yield a, b


async def get(gateway: Gateway, path: str) -> tuple[int, Any]:
    status, _, body = await http_request(
        "GET",
        f"http://127.0.0.1:{gateway.port}{path}",
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    return status, json.loads(body)


async def nothing_within(ws: trio_websocket.WebSocketConnection, seconds: float) -> None:
    with trio.move_on_after(seconds) as window:
        frame = await receive_json(ws)
        raise AssertionError(f"unexpected frame: {frame}")
    assert window.cancelled_caught


async def test_a_user_with_a_tab_on_each_instance_joins_once_and_leaves_once(
    redis_config: Config,
) -> None:
    async with two_gateways(redis_config) as (a, b), present(a, "carol") as observer:
        async with present(a, "alice"):
            assert await receive_json(observer) == diff(joins=[member("alice")])
            async with present(b, "alice"):
                assert await receive_json(observer) == diff(updates=[member("alice", 2)])
            assert await receive_json(observer) == diff(updates=[member("alice", 1)])
            await nothing_within(observer, 1)
        start = trio.current_time()
        assert await receive_json(observer) == diff(leaves=["alice"])
        assert trio.current_time() - start >= 0.3
        await nothing_within(observer, 1)


async def test_an_observer_on_another_instance_sees_the_same(redis_config: Config) -> None:
    async with two_gateways(redis_config) as (a, b), present(b, "carol") as observer:
        async with present(a, "alice"):
            assert await receive_json(observer) == diff(joins=[member("alice")])
        assert await receive_json(observer) == diff(leaves=["alice"])


async def frames_within(ws: trio_websocket.WebSocketConnection, seconds: float) -> list[Any]:
    frames = []
    with trio.move_on_after(seconds):
        while True:
            frames.append(await receive_json(ws))
    return frames


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRIO_GATEWAY_")}


async def test_members_of_a_killed_instance_leave_within_the_ttl_once(
    redis_config: Config, redis_server: RedisServer
) -> None:
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in SETTINGS.items()]
    command = [
        sys.executable,
        "-m",
        "trio_gateway",
        "serve",
        "--port=0",
        f"--redis-url={redis_server.url}",
        f"--jwt-secret={SECRET}",
        "--presence-topic=chat.*",
        "--api-key=kill-test-key",
        *flags,
    ]
    process = await trio.lowlevel.open_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    try:
        with trio.fail_after(TIMEOUT):
            assert process.stderr is not None
            seen = b""
            while not (match := re.search(rb"listening on ws://127\.0\.0\.1:(\d+)/", seen)):
                seen += await process.stderr.receive_some()
            port = int(match[1])
            async with (
                open_gateway(redis_config) as a,
                present(a, "carol") as observer,
                present(port, "alice"),
                present(port, "bob"),
            ):
                joined: set[str] = set()
                while len(joined) < 2:
                    frame = await receive_json(observer)
                    joined |= {entry["user_id"] for entry in frame["joins"]}
                os.kill(process.pid, signal.SIGKILL)
                killed = trio.current_time()
                left: list[str] = []
                while len(left) < 2:
                    frame = await receive_json(observer)
                    assert frame["joins"] == frame["updates"] == [], frame
                    left += [entry["user_id"] for entry in frame["leaves"]]
                # Within the TTL and one sweep (half a TTL here), once each.
                assert trio.current_time() - killed <= 1.5 + 0.5 + 0.5
                assert sorted(left) == ["alice", "bob"]
                await nothing_within(observer, 1)
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            if process.stderr is not None:
                await trio.aclose_forcefully(process.stderr)


async def test_typing_is_announced_once_across_instances(redis_config: Config) -> None:
    async with (
        two_gateways(redis_config) as (a, b),
        present(a, "carol") as observer,
        present(a, "alice") as tab1,
    ):
        assert (await receive_json(observer))["joins"]
        async with present(b, "alice") as tab2:
            assert (await receive_json(observer))["updates"]
            typing = {"type": "typing", "topic": TOPIC}
            await send_json(tab1, typing)
            await send_json(tab2, typing)
            start = {**typing, "user_id": "alice", "state": "start"}
            assert await receive_json(observer) == start
            await send_json(tab2, {**typing, "state": "stop"})
            assert await receive_json(observer) == {**start, "state": "stop"}
            await nothing_within(observer, 0.3)
            # Started again and left to lapse: one stop, a typing_ttl later.
            await send_json(tab1, typing)
            assert await receive_json(observer) == start
            began = trio.current_time()
            assert await receive_json(observer) == {**start, "state": "stop"}
            assert 0.4 <= trio.current_time() - began <= 1.5
        # Never back to the typing user's own connections.
        frames = await frames_within(tab1, 0.2)
        assert frames
        assert all(frame["type"] == "presence.diff" for frame in frames)


async def test_a_redis_restart_makes_nobody_leave_and_presence_is_written_again(
    redis_config: Config, redis_server: RedisServer
) -> None:
    async with two_gateways(redis_config) as (a, b), present(b, "carol") as observer:
        async with present(a, "alice"):
            assert await receive_json(observer) == diff(joins=[member("alice")])
            redis_server.kill()
            redis_server.start()

            # Empty after the restart: each instance writes its members again, and observers
            # re-read only once every instance has had the time to.
            async def written_again() -> bool:
                status, alice = await get(b, "/api/users/alice/presence")
                return status == 200 and alice["topics"] == [TOPIC]

            await eventually(written_again)
            await nothing_within(observer, 1)
        assert await receive_json(observer) == diff(leaves=["alice"])


async def test_http_queries_answer_for_every_instance(redis_config: Config) -> None:
    async with two_gateways(redis_config) as (a, b), present(a, "alice") as tab:
        await send_json(tab, {"type": "presence", "status": "dnd"})
        assert await receive_json(tab) == {"type": "presence.set", "status": "dnd"}
        async with present(b, "carol"):
            assert await get(b, f"/api/presence/{TOPIC}") == (
                200,
                {"topic": TOPIC, "members": [member("alice", status="dnd"), member("carol")]},
            )
            assert await get(b, "/api/users/alice/presence") == (
                200,
                {"user_id": "alice", "status": "dnd", "topics": [TOPIC]},
            )
        assert await get(a, "/api/users/nobody/presence") == (
            200,
            {"user_id": "nobody", "status": "offline", "topics": []},
        )
