"""Presence under the autojump clock (memory broker): joins, leaves, graces, diffs, statuses,
at exact virtual times, as clients read them on the wire."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
import trio
import trio.testing
import trio_websocket

from trio_gateway import Config

from .conftest import with_settings
from .helpers import MemoryListener, memory_client, ready, receive_json, send_json, serve_in_memory

SECRET = "presence-test-secret-0123456789abcdef"
TOPIC = "chat.room1"


def token(sub: str, **claims: Any) -> str:
    body = {"sub": sub, "exp": time.time() + 3600, "sub_topics": ["chat.**"], **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


@pytest.fixture
def presence_config(config: Config) -> Config:
    # No keepalive pings in the way of what observers read.
    return with_settings(config, jwt_secret=SECRET, presence_topics=("chat.*",), ping_interval=3600)


def member(user_id: str, connections: int = 1, status: str = "online") -> dict[str, Any]:
    return {"user_id": user_id, "status": status, "connections": connections, "info": {}}


def diff(joins: Any = (), leaves: Any = (), updates: Any = ()) -> dict[str, Any]:
    return {
        "type": "presence.diff",
        "topic": TOPIC,
        "joins": list(joins),
        "leaves": [{"user_id": user_id} for user_id in leaves],
        "updates": list(updates),
    }


@asynccontextmanager
async def present(
    listener: MemoryListener, user: str, topic: str = TOPIC
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A connection of `user` subscribed to `topic`, its ack and presence.state read."""
    async with memory_client(listener, token(user)) as ws:
        await ready(ws)
        await send_json(ws, {"type": "subscribe", "topic": topic})
        assert (await receive_json(ws))["type"] == "subscribed"
        state = await receive_json(ws)
        assert state["type"] == "presence.state", state
        yield ws


async def test_subscriber_gets_state_with_itself_after_the_ack(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, presence_config)
    async with memory_client(listener, token("alice")) as ws:
        await ready(ws)
        await send_json(ws, {"type": "subscribe", "topic": TOPIC})
        assert await receive_json(ws) == {"type": "subscribed", "subscription": TOPIC}
        t0 = trio.current_time()
        assert await receive_json(ws) == {
            "type": "presence.state",
            "topic": TOPIC,
            "members": [member("alice")],
        }
        assert trio.current_time() - t0 == pytest.approx(0.1)


async def test_join_and_leave_after_grace_reach_observers(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, presence_config)
    async with present(listener, "alice") as observer:
        async with present(listener, "bob"):
            assert await receive_json(observer) == diff(joins=[member("bob")])
        t0 = trio.current_time()
        assert await receive_json(observer) == diff(leaves=["bob"])
        assert trio.current_time() - t0 == pytest.approx(5.1, abs=0.01)


async def test_reload_within_grace_is_neither_leave_nor_join(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, presence_config)
    async with present(listener, "alice") as observer:
        async with present(listener, "bob"):
            assert await receive_json(observer) == diff(joins=[member("bob")])
        await trio.sleep(4)
        async with present(listener, "bob"):
            with trio.move_on_after(30) as waited:
                await receive_json(observer)
            assert waited.cancelled_caught


async def test_tabs_count_as_connections_and_the_last_one_leaves(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, presence_config)
    async with present(listener, "alice") as observer:
        async with present(listener, "bob"):
            assert await receive_json(observer) == diff(joins=[member("bob")])
            async with present(listener, "bob"):
                assert await receive_json(observer) == diff(updates=[member("bob", 2)])
            assert await receive_json(observer) == diff(updates=[member("bob", 1)])
        assert await receive_json(observer) == diff(leaves=["bob"])


async def test_a_thousand_joins_are_a_handful_of_diffs(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, presence_config)
    async with present(listener, "alice") as observer, trio.open_nursery() as crowd:
        done = trio.Event()

        async def join(user: str, task_status: trio.TaskStatus[None]) -> None:
            async with memory_client(listener, token(user)) as ws:
                await ready(ws)
                await send_json(ws, {"type": "subscribe", "topic": TOPIC})
                task_status.started()
                await done.wait()

        for n in range(1000):
            await crowd.start(join, f"user{n:04}")
        joined: set[str] = set()
        frames = 0
        while len(joined) < 1000:
            frame = await receive_json(observer)
            frames += 1
            joined |= {entry["user_id"] for entry in frame["joins"]}
        assert frames <= 5
        done.set()


