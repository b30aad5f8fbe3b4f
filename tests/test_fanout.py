"""Fan-out: publish order, exactly-once delivery, routing, and slow-consumer isolation.

Real sockets, real clock, hard `fail_after` bounds. Absence is proven with a marker: a later
publication the client does follow must be its next frame (one publisher task, one order).
"""

from __future__ import annotations

import json
from typing import Any

import trio
import trio_websocket

from trio_gateway import Config, Gateway, open_gateway, serve

from .conftest import with_settings
from .helpers import (
    TIMEOUT,
    event,
    raw_client,
    ready,
    receive_json,
    send_json,
    subscribe,
    tcp_client,
)

# --- local helpers --------------------------------------------------------------------------


async def receive_events(ws: trio_websocket.WebSocketConnection, count: int) -> list[Any]:
    """The `n` field of the next `count` event frames."""
    numbers = []
    for _ in range(count):
        frame = await receive_json(ws)
        assert frame["type"] == "event", frame
        numbers.append(frame["event"]["n"])
    return numbers


# --- order ------------------------------------------------------------------------------------


async def test_200_events_arrive_in_publish_order(gateway: Gateway) -> None:
    total = 200
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as one, tcp_client(gateway.port) as two:
            await ready(one)
            await ready(two)
            await subscribe(one, scope="all")
            await subscribe(two, workspace_id="W")
            for n in range(total):
                # Several workspaces and sessions; the all-subscriber must see them interleaved
                # exactly as published.
                gateway.broadcaster.broadcast_event(event("W" if n % 2 else "V", f"S{n % 7}", n=n))
            assert await receive_events(one, total) == list(range(total))
            assert await receive_events(two, total // 2) == list(range(1, total, 2))


async def test_order_holds_across_message_kinds(gateway: Gateway) -> None:
    broadcaster = gateway.broadcaster
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, workspace_id="W")
            for n in range(30):
                broadcaster.broadcast_event(event("W", n=n))
                broadcaster.broadcast_session_update(f"S{n}", "W", "ended", stats={"n": n})
                broadcaster.broadcast_remote_update(f"R{n}", "W", "ready", public_ip=f"10.0.0.{n}")
            for n in range(30):
                assert await receive_json(ws) == {"type": "event", "event": event("W", n=n)}
                assert await receive_json(ws) == {
                    "type": "session.update",
                    "session_id": f"S{n}",
                    "lifecycle": "ended",
                    "stats": {"n": n},
                }
                assert await receive_json(ws) == {
                    "type": "remote.update",
                    "remote_env_id": f"R{n}",
                    "status": "ready",
                    "public_ip": f"10.0.0.{n}",
                }


# --- exactly once -----------------------------------------------------------------------------


async def test_overlapping_subscriptions_deliver_each_message_once(gateway: Gateway) -> None:
    broadcaster = gateway.broadcaster
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, scope="all")
            await subscribe(ws, workspace_id="W1")
            await subscribe(ws, session_id="S1")
            published = [
                event("W1", "S1", n=0),  # matches all three keys
                event("W1", None, n=1),  # all + workspace
                event("W2", "S1", n=2),  # all + session
                event("W2", "S2", n=3),  # all only
                event("W1", "S1", n=4),
            ]
            for item in published:
                broadcaster.broadcast_event(item)
            broadcaster.broadcast_session_update("S1", "W1", "parsed")  # all three keys
            broadcaster.broadcast_remote_update("R1", "W1", "ready")  # all + workspace

            assert await receive_events(ws, len(published)) == [0, 1, 2, 3, 4]
            assert (await receive_json(ws))["type"] == "session.update"
            assert (await receive_json(ws))["type"] == "remote.update"
            # Every copy of a publication is queued in one go, so a duplicate of the last one
            # would come before the answer to a ping sent now.
            await send_json(ws, {"type": "ping"})
            assert await receive_json(ws) == {"type": "pong"}


async def test_workspace_and_session_subscriber_gets_one_copy(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, workspace_id="W")
            await subscribe(ws, session_id="S")
            gateway.broadcaster.broadcast_event(event("W", "S", n=1))
            gateway.broadcaster.broadcast_session_update("S", "W", "ended")
            assert await receive_events(ws, 1) == [1]
            assert (await receive_json(ws))["type"] == "session.update"
            await send_json(ws, {"type": "ping"})
            assert await receive_json(ws) == {"type": "pong"}


# --- routing and absence ----------------------------------------------------------------------


