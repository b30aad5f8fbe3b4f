"""The connect hook: sessions the backend owns (opaque tokens), as a client sees them.

A real HTTP backend (tests/backend_server.py) answers at /connect; the gateway runs on real
sockets. Time-based cases run on virtual time that jumps only once real I/O is done.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing

from trio_gateway import Config, Gateway, open_gateway, serve
from trio_gateway.client.http import http_request
from trio_gateway.commands import Caller

from .backend_server import Backend, unused_port
from .conftest import with_settings
from .helpers import (
    API_KEY,
    SESSION_EXPIRED,
    TIMEOUT,
    closed_with,
    event,
    post,
    ready,
    receive_json,
    request,
    send_json,
    tcp_client,
)
from .redis_server import RedisServer

# What the test backend knows: token -> its answer.
SESSIONS: dict[str, tuple[int, Any]] = {
    "tok-alice": (
        200,
        {
            "user_id": "alice",
            "session_id": "S1",
            "info": {"name": "Alice", "servers": [{"id": "srv1"}]},
            "sub_topics": ["chat.**"],
            "commands": ["whoami"],
            "subscriptions": ["workspace:W1", "session:S1"],
        },
    ),
    "tok-bob": (200, {"user_id": "bob"}),
    "tok-carol": (
        200,
        {"user_id": "carol", "info": {"name": "Carol"}, "subscriptions": ["chat.lobby"]},
    ),
    "tok-revoked": (401, {"error": "session revoked"}),
    "tok-banned": (403, {}),
    "tok-broken": (500, b"oops"),
    "tok-nouser": (200, {"session_id": "S9"}),
    "tok-badsub": (200, {"user_id": "x", "subscriptions": ["user:x"]}),
}


class SessionBackend:
    def __init__(self) -> None:
        self.hold = trio.Event()
        self.held: set[str] = set()
        self.expiring: dict[str, float] = {}

    async def answer(self, path: str, body: Any) -> tuple[int, Any]:
        token = body["token"]
        if token in self.held:
            await self.hold.wait()
        if token in self.expiring:
            return 200, {"user_id": "eve", "expires_at": self.expiring[token]}
        return SESSIONS.get(token, (401, {}))


@pytest.fixture
async def hook(nursery: trio.Nursery) -> tuple[Backend, SessionBackend]:
    sessions = SessionBackend()
    backend: Backend = await nursery.start(Backend(sessions.answer).serve)
    return backend, sessions


def hooked(config: Config, backend: Backend, **changes: Any) -> Config:
    return with_settings(config, connect_url=backend.url("/connect"), **changes)


@pytest.fixture
async def gateway_with_hook(
    nursery: trio.Nursery, config: Config, hook: tuple[Backend, SessionBackend]
) -> Gateway:
    gateway: Gateway = await nursery.start(serve, hooked(config, hook[0]))
    return gateway


async def test_an_accepted_token_makes_the_identity_and_its_subscriptions_are_live_at_ready(
    gateway_with_hook: Gateway, hook: tuple[Backend, SessionBackend]
) -> None:
    backend, _ = hook
    port = gateway_with_hook.port
    with trio.fail_after(TIMEOUT):
        async with tcp_client(
            port, "tok-alice", extra_headers=[("Origin", "https://app.example")]
        ) as ws:
            greeting = await receive_json(ws)
            assert greeting == {
                "type": "ready",
                "client_id": greeting["client_id"],
                "heartbeat_interval": 30000,
                "user_id": "alice",
                "session_id": "S1",
                "info": {"name": "Alice", "servers": [{"id": "srv1"}]},
                "subscriptions": ["workspace:W1", "session:S1"],
            }
            # Bound before ready: the very next publication reaches the client.
            assert (await post(port, "/api/events", event("W1", kind="first")))[0] == 202
            assert (await receive_json(ws))["event"]["kind"] == "first"
            # The backend's grants apply to what the client asks itself.
            assert (await request(ws, type="subscribe", topic="chat.room"))["type"] == "subscribed"
            refused = await request(ws, type="subscribe", topic="other")
            assert refused["code"] == "forbidden"
    ((path, body),) = backend.requests
    assert path == "/connect"
    assert body == {
        "token": "tok-alice",
        "client_id": greeting["client_id"],
        "remote_addr": body["remote_addr"],
        "origin": "https://app.example",
    }
    assert body["remote_addr"].startswith("127.0.0.1:")


async def test_the_hook_is_asked_for_identify_and_cookie_tokens_but_not_keys_or_jwts(
    nursery: trio.Nursery, config: Config, hook: tuple[Backend, SessionBackend]
) -> None:
    backend, _ = hook
    settings = hooked(config, backend, auth_cookie="sid")
    gateway: Gateway = await nursery.start(serve, settings)
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, None) as ws:
            assert (await receive_json(ws))["type"] == "hello"
            await send_json(ws, {"type": "identify", "token": "tok-bob"})
            assert (await receive_json(ws))["user_id"] == "bob"
        async with tcp_client(gateway.port, None, extra_headers=[("Cookie", "sid=tok-bob")]) as ws:
            assert (await receive_json(ws))["user_id"] == "bob"
        async with tcp_client(gateway.port, API_KEY) as ws:
            assert "user_id" not in await receive_json(ws)
    assert [body["token"] for _, body in backend.requests] == ["tok-bob", "tok-bob"]


@pytest.mark.parametrize("token", ["tok-revoked", "tok-banned", "tok-unknown"])
async def test_a_refused_token_closes_4001(gateway_with_hook: Gateway, token: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway_with_hook.port, token) as ws:
            reason = await closed_with(ws)
            assert (reason.code, reason.reason) == (4001, "Unauthorized")


@pytest.mark.parametrize("token", ["tok-broken", "tok-nouser", "tok-badsub"])
async def test_a_backend_error_or_a_bad_answer_closes_1013(
    gateway_with_hook: Gateway, token: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway_with_hook.port, token) as ws:
            reason = await closed_with(ws)
            assert (reason.code, reason.reason) == (1013, "Try again later")


async def test_an_unreachable_backend_closes_1013(nursery: trio.Nursery, config: Config) -> None:
    port = await unused_port()
    settings = with_settings(config, connect_url=f"http://127.0.0.1:{port}/connect")
    gateway: Gateway = await nursery.start(serve, settings)
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, "tok-bob") as ws:
            assert (await closed_with(ws)).code == 1013
        # Keys never need the backend.
        async with tcp_client(gateway.port) as ws:
            await ready(ws)


async def test_a_slow_backend_closes_1013_after_connect_timeout_and_holds_no_one_else(
    io_clock: trio.testing.MockClock,
    gateway_with_hook: Gateway,
    hook: tuple[Backend, SessionBackend],
) -> None:
    backend, sessions = hook
    sessions.held.add("tok-bob")
    port = gateway_with_hook.port
    with trio.fail_after(TIMEOUT * 2):
        async with tcp_client(port, "tok-bob") as slow:
            await backend.wait_for(lambda backend: bool(backend.requests))
            started = trio.current_time()
            # Another client connects and is served while the hook call is held.
            async with tcp_client(port, "tok-alice") as other:
                assert (await receive_json(other))["user_id"] == "alice"
            reason = await closed_with(slow)
            assert (reason.code, reason.reason) == (1013, "Try again later")
            assert trio.current_time() - started == pytest.approx(5, abs=0.2)
    await backend.wait_for(lambda backend: bool(backend.cancelled))


async def test_expires_at_closes_4002_at_that_time(
    io_clock: trio.testing.MockClock,
    gateway_with_hook: Gateway,
    hook: tuple[Backend, SessionBackend],
) -> None:
    _, sessions = hook
    expires_at = time.time() + 3
    sessions.expiring["tok-eve"] = expires_at
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway_with_hook.port, "tok-eve") as ws:
            greeting = await receive_json(ws)
            assert greeting["expires_at"] == expires_at
            started = trio.current_time()
            assert await receive_json(ws) == SESSION_EXPIRED
            assert (await closed_with(ws)).code == 4002
            assert trio.current_time() - started == pytest.approx(3, abs=0.2)


async def test_an_expired_answer_is_refused(
    gateway_with_hook: Gateway, hook: tuple[Backend, SessionBackend]
) -> None:
    hook[1].expiring["tok-old"] = time.time() - 1
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway_with_hook.port, "tok-old") as ws:
            assert (await closed_with(ws)).code == 4001


async def test_the_hooks_commands_grant_what_the_connection_may_call(
    gateway_with_hook: Gateway,
) -> None:
    async def whoami(caller: Caller, payload: Any) -> tuple[str, Any]:
        return "me", {"user": caller.user_id, "session": caller.session_id, "info": caller.info}

    gateway_with_hook.commands.register("whoami", whoami)
    gateway_with_hook.commands.register("other", whoami)
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway_with_hook.port, "tok-alice") as ws:
            await ready(ws)
            assert await request(ws, command="whoami") == {
                "event": "me",
                "payload": {
                    "user": "alice",
                    "session": "S1",
                    "info": {"name": "Alice", "servers": [{"id": "srv1"}]},
                },
            }
            assert (await request(ws, command="other"))["payload"]["code"] == "forbidden"
        # A hook answer without `commands` grants none.
        async with tcp_client(gateway_with_hook.port, "tok-bob") as ws:
            await ready(ws)
            assert (await request(ws, command="whoami"))["payload"]["code"] == "forbidden"


async def test_deleting_a_session_closes_the_connections_bound_to_it(
    gateway_with_hook: Gateway,
) -> None:
    port = gateway_with_hook.port
    with trio.fail_after(TIMEOUT):
        async with tcp_client(port, "tok-alice") as bound, tcp_client(port) as watcher:
            await ready(bound)
            await ready(watcher)
            assert (await request(watcher, type="subscribe", session_id="S1"))["type"] == (
                "subscribed"
            )
            body = {"session_id": "S1", "workspace_id": "W1"}
            assert (await post(port, "/api/session-deleted", body))[0] == 202
            deleted = {"type": "session.deleted", "session_id": "S1"}
            assert await receive_json(bound) == deleted
            reason = await closed_with(bound)
            assert (reason.code, reason.reason) == (1000, "Session deleted")
            # A client that subscribed itself only hears of it, and stays.
            assert await receive_json(watcher) == deleted
            assert await request(watcher, type="ping") == {"type": "pong"}


async def test_expiring_a_session_ends_its_connections_on_every_instance(
    config: Config, hook: tuple[Backend, SessionBackend], redis_server: RedisServer
) -> None:
    shared = hooked(config, hook[0], redis_url=redis_server.url)
    with trio.fail_after(TIMEOUT * 2):
        async with (
            open_gateway(shared) as a,
            open_gateway(shared) as b,
            tcp_client(a.port, "tok-alice") as on_a,
            tcp_client(b.port, "tok-alice") as on_b,
            tcp_client(b.port, "tok-bob") as other,
        ):
            for ws in (on_a, on_b, other):
                await ready(ws)
            assert await post(b.port, "/api/sessions/S1/expire", {}) == (202, {"accepted": 1})
            for ws in (on_a, on_b):
                assert await receive_json(ws) == SESSION_EXPIRED
                reason = await closed_with(ws)
                assert (reason.code, reason.reason) == (4002, "Session expired")
            await b.broadcaster.send_to_user("bob", "still here")
            assert (await receive_json(other))["data"] == "still here"


async def test_several_websocket_paths(nursery: trio.Nursery, config: Config) -> None:
    settings = with_settings(config, ws_paths=("/ws", "/ws/gateway"))
    gateway: Gateway = await nursery.start(serve, settings)
    with trio.fail_after(TIMEOUT):
        for path in ("/ws", "/ws/gateway"):
            async with tcp_client(gateway.port, path=path) as ws:
                await ready(ws)
        for path, status in (("/ws", 426), ("/api/ws", 404)):
            answer, _, _ = await http_request("GET", f"http://127.0.0.1:{gateway.port}{path}")
            assert answer == status


async def test_a_backend_session_is_present_as_its_user_with_its_info(
    nursery: trio.Nursery, config: Config, hook: tuple[Backend, SessionBackend]
) -> None:
    settings = hooked(config, hook[0], presence_topics=("chat.*",))
    gateway: Gateway = await nursery.start(serve, settings)
    carol = {"user_id": "carol", "status": "online", "connections": 1, "info": {"name": "Carol"}}
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as observer:
            await ready(observer)
            assert (await request(observer, type="subscribe", topic="chat.lobby"))["type"] == (
                "subscribed"
            )
            assert (await receive_json(observer))["members"][0]["status"] == "online"
            async with tcp_client(gateway.port, "tok-carol") as ws:
                assert (await receive_json(ws))["subscriptions"] == ["chat.lobby"]
                # The hook subscribed it before ready; its state follows ready.
                state = await receive_json(ws)
                assert state["type"] == "presence.state"
                assert carol in state["members"]
                assert (await receive_json(observer))["joins"] == [carol]