async def test_status_changes_are_updates_and_invisible_is_a_leave(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, presence_config)
    async with present(listener, "alice") as observer, present(listener, "bob") as bob:
        assert await receive_json(observer) == diff(joins=[member("bob")])
        # Bob's other tab, on another presence topic, gets the same status.
        async with present(listener, "bob", "chat.room2") as other:
            await send_json(bob, {"type": "presence", "status": "dnd"})
            assert await receive_json(bob) == {"type": "presence.set", "status": "dnd"}
            dnd = diff(updates=[member("bob", status="dnd")])
            assert await receive_json(observer) == dnd
            # Bob's own connections see the change like everyone else.
            assert await receive_json(bob) == dnd
            second = await receive_json(other)
            assert second["updates"] == [member("bob", status="dnd")]
        await send_json(bob, {"type": "presence", "status": "invisible"})
        assert await receive_json(bob) == {"type": "presence.set", "status": "invisible"}
        assert await receive_json(observer) == diff(leaves=["bob"])
        assert await receive_json(bob) == diff(leaves=["bob"])
        await send_json(bob, {"type": "presence", "status": "idle"})
        assert await receive_json(bob) == {"type": "presence.set", "status": "idle"}
        idle = diff(joins=[member("bob", status="idle")])
        assert await receive_json(observer) == idle
        assert await receive_json(bob) == idle


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"type": "presence", "status": "away"}, "Invalid presence: status must be one of"),
        ({"type": "presence", "status": 3}, "Invalid presence: status must be a string"),
        ({"type": "presence"}, "Invalid presence: status is required"),
        ({"type": "presence.get", "topic": "chat.*"}, "Invalid presence.get: wildcard"),
        ({"type": "presence.get", "topic": "news.today"}, "Forbidden: may not subscribe"),
        ({"type": "presence.get", "topic": "chat.a.b"}, "Invalid presence.get: presence is not"),
        ({"type": "presence.get", "topic": "chat..x"}, "Invalid presence.get: "),
        ({"type": "presence.get", "topic": "\ud800"}, "Invalid presence.get: topic must be"),
        ({"type": "presence.get"}, "Invalid presence.get: topic is required"),
        ({"type": "typing", "topic": TOPIC, "state": "paused"}, "Invalid typing: state must be"),
        ({"type": "typing", "topic": "news.today"}, "Forbidden: may not subscribe"),
        ({"type": "typing", "topic": "chat.**"}, "Invalid typing: wildcard"),
        ({"type": "typing", "topic": ["chat"]}, "Invalid typing: topic must be a string"),
    ],
)
async def test_bad_presence_and_typing_messages_get_an_error_and_the_connection_stays(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    presence_config: Config,
    message: dict[str, Any],
    error: str,
) -> None:
    _, listener = await serve_in_memory(nursery, presence_config)
    async with memory_client(listener, token("alice")) as ws:
        await ready(ws)
        await send_json(ws, message)
        reply = await receive_json(ws)
        assert reply["type"] == "error"
        assert reply["message"].startswith(error), reply
        await send_json(ws, {"type": "ping"})
        assert await receive_json(ws) == {"type": "pong"}


