"""The seams features plug into: the message registry, its middleware chain, lifecycle hooks.

Through a real gateway on a real socket, asserting what a client sees; the registry's own
rules (one handler per class, sync and async handlers on one path) without a socket.
"""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from trio_gateway import Gateway
from trio_gateway.fanout.hub import Client
from trio_gateway.fanout.outbox import Outbox
from trio_gateway.protocol.errors import INTERNAL_ERROR, SLOW_CONSUMER, ProtocolError
from trio_gateway.protocol.messages import (
    CLIENT_MESSAGES,
    ClientMessage,
    Error,
    Ping,
    Pong,
    client_message,
)
from trio_gateway.session.context import GatewayContext
from trio_gateway.session.registry import Message, Next, Registry

from .helpers import TIMEOUT, closed_with, ready, request, send_json, tcp_client, unframe


def seen_by(registry: Registry) -> list[str]:
    """Install a middleware that records the type of every message it lets through."""
    seen: list[str] = []

    async def record(
        client: Client, context: GatewayContext, message: Message, call_next: Next
    ) -> None:
        seen.append(type(message).__name__)
        await call_next(client, context, message)

    registry.use(record)
    return seen


async def test_every_message_passes_the_middleware_once_and_replies_are_unchanged(
    gateway: Gateway,
) -> None:
    seen = seen_by(gateway.handlers)
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            assert await request(ws, type="ping") == {"type": "pong"}
            assert await request(ws, type="subscribe", workspace_id="W") == {
                "type": "subscribed",
                "subscription": "workspace:W",
            }
            assert await request(ws, type="nope") == {
                "type": "error",
                "message": "Unknown message type: nope",
            }
            assert await request(ws, type="unsubscribe") == {
                "type": "unsubscribed",
                "subscription": "all",
            }
    assert seen == ["Ping", "Subscribe", "Error", "Unsubscribe"]


async def test_middleware_runs_outermost_first_and_may_refuse_a_message(
    gateway: Gateway,
) -> None:
    order: list[str] = []

    async def outer(
        client: Client, context: GatewayContext, message: Message, call_next: Next
    ) -> None:
        order.append("outer")
        await call_next(client, context, message)

    async def refuse_publish(
        client: Client, context: GatewayContext, message: Message, call_next: Next
    ) -> None:
        order.append("inner")
        if getattr(message, "TAG", None) == "publish":
            raise ProtocolError("Too many messages: slow down", "rate_limited")
        await call_next(client, context, message)

    gateway.handlers.use(outer)
    gateway.handlers.use(refuse_publish)
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            refused = await request(ws, type="publish", topic="chat", data=1)
            assert refused == {
                "type": "error",
                "message": "Too many messages: slow down",
                "code": "rate_limited",
            }
            # The connection stays open and the next message goes through.
            assert await request(ws, type="ping") == {"type": "pong"}
    assert order == ["outer", "inner", "outer", "inner"]


async def test_a_middleware_that_does_not_call_next_drops_the_message(gateway: Gateway) -> None:
    async def drop_pings(
        client: Client, context: GatewayContext, message: Message, call_next: Next
    ) -> None:
        if not isinstance(message, Ping):
            await call_next(client, context, message)

    gateway.handlers.use(drop_pings)
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await send_json(ws, {"type": "ping"})
            # Nothing answers the ping; the subscribe behind it is answered first.
            assert await request(ws, type="subscribe", topic="t") == {
                "type": "subscribed",
                "subscription": "t",
            }


async def test_hooks_see_a_registered_client_and_one_that_is_gone(gateway: Gateway) -> None:
    events: list[tuple[str, str, int | None, bool]] = []
    gone = trio.Event()

    @gateway.lifecycle.on_connect
    def connected(client: Client) -> None:
        events.append(("connect", client.id, None, client.id in gateway.hub.clients))

    @gateway.lifecycle.on_stop
    def stopped(client: Client) -> None:
        # Reading has ended; the client is still in the hub and no longer takes new work.
        assert client.tasks is None
        assert client.close_reason is not None
        code = client.close_reason.code
        events.append(("stop", client.id, code, client.id in gateway.hub.clients))

    @gateway.lifecycle.on_disconnect
    def disconnected(client: Client) -> None:
        assert client.close_reason is not None
        code = client.close_reason.code
        events.append(("disconnect", client.id, code, client.id in gateway.hub.clients))
        gone.set()

    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            client_id = await ready(ws)
            await subscribe_and_leave(ws)
        await gone.wait()
    assert events == [
        ("connect", client_id, None, True),
        ("stop", client_id, 1000, True),
        ("disconnect", client_id, 1000, False),
    ]
    assert gateway.hub.subscription_count() == 0


