"""trio_gateway.client against a real gateway on a real socket.

Every test is bounded by `trio.fail_after` and waits on what a client sees (a message, an
`on_connect` call, a close), never on a sleep. Reconnect tests inject the backoff `sleep` to
observe each delay and decide when the client may go on.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from trio_gateway import Config, Gateway, serve
from trio_gateway.client import (
    ConnectFailed,
    Disconnected,
    GatewayClient,
    SubscriptionError,
    Unauthorized,
    backoff_delay,
    open_client,
    websocket_url,
)
from trio_gateway.client.http import ApiError, health, http_request, publish_events
from trio_gateway.protocol.errors import SLOW_CONSUMER
from trio_gateway.protocol.frames import WS_PING_FRAME

from .conftest import with_settings
from .helpers import API_KEY, event, ready, tcp_client

TIMEOUT = 10


def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def client_for(gateway: Gateway, **kwargs: Any) -> AbstractAsyncContextManager[GatewayClient]:
    return open_client(websocket_url(base_url(gateway.port)), API_KEY, **kwargs)


def wire(data: dict[str, Any]) -> dict[str, Any]:
    """An event message as a client receives it, without its offsets."""
    return {"type": "event", "event": data}


def bare(message: dict[str, Any]) -> dict[str, Any]:
    """`message` without the offsets the server adds (`offset`, `offsets`)."""
    return {key: value for key, value in message.items() if key not in ("offset", "offsets")}


async def received(client: GatewayClient) -> dict[str, Any]:
    """The client's next message, without its offsets."""
    return bare(await anext(client))


class Connections:
    """`on_connect` as a channel: each connection's client id, in order."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[str](100)

    def __call__(self, client_id: str) -> None:
        self._send.send_nowait(client_id)

    async def next(self) -> str:
        return await self._receive.receive()

    def count(self) -> int:
        return self._receive.statistics().current_buffer_used


class Backoff:
    """An injected backoff sleep: reports each delay, then waits for the test's go-ahead."""

    def __init__(self) -> None:
        self._delays_send, self._delays = trio.open_memory_channel[float](100)
        self._go_send, self._go = trio.open_memory_channel[None](100)

    async def __call__(self, delay: float) -> None:
        self._delays_send.send_nowait(delay)
        await self._go.receive()

    async def next_delay(self) -> float:
        return await self._delays.receive()

    def go(self) -> None:
        self._go_send.send_nowait(None)


async def no_sleep(delay: float) -> None:
    await trio.lowlevel.checkpoint()


@asynccontextmanager
async def own_gateway(config: Config) -> AsyncIterator[tuple[Gateway, trio.Event]]:
    """A gateway this test can stop (`shutdown`) and then restart on the same port."""
    stopped = trio.Event()
    async with trio.open_nursery() as nursery:

        async def run(task_status: trio.TaskStatus[Gateway]) -> None:
            try:
                await serve(config, task_status=task_status)
            finally:
                stopped.set()

        gateway: Gateway = await nursery.start(run)
        try:
            yield gateway, stopped
        finally:
            nursery.cancel_scope.cancel()


# --- subscribe and receive ------------------------------------------------------------------


