"""Connection and server lifecycle: nothing left behind, graceful shutdown, ids, auth header.

Real sockets, real clock, hard `fail_after` bounds. Waiting for the server to notice a
disconnect uses `wait_all_tasks_blocked()` in a loop, never a sleep.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trio_websocket
from ulid import ULID

from trio_gateway import Config, Gateway, GatewayClosed, serve

from .helpers import (
    API_KEY,
    TIMEOUT,
    MemoryListener,
    all_tasks,
    closed_with,
    event,
    raw_client,
    ready,
    receive_json,
    subscribe,
    tcp_client,
    wait_until,
)

CROCKFORD_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")


# --- local helpers --------------------------------------------------------------------------


@asynccontextmanager
async def closing_memory_client(
    listener: MemoryListener,
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A client over an in-memory stream that closes its end on exit, as a real client
    closing its socket would, so the server never waits out an EOF that will not come."""
    stream = await listener.connect()
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery,
                stream,  # type: ignore[arg-type]  # any Stream works; the stub says sockets
                "gateway.test",
                f"/api/ws?token={API_KEY}",
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(1):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


def assert_empty(gw: Gateway) -> None:
    assert gw.hub.clients == {}
    assert gw.hub.subscription_count() == 0
    assert gw.client_count() == 0


# --- nothing left behind after clients leave ----------------------------------------------------


async def test_normal_close_leaves_nothing_behind(gateway: Gateway) -> None:
    hub = gateway.hub
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as one, tcp_client(gateway.port) as two:
            await ready(one)
            await ready(two)
            for ws in (one, two):
                await subscribe(ws, scope="all")
                await subscribe(ws, workspace_id="W")
            await subscribe(one, session_id="S")
            assert len(hub.clients) == 2
            assert hub.subscription_count() == 3  # all, workspace:W, session:S
        await wait_until(lambda: not hub.clients)
        assert_empty(gateway)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_abrupt_tcp_close_leaves_nothing_behind(gateway: Gateway, reset: bool) -> None:
    hub = gateway.hub
    with trio.fail_after(TIMEOUT):
        async with raw_client(gateway.port) as doomed, tcp_client(gateway.port) as witness:
            await ready(doomed.ws)
            await ready(witness)
            await subscribe(doomed.ws, workspace_id="W")
            await subscribe(doomed.ws, session_id="S")
            await subscribe(witness, scope="all")
            assert hub.subscription_count() == 3

            doomed.drop(reset=reset)
            await wait_until(lambda: len(hub.clients) == 1)
            assert hub.subscription_count() == 1  # only the witness's "all"
            # Publishing to the departed client's keys is harmless.
            gateway.broadcaster.broadcast_event(event("W", "S", n=1))
            assert (await receive_json(witness))["event"]["n"] == 1
        await wait_until(lambda: not hub.clients)
        assert_empty(gateway)


async def test_aborted_connections_leave_no_tasks(gateway: Gateway) -> None:
    """Half-finished and abandoned connections: every per-connection task ends."""
    with trio.fail_after(TIMEOUT):
        await trio.testing.wait_all_tasks_blocked()
        idle = all_tasks()

        # TCP connect, then leave without a byte.
        stream = await trio.open_tcp_stream("127.0.0.1", gateway.port)
        await stream.aclose()
        # Half an HTTP request head, then leave.
        stream = await trio.open_tcp_stream("127.0.0.1", gateway.port)
        await stream.send_all(b"GET /api/ws?token=test-key HTTP/1.1\r\nHost: x\r\nUpgra")
        await stream.aclose()
        # A full WebSocket session dropped with a reset while subscribed.
        async with raw_client(gateway.port) as doomed:
            await ready(doomed.ws)
            await subscribe(doomed.ws, scope="all")
            doomed.drop(reset=True)
        # A rejected token.
        async with tcp_client(gateway.port, token="nope") as rejected:
            assert (await closed_with(rejected)).code == 4001

        await wait_until(lambda: all_tasks() == idle)
        assert_empty(gateway)


async def test_an_idle_subscribed_connection_is_one_task(gateway: Gateway) -> None:
    """Its session's task: the handshake's task has ended, and no writer waits for frames."""
    with trio.fail_after(TIMEOUT):
        await trio.testing.wait_all_tasks_blocked()
        idle = all_tasks()
        async with raw_client(gateway.port) as one, raw_client(gateway.port) as two:
            for client in (one, two):
                await ready(client.ws)
                await subscribe(client.ws, scope="all")
            gateway.broadcaster.broadcast_event(event("W", n=1))
            for client in (one, two):
                assert (await receive_json(client.ws))["event"]["n"] == 1
            await trio.testing.wait_all_tasks_blocked()
            ours = [
                task.name for task in all_tasks() - idle if task.name.startswith("trio_gateway.")
            ]
            assert ours == ["trio_gateway.session.connection._run_session"] * 2


# --- graceful shutdown ------------------------------------------------------------------------


