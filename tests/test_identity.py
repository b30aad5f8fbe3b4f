"""Identity and access over the wire: JWT sources, identify, expiry, refresh, permissions,
client publish, per-user delivery, origins and reject-at-upgrade.

Tokens are minted here with pyjwt (HS256 and the test secret). Expiry and identify timeouts
run under the autojump clock over memory streams; the rest on real sockets.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import trio
import trio.testing

from trio_gateway import Config, Gateway, open_gateway, serve

from .conftest import with_settings
from .helpers import (
    API_KEY,
    SESSION_EXPIRED,
    TIMEOUT,
    MemoryListener,
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

SECRET = "jwt-test-secret-0123456789abcdef"


def token(sub: str = "alice", *, ttl: float = 3600, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": time.time() + ttl, **claims}, SECRET, algorithm="HS256")


@pytest.fixture
def jwt_config(config: Config) -> Config:
    return with_settings(config, jwt_secret=SECRET, auth_cookie="gw_token")


async def upgrade_status(gateway: Gateway, headers: dict[str, str], target: str) -> int:
    """The status line's code of an upgrade request (a 101 has no body to wait for)."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: 127.0.0.1:{gateway.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    async with await trio.open_tcp_stream("127.0.0.1", gateway.port) as stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        received = b""
        while b"\r\n" not in received:
            chunk = await stream.receive_some()
            assert chunk, "connection closed before a status line"
            received += chunk
    return int(received.split(b" ", 2)[1])


# --- credentials at the upgrade -------------------------------------------------------------


@pytest.mark.parametrize("source", ["query", "bearer", "cookie"])
async def test_every_token_source_identifies_the_user(jwt_config: Config, source: str) -> None:
    credential = token(sub_topics=["**"])
    query: str | None = credential if source == "query" else None
    headers = {
        "query": [],
        "bearer": [(b"authorization", f"Bearer {credential}".encode())],
        "cookie": [(b"cookie", f"theme=dark; gw_token={credential}".encode())],
    }[source]
    with trio.fail_after(TIMEOUT):
        async with (
            open_gateway(jwt_config) as gateway,
            tcp_client(gateway.port, token=query, extra_headers=headers) as ws,
        ):
            greeting = await receive_json(ws)
            assert greeting["type"] == "ready"
            assert greeting["user_id"] == "alice"
            assert abs(greeting["expires_at"] - (time.time() + 3600)) < 60