async def test_presence_get_answers_with_the_state_many_times_over(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    # A deliberate flood: beyond what the frame rate limit lets a client send.
    config = with_settings(presence_config, client_rate=0)
    _, listener = await serve_in_memory(nursery, config)
    async with present(listener, "bob"), memory_client(listener, token("alice")) as ws:
        await ready(ws)
        state = {"type": "presence.state", "topic": TOPIC, "members": [member("bob")]}
        for _ in range(10_000):
            await send_json(ws, {"type": "presence.get", "topic": TOPIC})
        for _ in range(10_000):
            assert await receive_json(ws) == state


async def test_api_key_clients_are_present_as_their_client_id(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, presence_config)
    async with present(listener, "alice") as observer, memory_client(listener) as ws:
        client_id = await ready(ws)
        await send_json(ws, {"type": "subscribe", "topic": TOPIC})
        assert (await receive_json(ws))["type"] == "subscribed"
        state = await receive_json(ws)
        # Members come ordered by user id; ULIDs sort before lowercase names.
        assert state["members"] == [member(client_id), member("alice")]
        assert await receive_json(observer) == diff(joins=[member(client_id)])


async def test_unsubscribing_leaves_after_the_grace_and_patterns_are_not_members(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, presence_config)
    async with present(listener, "alice") as observer, present(listener, "bob") as bob:
        assert await receive_json(observer) == diff(joins=[member("bob")])
        await send_json(bob, {"type": "subscribe", "topic": "chat.*"})
        assert await receive_json(bob) == {"type": "subscribed", "subscription": "chat.*"}
        await send_json(bob, {"type": "unsubscribe", "topic": TOPIC})
        assert await receive_json(bob) == {"type": "unsubscribed", "subscription": TOPIC}
        t0 = trio.current_time()
        assert await receive_json(observer) == diff(leaves=["bob"])
        assert trio.current_time() - t0 == pytest.approx(5.1, abs=0.01)


async def test_presence_messages_are_refused_when_presence_is_off(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, with_settings(presence_config, presence_topics=()))
    async with memory_client(listener, token("alice")) as ws:
        await ready(ws)
        await send_json(ws, {"type": "subscribe", "topic": TOPIC})
        assert (await receive_json(ws))["type"] == "subscribed"
        await send_json(ws, {"type": "presence", "status": "idle"})
        reply = await receive_json(ws)
        assert reply["message"] == "Invalid presence: presence is not enabled on this gateway"
        await send_json(ws, {"type": "presence.get", "topic": TOPIC})
        reply = await receive_json(ws)
        assert reply["message"].startswith("Invalid presence.get: presence is not tracked")


def typing(user_id: str, state: str = "start") -> dict[str, Any]:
    return {"type": "typing", "topic": TOPIC, "user_id": user_id, "state": state}


async def quiet(ws: trio_websocket.WebSocketConnection) -> None:
    """Nothing is waiting on `ws`: the answer to a query is the next frame it reads."""
    await send_json(ws, {"type": "presence.get", "topic": TOPIC})
    assert (await receive_json(ws))["type"] == "presence.state"


@asynccontextmanager
async def watched(
    listener: MemoryListener,
) -> AsyncIterator[tuple[trio_websocket.WebSocketConnection, trio_websocket.WebSocketConnection]]:
    """Bob, then Alice, present on TOPIC, with Alice's join read on Bob's side."""
    async with present(listener, "bob") as bob, present(listener, "alice") as alice:
        assert await receive_json(bob) == diff(joins=[member("alice")])
        yield bob, alice


async def test_a_thousand_starts_are_one_broadcast_that_lapses_a_ttl_after_the_last(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    # 1,000 frames a second: a flood the frame rate limit would close.
    config = with_settings(presence_config, client_rate=0)
    _, listener = await serve_in_memory(nursery, config)
    async with watched(listener) as (bob, alice), present(listener, "alice") as tab:
        assert await receive_json(bob) == diff(updates=[member("alice", 2)])
        assert await receive_json(alice) == diff(updates=[member("alice", 2)])
        for _ in range(1000):
            await send_json(alice, {"type": "typing", "topic": TOPIC})
            await trio.sleep(0.001)
        last = trio.current_time()
        assert await receive_json(bob) == typing("alice")
        assert await receive_json(bob) == typing("alice", "stop")
        assert trio.current_time() - last == pytest.approx(10, abs=0.01)
        # Neither of the typist's own connections heard it, nor got an error back.
        await quiet(alice)
        await quiet(tab)
        await quiet(bob)


async def test_starting_again_keeps_the_indicator_alive(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, presence_config)
    async with watched(listener) as (bob, alice):
        t0 = trio.current_time()
        for _ in range(4):
            await send_json(alice, {"type": "typing", "topic": TOPIC})
            await trio.sleep(8)
        assert await receive_json(bob) == typing("alice")
        assert await receive_json(bob) == typing("alice", "stop")
        assert trio.current_time() - t0 == pytest.approx(3 * 8 + 10, abs=0.01)
        await quiet(bob)


async def test_an_explicit_stop_ends_it_at_once_and_a_new_start_is_announced(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, presence_config)
    async with watched(listener) as (bob, alice):
        await send_json(alice, {"type": "typing", "topic": TOPIC})
        assert await receive_json(bob) == typing("alice")
        await trio.sleep(3)
        t0 = trio.current_time()
        await send_json(alice, {"type": "typing", "topic": TOPIC, "state": "stop"})
        assert await receive_json(bob) == typing("alice", "stop")
        assert trio.current_time() == pytest.approx(t0, abs=0.01)
        # A second stop has nothing left to end.
        await send_json(alice, {"type": "typing", "topic": TOPIC, "state": "stop"})
        await send_json(alice, {"type": "typing", "topic": TOPIC})
        assert await receive_json(bob) == typing("alice")
        await quiet(alice)


async def test_the_typing_connection_going_stops_it_without_waiting(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, presence_config)
    async with present(listener, "bob") as bob:
        async with present(listener, "alice") as alice:
            assert await receive_json(bob) == diff(joins=[member("alice")])
            await send_json(alice, {"type": "typing", "topic": TOPIC})
            assert await receive_json(bob) == typing("alice")
        t0 = trio.current_time()
        assert await receive_json(bob) == typing("alice", "stop")
        assert trio.current_time() == pytest.approx(t0, abs=0.01)
        # Presence keeps its grace; typing does not.
        assert await receive_json(bob) == diff(leaves=["alice"])


async def test_typing_needs_no_subscription_or_presence_topic(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, presence_config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, with_settings(presence_config, presence_topics=()))
    async with (
        memory_client(listener, token("bob")) as bob,
        memory_client(listener, token("alice")) as alice,
    ):
        await ready(bob)
        await ready(alice)
        await send_json(bob, {"type": "subscribe", "topic": TOPIC})
        assert (await receive_json(bob))["type"] == "subscribed"
        await send_json(alice, {"type": "typing", "topic": TOPIC})
        assert await receive_json(bob) == typing("alice")