async def test_unsubscribed_clients_receive_nothing(gateway: Gateway) -> None:
    broadcaster = gateway.broadcaster
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as follower, tcp_client(gateway.port) as idle:
            await ready(follower)
            await ready(idle)
            await subscribe(follower, workspace_id="A")

            # X is for workspace B: it must not reach the workspace-A follower.
            broadcaster.broadcast_event(event("B", "SB", n="X"))
            broadcaster.broadcast_session_update("SB", "B", "ended")
            broadcaster.broadcast_remote_update("R", "B", "ready")
            broadcaster.broadcast_event(event("A", n="Y"))
            assert await receive_events(follower, 1) == ["Y"]

            # The client with no subscription at all got none of it: the first thing it sees
            # is the ack of a marker subscription, then the marker.
            assert await subscribe(idle, session_id="MARK") == "session:MARK"
            broadcaster.broadcast_event(event("Z", "MARK", n="marker"))
            assert await receive_events(idle, 1) == ["marker"]


async def test_remote_update_reaches_workspace_not_session_subscribers(gateway: Gateway) -> None:
    broadcaster = gateway.broadcaster
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as by_workspace, tcp_client(gateway.port) as by_session:
            await ready(by_workspace)
            await ready(by_session)
            await subscribe(by_workspace, workspace_id="W")
            await subscribe(by_session, session_id="S")
            broadcaster.broadcast_remote_update("R1", "W", "provisioning")
            assert await receive_json(by_workspace) == {
                "type": "remote.update",
                "remote_env_id": "R1",
                "status": "provisioning",
            }
            broadcaster.broadcast_session_update("S", "W", "ended")
            # The remote update (no session) did not reach the session subscriber.
            assert (await receive_json(by_session))["type"] == "session.update"
            assert (await receive_json(by_workspace))["type"] == "session.update"


# --- slow consumers ---------------------------------------------------------------------------


async def test_slow_consumer_is_closed_4008_and_fast_client_keeps_up(
    nursery: trio.Nursery, config: Config
) -> None:
    total = 200
    payload = "x" * (64 * 1024)
    # close_timeout is the grace the server gives a stuck writer once the close is decided;
    # keep it well above how long the fast loop below takes so the 4008 frame is still sent
    # once the slow client finally reads.
    settings = with_settings(config, queue_depth=4, close_timeout=5.0)
    with trio.fail_after(10):
        gw: Gateway = await nursery.start(serve, settings)
        async with raw_client(gw.port, rcvbuf=4096) as slow, tcp_client(gw.port) as fast:
            await ready(slow.ws)
            await subscribe(slow.ws, scope="all")
            await ready(fast)
            await subscribe(fast, scope="all")
            # From here on the slow client reads nothing until the fast one has everything.

            for n in range(total):
                gw.broadcaster.broadcast_event(event("W", n=n, payload=payload))
                # Promptly: each event reaches the fast client before the next is published.
                assert await receive_events(fast, 1) == [n]

            received: list[int] = []
            try:
                while True:
                    frame = await slow.ws.get_message()
                    assert isinstance(frame, str)
                    received.append(json.loads(frame)["event"]["n"])
            except trio_websocket.ConnectionClosed as exc:
                reason = exc.reason
            assert reason is not None
            assert (reason.code, reason.reason) == (4008, "Slow consumer")
            # What it did get is an unbroken prefix; the rest was never queued for it.
            assert received == list(range(len(received)))
            assert len(received) < total

            # The fast client is unaffected and still served.
            gw.broadcaster.broadcast_event(event("W", n="after"))
            assert await receive_events(fast, 1) == ["after"]
            assert gw.client_count() == 1


# --- ids that look like patterns --------------------------------------------------------------


async def test_a_workspace_or_session_id_with_wildcards_is_a_literal_key(
    any_broker: Config,
) -> None:
    # Only topics are patterns: "workspace:chat.**" names the workspace "chat.**" (found by
    # a fuzzer: these subscribes used to close the connection 1011).
    async with open_gateway(any_broker) as gateway:
        with trio.fail_after(TIMEOUT):
            async with tcp_client(gateway.port) as ws:
                await ready(ws)
                assert await subscribe(ws, workspace_id="chat.**") == "workspace:chat.**"
                await send_json(ws, {"type": "subscribe", "session_id": "a.*", "recover": True})
                ack = await receive_json(ws)
                assert (ack["subscription"], ack["offset"]) == ("session:a.*", 0)
                gateway.broadcaster.broadcast_event(event("chat.other", n=0))
                gateway.broadcaster.broadcast_event(event("chat.**", "a.*", n=1))
                frame = await receive_json(ws)
                assert frame["event"]["n"] == 1
                assert frame["offsets"] == {"all": 2, "workspace:chat.**": 1, "session:a.*": 1}