@pytest.mark.parametrize(
    "bad",
    [
        token(ttl=-60),
        token(nbf=time.time() + 600),
        jwt.encode({"sub": "eve", "exp": time.time() + 60}, "wrong-secret-0123456789abcdefghij"),
    ],
)
async def test_bad_tokens_are_closed_4001(jwt_config: Config, bad: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_gateway(jwt_config) as gateway, tcp_client(gateway.port, bad) as ws:
            reason = await closed_with(ws)
            assert (reason.code, reason.reason) == (4001, "Unauthorized")


async def test_reject_at_upgrade_answers_401(jwt_config: Config) -> None:
    strict = with_settings(jwt_config, reject_at_upgrade=True)
    with trio.fail_after(TIMEOUT):
        async with open_gateway(strict) as gateway:
            assert await upgrade_status(gateway, {}, "/api/ws?token=nope") == 401
            assert await upgrade_status(gateway, {}, f"/api/ws?token={token()}") == 101


async def test_other_origins_get_403(jwt_config: Config) -> None:
    guarded = with_settings(jwt_config, allowed_origins=("https://app.example",))
    with trio.fail_after(TIMEOUT):
        async with open_gateway(guarded) as gateway:
            target = f"/api/ws?token={API_KEY}"
            assert await upgrade_status(gateway, {"origin": "https://evil.example"}, target) == 403
            assert await upgrade_status(gateway, {"origin": "https://app.example"}, target) == 101
            # No Origin: not a browser, so not a hijacking risk.
            assert await upgrade_status(gateway, {}, target) == 101


# --- identify ----------------------------------------------------------------------------------


async def start(nursery: trio.Nursery, config: Config) -> MemoryListener:
    _, listener = await serve_in_memory(nursery, config)
    return listener


async def test_identify_after_hello(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, jwt_config: Config
) -> None:
    listener = await start(nursery, jwt_config)
    async with memory_client(listener, token=None) as ws:
        assert await receive_json(ws) == {
            "type": "hello",
            "heartbeat_interval": 30000,
            "identify_timeout": 5000,
        }
        # Before identify, nothing else is acted on.
        assert await request(ws, type="subscribe", scope="all") == {
            "type": "error",
            "message": "Not identified: send identify first",
            "code": "unauthorized",
        }
        await trio.sleep(4)
        ready_frame = await request(ws, type="identify", token=token())
        assert ready_frame["type"] == "ready"
        assert ready_frame["user_id"] == "alice"


async def test_no_identify_in_time_closes_4001(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, jwt_config: Config
) -> None:
    listener = await start(nursery, jwt_config)
    async with memory_client(listener, token=None) as ws:
        assert (await receive_json(ws))["type"] == "hello"
        started = trio.current_time()
        reason = await closed_with(ws)
        assert (reason.code, reason.reason) == (4001, "Unauthorized")
        assert trio.current_time() - started == pytest.approx(5, abs=0.01)


# --- expiry and refresh ------------------------------------------------------------------------


async def test_session_expires_at_exp_with_4002(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, jwt_config: Config
) -> None:
    quiet = with_settings(jwt_config, ping_interval=10_000.0)
    listener = await start(nursery, quiet)
    async with memory_client(listener, token=token(ttl=120)) as ws:
        await ready(ws)
        started = trio.current_time()
        assert await receive_json(ws) == SESSION_EXPIRED
        reason = await closed_with(ws)
        assert (reason.code, reason.reason) == (4002, "Session expired")
        assert trio.current_time() - started == pytest.approx(120, abs=1)


async def test_refresh_extends_and_another_user_is_refused(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, jwt_config: Config
) -> None:
    quiet = with_settings(jwt_config, ping_interval=10_000.0)
    listener = await start(nursery, quiet)
    async with memory_client(listener, token=token(ttl=120)) as ws:
        await ready(ws)
        started = trio.current_time()
        refused = await request(ws, type="refresh", token=token("mallory", ttl=1000))
        assert refused["type"] == "error"
        assert refused["code"] == "forbidden"
        await trio.sleep(100)
        refreshed = await request(ws, type="refresh", token=token(ttl=300))
        assert refreshed["type"] == "refreshed"
        assert await receive_json(ws) == SESSION_EXPIRED
        # Refreshed at t=100 for 300 s more: the old 120 s expiry is gone.
        assert trio.current_time() - started == pytest.approx(400, abs=1)


# --- permissions and client publish -------------------------------------------------------------


async def test_grants_decide_subscribes_and_publishes(jwt_config: Config) -> None:
    grants = token(sub_topics=["chat.**", "workspace.W1"], pub_topics=["chat.room.*"])
    with trio.fail_after(TIMEOUT):
        async with (
            open_gateway(jwt_config) as gateway,
            tcp_client(gateway.port, grants) as ws,
            tcp_client(gateway.port) as watcher,
        ):
            await ready(ws)
            await ready(watcher)
            assert (await request(watcher, type="subscribe", topic="chat.room.1"))["type"] == (
                "subscribed"
            )
            for forbidden in ({"scope": "all"}, {"workspace_id": "W2"}, {"topic": "news"}):
                reply = await request(ws, type="subscribe", **forbidden)
                assert reply["type"] == "error"
                assert reply["code"] == "forbidden"
            assert (await request(ws, type="subscribe", workspace_id="W1"))["type"] == "subscribed"

            reply = await request(ws, type="publish", topic="chat.lobby", data=1)
            assert reply["code"] == "forbidden"
            assert await request(ws, type="publish", topic="chat.room.1", data={"t": "hi"}) == {
                "type": "published",
                "topic": "chat.room.1",
                "offset": 1,
            }
            # Stamped with the publisher's user id by the server.
            assert await receive_json(watcher) == {
                "type": "message",
                "topic": "chat.room.1",
                "data": {"t": "hi"},
                "user_id": "alice",
                "offset": 1,
            }


async def test_a_client_cannot_forge_the_user_id(jwt_config: Config) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            open_gateway(jwt_config) as gateway,
            tcp_client(gateway.port, token(sub_topics=["**"], pub_topics=["**"])) as ws,
        ):
            await ready(ws)
            await request(ws, type="subscribe", topic="t")
            await send_json(ws, {"type": "publish", "topic": "t", "data": 1, "user_id": "admin"})
            # Its own copy may come before the ack: the ack waits for the broker, which may
            # have delivered already.
            frames = {frame["type"]: frame for frame in [await receive_json(ws) for _ in range(2)]}
            assert frames["published"]["offset"] == 1
            assert frames["message"]["user_id"] == "alice"