async def subscribe_and_leave(ws: trio_websocket.WebSocketConnection) -> None:
    assert (await request(ws, type="subscribe", workspace_id="W"))["type"] == "subscribed"
    await ws.aclose()


async def test_a_connect_hook_may_refuse_the_client_with_a_close_reason(
    gateway: Gateway,
) -> None:
    disconnected: list[int] = []
    gone = trio.Event()
    gateway.lifecycle.on_connect(lambda client: client.close(SLOW_CONSUMER))

    @gateway.lifecycle.on_disconnect
    def record(client: Client) -> None:
        assert client.close_reason is not None
        disconnected.append(client.close_reason.code)
        gone.set()

    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            # The close does not ask for a flush: the queued `ready` is dropped with it.
            reason = await closed_with(ws)
        await gone.wait()
    assert (reason.code, reason.reason) == (4008, "Slow consumer")
    assert disconnected == [4008]


async def test_a_failing_connect_hook_closes_1011_and_disconnect_hooks_still_run(
    gateway: Gateway,
) -> None:
    ran: list[str] = []
    gone = trio.Event()

    def broken(client: Client) -> None:
        raise RuntimeError("secret detail")

    def first_disconnect_hook(client: Client) -> None:
        ran.append("first")
        gone.set()

    def failing_disconnect_hook(client: Client) -> None:
        ran.append("failing")
        raise RuntimeError("also broken")

    gateway.lifecycle.on_connect(broken)
    gateway.lifecycle.on_disconnect(first_disconnect_hook)
    gateway.lifecycle.on_disconnect(failing_disconnect_hook)
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            reason = await closed_with(ws)
        await gone.wait()
    # The exception's text never reaches the wire.
    assert (reason.code, reason.reason) == (INTERNAL_ERROR.code, INTERNAL_ERROR.reason)
    # Latest first, and one failing hook does not stop the others.
    assert ran == ["failing", "first"]
    assert len(gateway.hub) == 0


def test_a_class_gets_one_handler() -> None:
    registry = Registry()
    registry.register(Ping, lambda client, context, message: None)
    with pytest.raises(ValueError, match="Ping has a handler already"):
        registry.register(Ping, lambda client, context, message: None)
    assert registry.handles(Ping)
    assert not registry.handles(Pong)


def test_a_client_message_tag_is_declared_once() -> None:
    class Duplicate(ClientMessage):
        TAG = "ping"

    with pytest.raises(ValueError, match="'ping' declared twice"):
        client_message(Duplicate)
    assert CLIENT_MESSAGES["ping"] is Ping


def bare_client() -> Client:
    return Client(id="c", outbox=Outbox(8), connected_at=0.0, last_seen=0.0)


async def test_sync_and_async_handlers_share_one_path_and_keep_order() -> None:
    registry = Registry()

    def on_ping(client: Client, context: GatewayContext, message: Ping) -> None:
        client.send(b"sync")

    async def on_pong(client: Client, context: GatewayContext, message: Pong) -> None:
        await trio.lowlevel.checkpoint()
        client.send(b"async")

    registry.register(Ping, on_ping)
    registry.register(Pong, on_pong)
    client = bare_client()
    context = None  # handlers here need nothing shared
    for message in (Pong(), Ping(), Pong()):
        await registry.dispatch(client, context, message)  # type: ignore[arg-type]
    assert client.outbox.take_nowait() == [b"async", b"sync", b"async"]


async def test_a_message_without_a_handler_is_an_unknown_type_to_the_client() -> None:
    registry = Registry()
    client = bare_client()
    await registry.dispatch(client, None, Ping())  # type: ignore[arg-type]
    await registry.dispatch(client, None, Error("Invalid JSON"))  # type: ignore[arg-type]
    frames = client.outbox.take_nowait()
    assert [unframe(frame) for frame in frames] == [
        '{"type":"error","message":"Unknown message type: ping"}',
        '{"type":"error","message":"Unknown message type: error"}',
    ]
