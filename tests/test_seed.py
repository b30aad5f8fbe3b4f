"""The 22 tests listed in the seed spec (shared/seeds/000_b2fad64d185811bb.txt), in order.

Real sockets on port 0 with the real clock and a hard `fail_after` bound, except the two
keepalive tests (14, 15), which run over in-memory streams under the autojump clock.
Absence is proven with a marker: a later publication the client *does* follow must be the
next frame, since every client receives publications in publish order.
"""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
import trio_websocket

from trio_gateway import Config, Gateway, open_gateway

from .conftest import with_settings
from .helpers import (
    TIMEOUT,
    closed_with,
    event,
    memory_client,
    raw_client,
    ready,
    receive_json,
    send_json,
    serve_in_memory,
    subscribe,
    tcp_client,
    wait_until,
)

# --- local helpers --------------------------------------------------------------------------


async def no_frame_then_closed(
    ws: trio_websocket.WebSocketConnection,
) -> trio_websocket.CloseReason:
    """The server closes without sending any frame first; returns its close reason."""
    with pytest.raises(trio_websocket.ConnectionClosed) as info:
        await ws.get_message()
    assert info.value.reason is not None
    return info.value.reason


# --- 1-3: connecting --------------------------------------------------------------------------


async def test_seed_01_valid_token_connects(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            greeting = await receive_json(ws)
            assert greeting["type"] == "ready"
            assert greeting["heartbeat_interval"] == 30000
            assert isinstance(greeting["client_id"], str)
            # The connection is usable and nothing else (no error) was queued before the pong.
            await send_json(ws, {"type": "ping"})
            assert await receive_json(ws) == {"type": "pong"}
            assert gateway.client_count() == 1


async def test_seed_02_invalid_token_closes_4001(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, token="wrong-key") as ws:
            reason = await no_frame_then_closed(ws)
        assert (reason.code, reason.reason) == (4001, "Unauthorized")
        assert gateway.client_count() == 0


async def test_seed_03_missing_token_closes_4001(config: Config) -> None:
    # Since JWT support a connection without a token may still identify (hello first); one
    # that does not is closed 4001, as the seed has it, once identify_timeout runs out.
    quick = with_settings(config, identify_timeout=0.2)
    with trio.fail_after(TIMEOUT):
        async with open_gateway(quick) as gateway, tcp_client(gateway.port, token=None) as ws:
            assert (await receive_json(ws))["type"] == "hello"
            reason = await no_frame_then_closed(ws)
        assert (reason.code, reason.reason) == (4001, "Unauthorized")


# --- 4-6: subscribe acks ----------------------------------------------------------------------


async def test_seed_04_subscribe_all_is_acked(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await send_json(ws, {"type": "subscribe", "scope": "all"})
            assert await receive_json(ws) == {"type": "subscribed", "subscription": "all"}


async def test_seed_05_subscribe_workspace_is_acked(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await send_json(ws, {"type": "subscribe", "workspace_id": "01ABC"})
            assert await receive_json(ws) == {
                "type": "subscribed",
                "subscription": "workspace:01ABC",
            }


async def test_seed_06_subscribe_session_is_acked(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await send_json(ws, {"type": "subscribe", "session_id": "01DEF"})
            assert await receive_json(ws) == {
                "type": "subscribed",
                "subscription": "session:01DEF",
            }


# --- 7-13: routing ----------------------------------------------------------------------------


async def test_seed_07_all_subscriber_receives_event(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, scope="all")
            sent = event("W1", "S1", kind="tool.used", payload={"n": [1, 2, 3]})
            gateway.broadcaster.broadcast_event(sent)
            assert await receive_json(ws) == {"type": "event", "event": sent}


async def test_seed_08_workspace_subscriber_gets_only_its_workspace(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, workspace_id="A")
            gateway.broadcaster.broadcast_event(event("B", kind="not-for-you"))
            gateway.broadcaster.broadcast_event(event("A", kind="for-you"))
            # Publish order is delivery order: had B arrived it would come first.
            assert await receive_json(ws) == {"type": "event", "event": event("A", kind="for-you")}


async def test_seed_09_session_subscriber_gets_only_its_session(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, session_id="S")
            gateway.broadcaster.broadcast_session_update("T", "W", "ended")
            gateway.broadcaster.broadcast_session_update("S", "W", "ended")
            assert await receive_json(ws) == {
                "type": "session.update",
                "session_id": "S",
                "lifecycle": "ended",
            }


async def test_seed_10_unsubscribe_workspace_stops_delivery(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, workspace_id="A")
            await subscribe(ws, workspace_id="MARK")
            gateway.broadcaster.broadcast_event(event("A", n=1))
            assert await receive_json(ws) == {"type": "event", "event": event("A", n=1)}

            await send_json(ws, {"type": "unsubscribe", "workspace_id": "A"})
            assert await receive_json(ws) == {
                "type": "unsubscribed",
                "subscription": "workspace:A",
            }
            gateway.broadcaster.broadcast_event(event("A", n=2))
            gateway.broadcaster.broadcast_event(event("MARK", n=3))
            assert await receive_json(ws) == {"type": "event", "event": event("MARK", n=3)}


async def test_seed_11_unsubscribe_without_params_clears_all(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, scope="all")
            await subscribe(ws, workspace_id="A")
            await subscribe(ws, session_id="S")
            await send_json(ws, {"type": "unsubscribe"})
            assert await receive_json(ws) == {"type": "unsubscribed", "subscription": "all"}

            gateway.broadcaster.broadcast_event(event("A", "S"))
            gateway.broadcaster.broadcast_event(event("B"))
            gateway.broadcaster.broadcast_session_update("S", "A", "ended")
            gateway.broadcaster.broadcast_remote_update("R", "A", "ready")
            # Marker: a fresh subscription that none of the above matches.
            assert await subscribe(ws, session_id="MARK") == "session:MARK"
            gateway.broadcaster.broadcast_session_update("MARK", "Z", "parsed")
            assert await receive_json(ws) == {
                "type": "session.update",
                "session_id": "MARK",
                "lifecycle": "parsed",
            }


async def test_seed_12_multiple_clients_each_get_only_matching(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            tcp_client(gateway.port) as everything,
            tcp_client(gateway.port) as workspace,
            tcp_client(gateway.port) as session,
        ):
            for ws in (everything, workspace, session):
                await ready(ws)
            await subscribe(everything, scope="all")
            await subscribe(workspace, workspace_id="W1")
            await subscribe(session, session_id="S1")

            published = [
                event("W1", None, n=1),
                event("W2", "S1", n=2),
                event("W2", "S2", n=3),
                event("W1", "S1", n=4),  # matches all three: the marker
            ]
            for item in published:
                gateway.broadcaster.broadcast_event(item)

            async def expect(ws: trio_websocket.WebSocketConnection, numbers: list[int]) -> None:
                got = [(await receive_json(ws))["event"]["n"] for _ in numbers]
                assert got == numbers

            await expect(everything, [1, 2, 3, 4])
            await expect(workspace, [1, 4])
            await expect(session, [2, 4])


async def test_seed_13_event_reaches_workspace_or_session_subscriber(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as by_workspace, tcp_client(gateway.port) as by_session:
            await ready(by_workspace)
            await ready(by_session)
            await subscribe(by_workspace, workspace_id="W")
            await subscribe(by_session, session_id="S")
            both = event("W", "S", kind="both")
            gateway.broadcaster.broadcast_event(both)
            assert await receive_json(by_workspace) == {"type": "event", "event": both}
            assert await receive_json(by_session) == {"type": "event", "event": both}


# --- 14-15: keepalive (virtual time) ----------------------------------------------------------


async def test_seed_14_ping_pong_keeps_connection_alive(
    autojump_clock: trio.testing.MockClock, config: Config
) -> None:
    with trio.fail_after(600):  # virtual seconds
        async with trio.open_nursery() as nursery:
            gw, listener = await serve_in_memory(nursery, config)
            async with memory_client(listener) as ws:
                start = trio.current_time()
                await ready(ws)
                # Ten cycles: five virtual minutes, far past the 40 s staleness limit.
                for cycle in range(1, 11):
                    assert await receive_json(ws) == {"type": "ping"}
                    assert trio.current_time() - start == pytest.approx(30 * cycle)
                    await send_json(ws, {"type": "pong"})
                # Still open and serving.
                assert await subscribe(ws, scope="all") == "all"
                assert gw.client_count() == 1
            gw.shutdown()


async def test_seed_15_stale_client_is_terminated(
    autojump_clock: trio.testing.MockClock, config: Config
) -> None:
    # The seed's ping is the JSON one. trio-websocket answers WebSocket-level pings by
    # itself, so with `ws_ping` (the default) this client would not be silent: the rule for
    # those is tested in test_keepalive.py with a client that answers nothing.
    config = with_settings(config, ws_ping=False)
    with trio.fail_after(600):  # virtual seconds
        async with trio.open_nursery() as nursery:
            gw, listener = await serve_in_memory(nursery, config)
            async with memory_client(listener) as ws:
                start = trio.current_time()
                await ready(ws)
                assert await receive_json(ws) == {"type": "ping"}  # at 30 s: not answered
                assert trio.current_time() - start == pytest.approx(30)
                reason = await closed_with(ws)
                assert (reason.code, reason.reason) == (1008, "Pong timeout")
                # Reaped at the first ping after 40 s of silence: t = 60 s.
                assert trio.current_time() - start == pytest.approx(60)
                # The server forgets a client before it sends the close frame.
                assert gw.client_count() == 0
            gw.shutdown()


# --- 16: a client vanishing mid-broadcast -----------------------------------------------------


async def test_seed_16_client_disconnect_during_broadcast(gateway: Gateway) -> None:
    total = 100
    with trio.fail_after(TIMEOUT):
        async with (
            tcp_client(gateway.port) as first,
            tcp_client(gateway.port) as second,
            raw_client(gateway.port) as doomed,
        ):
            for ws in (first, second, doomed.ws):
                await ready(ws)
                await subscribe(ws, scope="all")
            assert gateway.client_count() == 3

            for n in range(total // 2):
                gateway.broadcaster.broadcast_event(event("W", n=n))
            # Let the fan-out get going, then vanish in the middle of it.
            early = [(await receive_json(first))["event"]["n"] for _ in range(10)]
            doomed.drop(reset=True)
            for n in range(total // 2, total):
                gateway.broadcaster.broadcast_event(event("W", n=n))

            rest = [(await receive_json(first))["event"]["n"] for _ in range(total - 10)]
            assert early + rest == list(range(total))
            got = [(await receive_json(second))["event"]["n"] for _ in range(total)]
            assert got == list(range(total))
            await wait_until(lambda: gateway.client_count() == 2)

            # The server is still healthy: broadcasts and new clients work.
            gateway.broadcaster.broadcast_event(event("W", n="after"))
            for ws in (first, second):
                assert (await receive_json(ws))["event"]["n"] == "after"
            async with tcp_client(gateway.port) as late:
                await ready(late)
                assert gateway.client_count() == 3


# --- 17-18: bad client frames -----------------------------------------------------------------


async def test_seed_17_invalid_json_gets_error(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await ws.send_message("{not json")
            assert await receive_json(ws) == {"type": "error", "message": "Invalid JSON"}


async def test_seed_18_unknown_message_type_gets_error(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await send_json(ws, {"type": "frobnicate"})
            assert await receive_json(ws) == {
                "type": "error",
                "message": "Unknown message type: frobnicate",
            }


# --- 19-20: client count and shutdown ---------------------------------------------------------


async def test_seed_19_client_count_tracks_connections(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        assert gateway.client_count() == 0
        async with tcp_client(gateway.port) as one:
            await ready(one)  # registered before the greeting is queued
            assert gateway.client_count() == 1
            async with tcp_client(gateway.port) as two:
                await ready(two)
                assert gateway.client_count() == 2
            await wait_until(lambda: gateway.client_count() == 1)
        await wait_until(lambda: gateway.client_count() == 0)
        # Rejected clients are never counted.
        async with tcp_client(gateway.port, token="wrong") as rejected:
            assert (await closed_with(rejected)).code == 4001
            assert gateway.client_count() == 0


async def test_seed_20_shutdown_closes_all_clients(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as one, tcp_client(gateway.port) as two:
            await ready(one)
            await ready(two)
            await subscribe(one, scope="all")
            gateway.shutdown()
            for ws in (one, two):
                reason = await closed_with(ws)
                assert (reason.code, reason.reason) == (1001, "Server shutting down")
        await wait_until(lambda: gateway.client_count() == 0)


# --- 21-22: session.update optional fields ----------------------------------------------------


async def test_seed_21_session_update_includes_summary_and_stats(gateway: Gateway) -> None:
    stats = {"total_messages": 12, "total_cost_usd": 0.42, "duration_ms": 61000}
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, session_id="S")
            gateway.broadcaster.broadcast_session_update(
                "S", "W", "summarized", summary="Fixed the flaky test", stats=stats
            )
            assert await receive_json(ws) == {
                "type": "session.update",
                "session_id": "S",
                "lifecycle": "summarized",
                "summary": "Fixed the flaky test",
                "stats": stats,
            }


async def test_seed_22_session_update_omits_missing_fields(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, workspace_id="W")
            gateway.broadcaster.broadcast_session_update("S", "W", "capturing")
            frame = await ws.get_message()
            assert isinstance(frame, str)
            # Left off the wire entirely, not sent as null; `type` comes first.
            assert json.loads(frame) == {
                "type": "session.update",
                "session_id": "S",
                "lifecycle": "capturing",
            }
            assert frame.startswith('{"type":"session.update"')
            assert "summary" not in frame
            assert "stats" not in frame