# --- per user, across instances ---------------------------------------------------------------


async def test_user_messages_and_disconnects_reach_every_instance(
    jwt_config: Config, redis_server: RedisServer
) -> None:
    shared = with_settings(jwt_config, redis_url=redis_server.url)
    with trio.fail_after(TIMEOUT * 2):
        async with (
            open_gateway(shared) as a,
            open_gateway(shared) as b,
            raw_client(a.port, token("bob")) as on_a,
            raw_client(b.port, token("bob")) as on_b,
            raw_client(b.port, token("carol")) as other,
        ):
            for client in (on_a, on_b, other):
                await ready(client.ws)
            assert await post(a.port, "/api/users/bob/messages", {"data": {"n": 1}}) == (
                202,
                {"accepted": 1},
            )
            for client in (on_a, on_b):
                assert await receive_json(client.ws) == {"type": "user.message", "data": {"n": 1}}
            await b.broadcaster.send_to_user("carol", "marker")
            # Carol's next frame is her own message: Bob's never reached her.
            assert (await receive_json(other.ws))["data"] == "marker"

            assert (await post(b.port, "/api/users/bob/disconnect", {}))[0] == 202
            for client in (on_a, on_b):
                assert await receive_json(client.ws) == SESSION_EXPIRED
                assert (await closed_with(client.ws)).code == 4002
            await b.broadcaster.send_to_user("carol", "still here")
            assert (await receive_json(other.ws))["data"] == "still here"


async def test_exclude_user_and_client_on_publish(jwt_config: Config) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            open_gateway(jwt_config) as gateway,
            tcp_client(gateway.port, token("dave", sub_topics=["**"])) as dave,
            tcp_client(gateway.port, token("erin", sub_topics=["**"])) as erin,
        ):
            dave_id = (await receive_json(dave))["client_id"]
            await ready(erin)
            for ws in (dave, erin):
                await request(ws, type="subscribe", topic="room")
            await gateway.broadcaster.publish("room", 1, exclude_user_id="dave")
            await post(
                gateway.port,
                "/api/publish",
                {"topic": "room", "data": 2, "exclude_client_id": dave_id},
            )
            await gateway.broadcaster.publish("room", 3)
            assert [(await receive_json(erin))["data"] for _ in range(3)] == [1, 2, 3]
            assert (await receive_json(dave))["data"] == 3


@pytest.mark.parametrize(
    "path",
    [
        "/api/users//messages",
        "/api/users/bob/unknown",
        "/api/users/a/b/messages",
        "/api/users/%ff/messages",
        "/api/users/bob",
    ],
)
async def test_malformed_user_paths_are_404(gateway: Gateway, path: str) -> None:
    with trio.fail_after(TIMEOUT):
        assert (await post(gateway.port, path, {"data": 1}))[0] == 404


async def test_user_ids_are_percent_decoded(jwt_config: Config) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            open_gateway(jwt_config) as gateway,
            tcp_client(gateway.port, token("ann@example.com")) as ws,
        ):
            await ready(ws)
            status, _ = await post(
                gateway.port, "/api/users/ann%40example.com/messages", {"data": 7}
            )
            assert status == 202
            assert await receive_json(ws) == {"type": "user.message", "data": 7}


async def test_a_token_with_a_lone_surrogate_is_refused_not_a_crash(
    nursery: trio.Nursery, jwt_config: Config
) -> None:
    # JSON may carry a lone surrogate; neither the key check nor the JWT library may see it
    # (a fuzzer found these closing the connection 1011).
    gateway: Gateway = await nursery.start(serve, jwt_config)
    refused = {
        "type": "error",
        "message": "Refresh refused: invalid credentials",
        "code": "unauthorized",
    }
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            for token in ("\ud800", "a.\ud800.b"):
                assert await request(ws, type="refresh", token=token) == refused
        async with tcp_client(gateway.port, token=None) as ws:
            assert (await receive_json(ws))["type"] == "hello"
            await send_json(ws, {"type": "identify", "token": "a.\ud800.b"})
            reason = await closed_with(ws)
    assert (reason.code, reason.reason) == (4001, "Unauthorized")