async def test_subscribe_and_receive_broadcasts(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(gateway, subscriptions=["workspace:w1"]) as client:
            assert (await client.subscribe(session_id="s9")).key == "session:s9"
            assert client.subscriptions == {"workspace:w1", "session:s9"}
            gateway.broadcaster.broadcast_event(event("w1", n=1))
            gateway.broadcaster.broadcast_event(event("other", n=2))
            gateway.broadcaster.broadcast_event(event("other", "s9", n=3))
            gateway.broadcaster.broadcast_session_update("s9", "other", "ended")
            assert await received(client) == wire(event("w1", n=1))
            assert await received(client) == wire(event("other", "s9", n=3))
            assert await received(client) == {
                "type": "session.update",
                "session_id": "s9",
                "lifecycle": "ended",
            }


async def test_unsubscribe_stops_delivery(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(gateway) as client:
            await client.subscribe("all")
            await client.subscribe(workspace_id="w1")
            await client.unsubscribe("all")
            assert client.subscriptions == {"workspace:w1"}
            gateway.broadcaster.broadcast_event(event("other", n=1))
            gateway.broadcaster.broadcast_event(event("w1", n=2))
            assert await received(client) == wire(event("w1", n=2))
            await client.unsubscribe()
            assert client.subscriptions == frozenset()
            await client.subscribe(workspace_id="w2")
            gateway.broadcaster.broadcast_event(event("w1", n=3))
            gateway.broadcaster.broadcast_event(event("w2", n=4))
            assert await received(client) == wire(event("w2", n=4))


async def test_error_reply_raises_subscription_error(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(gateway) as client:
            with pytest.raises(SubscriptionError, match='scope must be "all"'):
                await client.subscribe("everything")
            with pytest.raises(SubscriptionError, match="must not be empty"):
                await client.subscribe(workspace_id="")
            with pytest.raises(ValueError, match="exactly one"):
                await client.subscribe("all", workspace_id="w1")
            # The connection is still in step: the next ack answers the next request.
            assert (await client.subscribe(workspace_id="w1")).key == "workspace:w1"
            assert client.subscriptions == {"workspace:w1"}


async def test_concurrent_requests_are_matched_to_their_replies(gateway: Gateway) -> None:
    keys: list[str] = []
    failures: list[str] = []

    async def subscribe(client: GatewayClient, workspace_id: str) -> None:
        try:
            keys.append((await client.subscribe(workspace_id=workspace_id)).key)
        except SubscriptionError as exc:
            failures.append(str(exc))

    with trio.fail_after(TIMEOUT):
        async with client_for(gateway) as client, trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(subscribe, client, f"w{n}" if n % 5 else "")
    assert sorted(keys) == sorted(f"workspace:w{n}" for n in range(20) if n % 5)
    assert failures == ["Invalid subscribe: workspace_id must not be empty"] * 4


# --- keepalive ------------------------------------------------------------------------------


async def count_pings_until_closed(
    ws: trio_websocket.WebSocketConnection,
) -> tuple[int, trio_websocket.CloseReason | None]:
    pings = 0
    try:
        while True:
            pings += json.loads(await ws.get_message()) == {"type": "ping"}
    except trio_websocket.ConnectionClosed as exc:
        return pings, exc.reason


class TestKeepalive:
    @pytest.fixture
    def config(self, config: Config) -> Config:
        # The silent peer below is a trio-websocket client, which answers WebSocket pings.
        return with_settings(config, ping_interval=0.2, pong_timeout=0.2, ws_ping=False)

    async def test_client_answers_pings_and_survives(self, gateway: Gateway) -> None:
        connections = Connections()
        with trio.fail_after(TIMEOUT):
            async with client_for(
                gateway, subscriptions=["workspace:w1"], on_connect=connections
            ) as client:
                client_id = await connections.next()
                # A client that never answers is the clock: the server reaps it after
                # ping_interval + pong_timeout of silence, i.e. at its third ping cycle.
                async with tcp_client(gateway.port) as silent:
                    await ready(silent)
                    pings, reason = await count_pings_until_closed(silent)
                assert reason is not None
                assert (reason.code, reason.reason) == (1008, "Pong timeout")
                # Two pings at the least; one when the machine is so loaded that two cycles
                # (on the real clock here, 0.2 s apart) fall together.
                assert pings >= 1
                # Our client lived through the same cycles on its first connection.
                assert connections.count() == 0
                assert client.client_id == client_id
                assert gateway.hub.clients[client_id].last_seen > (
                    gateway.hub.clients[client_id].connected_at
                )
                gateway.broadcaster.broadcast_event(event("w1", n=1))
                assert await received(client) == wire(event("w1", n=1))


async def test_silent_server_is_replaced() -> None:
    """No frame for heartbeat_interval + heartbeat_grace: the client reconnects."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        greeting = {"type": "ready", "client_id": "silent", "heartbeat_interval": 50}
        await ws.send_message(json.dumps(greeting))
        # Never ping; read until the client gives up on us.
        with suppress(trio_websocket.ConnectionClosed):
            while True:
                await ws.get_message()

    connections = Connections()
    accepted = 0

    async def counting_handler(request: trio_websocket.WebSocketRequest) -> None:
        nonlocal accepted
        accepted += 1
        await handler(request)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server: trio_websocket.WebSocketServer = await nursery.start(
                partial(
                    trio_websocket.serve_websocket,
                    counting_handler,
                    "127.0.0.1",
                    0,
                    ssl_context=None,
                )
            )
            url = f"ws://127.0.0.1:{server.port}/api/ws"
            async with open_client(
                url, API_KEY, heartbeat_grace=0.05, on_connect=connections, sleep=no_sleep
            ):
                # The first connection went silent; the client gave up on it and came back.
                assert [await connections.next(), await connections.next()] == ["silent"] * 2
                assert accepted == 2
            nursery.cancel_scope.cancel()


# --- reconnect ------------------------------------------------------------------------------


async def test_reconnects_and_resubscribes_after_server_close(gateway: Gateway) -> None:
    connections = Connections()
    with trio.fail_after(TIMEOUT):
        async with client_for(
            gateway,
            subscriptions=["workspace:w1", "session:s1"],
            on_connect=connections,
            backoff_initial=0.01,
        ) as client:
            first = await connections.next()
            await client.subscribe("all")
            gateway.hub.clients[first].close(SLOW_CONSUMER)
            second = await connections.next()
            assert second != first
            assert client.client_id == second
            assert gateway.hub.clients[second].subscriptions == {
                "workspace:w1",
                "session:s1",
                "all",
            }
            gateway.broadcaster.broadcast_event(event("w9", n=1))
            assert await received(client) == wire(event("w9", n=1))


async def test_reconnect_after_restart_uses_jittered_backoff(config: Config) -> None:
    """Shutdown (1001), refused attempts, then a new server on the same port."""
    backoff = Backoff()
    connections = Connections()
    rng_seed = 20240611
    with trio.fail_after(TIMEOUT):
        async with own_gateway(config) as (first, first_stopped):
            port = first.port
            client_cm = open_client(
                websocket_url(base_url(port)),
                API_KEY,
                subscriptions=["workspace:w1"],
                on_connect=connections,
                backoff_initial=0.5,
                backoff_max=30,
                rng=random.Random(rng_seed),
                sleep=backoff,
            )
            async with client_cm as client:
                await connections.next()
                first.shutdown()
                await first_stopped.wait()
                expected = random.Random(rng_seed)
                delays = []
                for _attempt in range(3):
                    # After the 1001 close, then after each refused connect.
                    delays.append(await backoff.next_delay())
                    backoff.go()
                assert delays == [
                    backoff_delay(attempt, initial=0.5, maximum=30, rng=expected)
                    for attempt in range(3)
                ]
                assert client.client_id is None
                await backoff.next_delay()
                async with own_gateway(with_settings(config, port=port)) as (second, _stopped):
                    backoff.go()
                    new_id = await connections.next()
                    assert second.hub.clients[new_id].subscriptions == {"workspace:w1"}
                    # A new server, a new epoch: the resume could not recover, and says so.
                    notice = await anext(client)
                    assert notice == {
                        "type": "subscribed",
                        "subscription": "workspace:w1",
                        "epoch": client.positions["workspace:w1"].epoch,
                        "offset": 0,
                        "recovered": False,
                    }
                    second.broadcaster.broadcast_event(event("w1", n=1))
                    assert await received(client) == wire(event("w1", n=1))


async def test_subscribe_while_reconnecting_waits_for_the_next_connection(
    gateway: Gateway,
) -> None:
    backoff = Backoff()
    connections = Connections()
    with trio.fail_after(TIMEOUT):
        async with client_for(gateway, on_connect=connections, sleep=backoff) as client:
            first = await connections.next()
            gateway.hub.clients[first].close(SLOW_CONSUMER)
            await backoff.next_delay()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(client.subscribe, workspace_id="w1"))
                await trio.testing.wait_all_tasks_blocked()
                assert client.subscriptions == frozenset()
                backoff.go()
            second = await connections.next()
            assert gateway.hub.clients[second].subscriptions == {"workspace:w1"}
            assert client.subscriptions == {"workspace:w1"}


async def test_application_falling_behind_drops_and_reconnects(gateway: Gateway) -> None:
    connections = Connections()
    with trio.fail_after(TIMEOUT):
        async with client_for(
            gateway,
            subscriptions=["workspace:w1"],
            max_buffered=2,
            on_connect=connections,
            sleep=no_sleep,
        ) as client:
            first = await connections.next()
            for n in range(5):
                gateway.broadcaster.broadcast_event(event("w1", n=n))
            second = await connections.next()
            assert second != first
            # What was buffered is still delivered, and the resume replays the overflow
            # (a full buffer may cost a few more reconnects on the way).
            assert [await received(client) for _ in range(5)] == [
                wire(event("w1", n=n)) for n in range(5)
            ]
            gateway.broadcaster.broadcast_event(event("w1", n=9))
            assert await received(client) == wire(event("w1", n=9))
            assert client.positions["workspace:w1"].offset == 6


async def test_without_reconnect_the_stream_ends(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(gateway, subscriptions=["workspace:w1"], reconnect=False) as client:
            client_id = client.client_id
            assert client_id is not None
            gateway.broadcaster.broadcast_event(event("w1", n=1))
            assert await received(client) == wire(event("w1", n=1))
            gateway.hub.clients[client_id].close(SLOW_CONSUMER)
            assert [message async for message in client] == []
            assert client.disconnected is not None
            assert (client.disconnected.code, client.disconnected.reason) == (4008, "Slow consumer")
            with pytest.raises(Disconnected):
                await client.subscribe("all")


# --- failures -------------------------------------------------------------------------------


async def test_bad_token_raises_unauthorized(gateway: Gateway) -> None:
    url = websocket_url(base_url(gateway.port))
    with trio.fail_after(TIMEOUT):
        with pytest.raises(Unauthorized, match="4001"):
            async with open_client(url, "wrong"):
                pytest.fail("connected with a bad token")
        # Without a token the server asks for one (`hello`); the client has none to give.
        with pytest.raises(Unauthorized, match="requires a token"):
            async with open_client(url, None):
                pytest.fail("connected without a token")
        assert gateway.client_count() == 0


async def rotate_key_under(
    gateway: Gateway, stopped: trio.Event, url: str, connections: Connections, config: Config
) -> None:
    """Connect, then restart the gateway with another key while the client is connected."""
    async with open_client(url, API_KEY, on_connect=connections, backoff_initial=0.01):
        await connections.next()
        gateway.shutdown()
        await stopped.wait()
        rotated = with_settings(config, port=gateway.port, api_keys=("rotated-key",))
        async with own_gateway(rotated):
            await trio.sleep_forever()


async def test_unauthorized_on_reconnect_ends_the_client(config: Config) -> None:
    connections = Connections()
    with trio.fail_after(TIMEOUT):
        async with own_gateway(config) as (first, first_stopped):
            port = first.port
            url = websocket_url(base_url(port))
            with pytest.raises(Unauthorized):
                await rotate_key_under(first, first_stopped, url, connections, config)


async def test_unreachable_server_raises_connect_failed() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with trio.fail_after(TIMEOUT):
        with pytest.raises(ConnectFailed, match="cannot connect"):
            async with open_client(websocket_url(base_url(port)), API_KEY):
                pytest.fail("connected to a closed port")
        with pytest.raises(ConnectFailed):
            await health(base_url(port))


async def test_user_exceptions_leave_the_client_bare(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(KeyError):
        async with client_for(gateway):
            raise KeyError("mine")


# --- HTTP helper ----------------------------------------------------------------------------


async def test_health(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with client_for(gateway):
            answer = await health(base_url(gateway.port))
    assert answer["status"] == "ok"
    assert answer["ws_clients"] == 1
    assert answer["broker"] == {"kind": "memory", "ok": True}


async def test_publish_events_round_trip(gateway: Gateway) -> None:
    base = base_url(gateway.port)
    with trio.fail_after(TIMEOUT):
        async with client_for(gateway, subscriptions=["workspace:w1"]) as client:
            assert await publish_events(base, API_KEY, event("w1", n=1)) == {"accepted": 1}
            batch = [event("w1", n=2), event("w2", n=3), event("w1", "s", n=4)]
            assert await publish_events(base, API_KEY, batch) == {"accepted": 3}
            assert [await received(client) for _ in range(3)] == [
                wire(event("w1", n=1)),
                wire(event("w1", n=2)),
                wire(event("w1", "s", n=4)),
            ]


async def test_publish_events_errors(gateway: Gateway) -> None:
    base = base_url(gateway.port)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(Unauthorized, match="invalid API key"):
            await publish_events(base, "wrong", event("w1", n=1))
        with pytest.raises(ApiError) as bad:
            await publish_events(base, API_KEY, [event("w1", n=1), {"kind": "no workspace"}])
    assert bad.value.status == 400
    assert bad.value.body == {
        "error": "events[1]: workspace_id must be a non-empty string",
        "index": 1,
    }


async def test_http_request_statuses(gateway: Gateway) -> None:
    base = base_url(gateway.port)
    with trio.fail_after(TIMEOUT):
        status, headers, body = await http_request("GET", base + "/nowhere")
        assert (status, json.loads(body)) == (404, {"error": "Not found"})
        status, headers, body = await http_request("DELETE", base + "/api/events")
        assert (status, json.loads(body)) == (405, {"error": "Method DELETE not allowed"})
        assert ("allow", "POST") in headers
        status, headers, body = await http_request(
            "POST",
            base + "/api/events",
            body=b"x" * (gateway.config.max_body_size + 1),
            headers={"authorization": f"Bearer {API_KEY}"},
        )
        assert status == 413
        status, headers, body = await http_request(
            "POST", base + "/api/events", body=b"{", headers={"authorization": f"Bearer {API_KEY}"}
        )
        assert (status, json.loads(body)) == (400, {"error": "Invalid JSON"})


# --- pure helpers ---------------------------------------------------------------------------


class UpperBound(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_delay_is_full_jitter_under_a_doubling_cap() -> None:
    ceilings = [backoff_delay(n, initial=0.5, maximum=30, rng=UpperBound()) for n in range(9)]
    assert ceilings == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    # A very long outage neither overflows nor exceeds the cap.
    assert backoff_delay(100_000, initial=0.5, maximum=30, rng=UpperBound()) == 30
    seeded, replay = random.Random(42), random.Random(42)
    delays = [backoff_delay(n, initial=0.5, maximum=30, rng=seeded) for n in range(20)]
    assert delays == [replay.uniform(0, min(30, 0.5 * 2**n)) for n in range(20)]
    assert all(0 <= delay <= min(30, 0.5 * 2**n) for n, delay in enumerate(delays))
    assert len(set(delays)) == len(delays)


def test_websocket_url() -> None:
    assert websocket_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/api/ws"
    assert websocket_url("https://gw.example/prefix/") == "wss://gw.example/prefix/api/ws"
    assert websocket_url("ws://h:1/api/ws?token=t") == "ws://h:1/api/ws?token=t"
    with pytest.raises(ValueError, match="http"):
        websocket_url("ftp://h")


@pytest.mark.parametrize("key", ["workspace:", "session:", "nope:x", ""])
async def test_subscription_keys_are_validated(key: str) -> None:
    with pytest.raises(ValueError, match="workspace:<id>"):
        async with open_client("ws://127.0.0.1:1/api/ws", API_KEY, subscriptions=[key]):
            pytest.fail("accepted a malformed key")


async def test_a_ping_arriving_while_the_client_closes_is_not_an_error() -> None:
    """A server (the gateway with `ws_ping`) may ping just as the client sends its close:
    trio-websocket 0.12 then fails answering it (python-trio/trio-websocket#184). The
    client library closes cleanly all the same."""
    pinged = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        conn = WSConnection(ConnectionType.SERVER)
        # The client drops the socket once its close has failed: that is not this server's.
        with suppress(trio.BrokenResourceError):
            async with stream:
                while True:
                    data = await stream.receive_some()
                    if not data:
                        return
                    conn.receive_data(bytes(data))
                    for ws_event in conn.events():
                        if isinstance(ws_event, Request):
                            greeting = {
                                "type": "ready",
                                "client_id": "c",
                                "heartbeat_interval": 30000,
                            }
                            out = conn.send(AcceptConnection())
                            out += conn.send(TextMessage(json.dumps(greeting)))
                            await stream.send_all(out)
                        elif isinstance(ws_event, CloseConnection):
                            # The ping that crosses the client's close frame, then the answer.
                            await stream.send_all(bytes(WS_PING_FRAME))
                            pinged.set()
                            await stream.send_all(conn.send(ws_event.response()))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            async with open_client(f"ws://127.0.0.1:{port}/api/ws", API_KEY):
                pass
            assert pinged.is_set()
            nursery.cancel_scope.cancel()