async def test_shutdown_returns_and_leaves_no_tasks(config: Config) -> None:
    with trio.fail_after(TIMEOUT):
        await trio.testing.wait_all_tasks_blocked()
        before = all_tasks()
        serve_returned = trio.Event()

        async def run_serve(task_status: trio.TaskStatus[Gateway]) -> None:
            await serve(config, task_status=task_status)
            serve_returned.set()

        async with trio.open_nursery() as nursery:
            gw: Gateway = await nursery.start(run_serve)
            async with tcp_client(gw.port) as one, tcp_client(gw.port) as two:
                await ready(one)
                await ready(two)
                await subscribe(one, scope="all")
                await subscribe(two, workspace_id="W")
                gw.shutdown()
                for ws in (one, two):
                    reason = await closed_with(ws)
                    assert (reason.code, reason.reason) == (1001, "Server shutting down")
            await serve_returned.wait()
        # The block ended by itself: serve returned rather than being cancelled.
        assert not nursery.child_tasks
        assert all_tasks() == before
        assert_empty(gw)
        # The listener is gone and publishing is refused.
        with pytest.raises(OSError, match="all attempts to connect"):
            await trio.open_tcp_stream("127.0.0.1", gw.port)
        with pytest.raises(GatewayClosed):
            gw.broadcaster.broadcast_event(event("W"))


async def test_shutdown_with_no_clients_returns_promptly(config: Config) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            gw: Gateway = await nursery.start(serve, config)
            gw.shutdown()
        assert not nursery.child_tasks
        assert_empty(gw)


async def test_client_gets_1001_on_shutdown(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            gateway.shutdown()
            reason = await closed_with(ws)
            assert (reason.code, reason.reason) == (1001, "Server shutting down")


async def test_queued_events_are_delivered_before_1001(gateway: Gateway) -> None:
    total = 50
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws, tcp_client(gateway.port) as other:
            await ready(ws)
            await ready(other)
            await subscribe(ws, scope="all")
            await subscribe(other, workspace_id="W")
            for n in range(total):
                gateway.broadcaster.broadcast_event(event("W", n=n))
            gateway.shutdown()  # immediately: nothing has been fanned out yet

            for client in (ws, other):
                received = []
                try:
                    while True:
                        received.append((await receive_json(client))["event"]["n"])
                except trio_websocket.ConnectionClosed as exc:
                    reason = exc.reason
                assert received == list(range(total))
                assert reason is not None
                assert (reason.code, reason.reason) == (1001, "Server shutting down")


async def test_cancelling_serve_closes_clients_1001(nursery: trio.Nursery, config: Config) -> None:
    server_scope = trio.CancelScope()
    serve_ended = trio.Event()

    async def run_serve(task_status: trio.TaskStatus[Gateway]) -> None:
        try:
            with server_scope:
                await serve(config, task_status=task_status)
        finally:
            serve_ended.set()

    with trio.fail_after(TIMEOUT):
        gw: Gateway = await nursery.start(run_serve)
        async with tcp_client(gw.port) as one, tcp_client(gw.port) as two:
            await ready(one)
            await ready(two)
            await subscribe(one, scope="all")
            server_scope.cancel()
            for ws in (one, two):
                reason = await closed_with(ws)
                assert (reason.code, reason.reason) == (1001, "Server shutting down")
        await serve_ended.wait()
        assert server_scope.cancelled_caught
        assert_empty(gw)


async def test_cancelling_serve_does_not_wait_out_close_timeout(
    autojump_clock: trio.testing.MockClock, config: Config
) -> None:
    """A responsive client answers the 1001 close at once, so cancelling `serve` from outside
    should not take `close_timeout` (virtual time, so the measurement is exact)."""
    listener = MemoryListener()
    server_scope = trio.CancelScope()
    serve_ended = trio.Event()

    async def run_serve(task_status: trio.TaskStatus[Gateway]) -> None:
        try:
            with server_scope:
                await serve(config, listeners=[listener], task_status=task_status)
        finally:
            serve_ended.set()

    with trio.fail_after(60):  # virtual seconds
        async with trio.open_nursery() as nursery:
            gw: Gateway = await nursery.start(run_serve)
            async with closing_memory_client(listener) as ws:
                await ready(ws)
                cancelled_at = trio.current_time()
                server_scope.cancel()
                reason = await closed_with(ws)
                assert (reason.code, reason.reason) == (1001, "Server shutting down")
            await serve_ended.wait()
            assert trio.current_time() - cancelled_at < config.close_timeout
        assert_empty(gw)


# --- identity and auth ------------------------------------------------------------------------


async def test_authorization_header_client_works(gateway: Gateway) -> None:
    headers = [(b"authorization", b"Bearer " + API_KEY.encode())]
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, token=None, extra_headers=headers) as ws:
            client_id = await ready(ws)
            assert client_id in gateway.hub.clients
            await subscribe(ws, workspace_id="W")
            gateway.broadcaster.broadcast_event(event("W", n=1))
            assert await receive_json(ws) == {"type": "event", "event": event("W", n=1)}
        await wait_until(lambda: not gateway.hub.clients)


async def test_client_ids_are_distinct_ulids(gateway: Gateway) -> None:
    ids = []
    with trio.fail_after(TIMEOUT):
        for _ in range(5):
            async with tcp_client(gateway.port) as ws:
                ids.append(await ready(ws))
        async with tcp_client(gateway.port) as a, tcp_client(gateway.port) as b:
            ids.append(await ready(a))
            ids.append(await ready(b))
    assert len(set(ids)) == len(ids)
    for client_id in ids:
        assert CROCKFORD_ULID.fullmatch(client_id), client_id
        assert str(ULID.from_str(client_id)) == client_id
