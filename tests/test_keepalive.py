"""Keepalive under the autojump clock over in-memory streams: exact virtual times.

The gateway starts at t0 (the virtual time `serve_in_memory` returns); its keepalive pings every
`ping_interval` seconds on a fixed grid and reaps a client that has sent no frame of any kind
for longer than `ping_interval + pong_timeout` at a ping. With the defaults (30 s + 10 s) a
silent client is closed at the second cycle, t0 + 60.

Most tests here run with `ws_ping` off: trio-websocket answers WebSocket pings by itself, so
with them on its clients are never silent. The WebSocket ping itself is tested with a
sans-IO wsproto client, which answers only when told to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    Request,
    TextMessage,
)

from trio_gateway import Config
from trio_gateway.fanout.hub import Client, Hub
from trio_gateway.fanout.outbox import Outbox
from trio_gateway.protocol.errors import PONG_TIMEOUT
from trio_gateway.protocol.frames import WS_PING_FRAME, text_frame
from trio_gateway.protocol.replies import PING_FRAME
from trio_gateway.session.keepalive import ping_frames, sweep

from .conftest import with_settings
from .helpers import (
    API_KEY,
    MemoryListener,
    closed_with,
    memory_client,
    ready,
    receive_json,
    send_json,
    serve_in_memory,
)

PING = {"type": "ping"}
PONG = {"type": "pong"}


@pytest.fixture
def config(config: Config) -> Config:
    return with_settings(config, ws_ping=False)


def elapsed(t0: float) -> float:
    return trio.current_time() - t0


async def test_pings_arrive_every_30_seconds(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        assert elapsed(t0) == 0
        for cycle in range(1, 4):
            assert await ws.get_message() == '{"type":"ping"}'
            assert elapsed(t0) == pytest.approx(30 * cycle)
            await send_json(ws, PONG)
        assert gateway.client_count() == 1


async def test_ready_announces_default_heartbeat_interval(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        greeting = await receive_json(ws)
        assert greeting["type"] == "ready"
        assert greeting["heartbeat_interval"] == 30000


async def test_answering_client_stays_connected_for_ten_minutes(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        cycle = 0
        while elapsed(t0) < 600:
            assert await receive_json(ws) == PING
            cycle += 1
            assert elapsed(t0) == pytest.approx(30 * cycle)
            await send_json(ws, PONG)
        assert cycle == 20
        # Still pinged (not closed) at the first cycle after ten minutes.
        assert await receive_json(ws) == PING
        assert elapsed(t0) == pytest.approx(630)
        assert gateway.client_count() == 1


async def test_silent_client_is_closed_at_60_seconds(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        assert gateway.client_count() == 1
        assert await receive_json(ws) == PING
        assert elapsed(t0) == pytest.approx(30)
        reason = await closed_with(ws)
        assert elapsed(t0) == pytest.approx(60)
        assert (reason.code, reason.reason) == (1008, "Pong timeout")
        assert gateway.client_count() == 0


async def test_client_answering_only_first_ping_is_reaped_at_90_seconds(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        assert await receive_json(ws) == PING
        assert elapsed(t0) == pytest.approx(30)
        await send_json(ws, PONG)
        # At 60 the last pong is 30 s old (< 40): pinged again, not reaped.
        assert await receive_json(ws) == PING
        assert elapsed(t0) == pytest.approx(60)
        # At 90 it is 60 s old (> 40): reaped.
        reason = await closed_with(ws)
        assert elapsed(t0) == pytest.approx(90)
        assert (reason.code, reason.reason) == (1008, "Pong timeout")
        assert gateway.client_count() == 0


async def test_late_joiner_follows_the_shared_ping_grid(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, config)
    await trio.sleep_until(t0 + 10)  # position the connect at t0 + 10, not a wait
    async with memory_client(listener) as ws:
        await ready(ws)
        assert await receive_json(ws) == PING
        assert elapsed(t0) == pytest.approx(30)  # one task pings everyone on one grid
        reason = await closed_with(ws)
        # Silent since connecting at 10: 50 s > 40 at the 60 s cycle.
        assert elapsed(t0) == pytest.approx(60)
        assert reason.code == 1008
        assert gateway.client_count() == 0


async def test_only_the_silent_client_is_reaped(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as alive, memory_client(listener) as silent:
        await ready(alive)
        await ready(silent)
        assert gateway.client_count() == 2
        for cycle in (1, 2):
            assert await receive_json(alive) == PING
            assert elapsed(t0) == pytest.approx(30 * cycle)
            await send_json(alive, PONG)
        reason = await closed_with(silent)
        assert reason.code == 1008
        assert elapsed(t0) == pytest.approx(60)
        assert gateway.client_count() == 1
        assert await receive_json(alive) == PING
        assert elapsed(t0) == pytest.approx(90)


async def test_custom_ping_interval_and_pong_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    config = with_settings(config, ping_interval=5, pong_timeout=2)
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        greeting = await receive_json(ws)
        assert greeting["type"] == "ready"
        assert greeting["heartbeat_interval"] == 5000
        assert await receive_json(ws) == PING
        assert elapsed(t0) == pytest.approx(5)
        # Silent 10 s > 5 + 2 at the second cycle.
        reason = await closed_with(ws)
        assert elapsed(t0) == pytest.approx(10)
        assert (reason.code, reason.reason) == (1008, "Pong timeout")
        assert gateway.client_count() == 0


async def test_custom_schedule_with_answered_pings(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    config = with_settings(config, ping_interval=5, pong_timeout=2)
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        for cycle in (1, 2, 3):
            assert await receive_json(ws) == PING
            assert elapsed(t0) == pytest.approx(5 * cycle)
            await send_json(ws, PONG)
        assert await receive_json(ws) == PING
        assert elapsed(t0) == pytest.approx(20)
        # Last pong at 15; pinged at 20 (5 s old), reaped at 25 (10 s > 7).
        reason = await closed_with(ws)
        assert elapsed(t0) == pytest.approx(25)
        assert reason.code == 1008
        assert gateway.client_count() == 0


async def test_fractional_ping_interval_is_rounded_to_milliseconds(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    _, listener = await serve_in_memory(nursery, with_settings(config, ping_interval=0.25))
    async with memory_client(listener) as ws:
        greeting = await receive_json(ws)
        assert greeting["heartbeat_interval"] == 250
        assert await receive_json(ws) == PING
        assert elapsed(t0) == pytest.approx(0.25)


async def test_client_ping_gets_pong(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        await send_json(ws, PING)
        assert await ws.get_message() == '{"type":"pong"}'
        assert elapsed(t0) == 0
        assert gateway.client_count() == 1


async def test_client_ping_counts_as_alive(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    # The client never answers a server ping, but its own ping at 20 is a frame: at 60 it
    # was seen 40 s ago (not more than 40), at 90 70 s ago.
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        await trio.sleep_until(t0 + 20)  # positions the client's ping, not a wait
        await send_json(ws, PING)
        assert await receive_json(ws) == PONG
        assert await receive_json(ws) == PING
        assert elapsed(t0) == pytest.approx(30)
        assert await receive_json(ws) == PING
        assert elapsed(t0) == pytest.approx(60)
        reason = await closed_with(ws)
        assert elapsed(t0) == pytest.approx(90)
        assert (reason.code, reason.reason) == (1008, "Pong timeout")
        assert gateway.client_count() == 0


async def test_seed_003_heartbeat_is_acked_and_counts(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    # Seed 003's client heartbeats every 30 s (here just after each server ping) and never
    # answers the server's pings: it stays, each heartbeat answered at once.
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        for cycle in range(1, 11):
            assert await receive_json(ws) == PING
            assert elapsed(t0) == pytest.approx(30 * cycle)
            await send_json(ws, {"type": "heartbeat"})
            assert await ws.get_message() == '{"type":"heartbeat_ack"}'
            assert elapsed(t0) == pytest.approx(30 * cycle)
        assert gateway.client_count() == 1


async def test_any_message_counts_as_alive(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        assert await receive_json(ws) == PING
        await send_json(ws, {"type": "subscribe", "scope": "all"})
        assert await receive_json(ws) == {"type": "subscribed", "subscription": "all"}
        # Seen at 30: pinged at 60, reaped at 90 (60 s > 40).
        assert await receive_json(ws) == PING
        assert elapsed(t0) == pytest.approx(60)
        reason = await closed_with(ws)
        assert elapsed(t0) == pytest.approx(90)
        assert reason.code == 1008
        assert gateway.client_count() == 0


async def test_client_websocket_ping_counts_as_alive(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    # A WebSocket-level ping from the client (answered with a pong frame by the server,
    # which trio-websocket's ping() waits for) keeps it connected like a JSON pong.
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        for cycle in range(1, 11):
            assert await receive_json(ws) == PING
            assert elapsed(t0) == pytest.approx(30 * cycle)
            await ws.ping()
        assert gateway.client_count() == 1


# --- WebSocket-level pings (ws_ping, on by default), seen by a sans-IO client -----------------


@asynccontextmanager
async def wsproto_client(listener: MemoryListener) -> AsyncIterator[SansIOClient]:
    stream = await listener.connect()
    client = SansIOClient(stream)
    try:
        await client.send(Request(host="gateway.test", target=f"/api/ws?token={API_KEY}"))
        assert isinstance(await client.next_event(), AcceptConnection)
        yield client
    finally:
        await trio.aclose_forcefully(stream)


class SansIOClient:
    """A WebSocket client that does nothing by itself: it answers no ping unless told to."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = WSConnection(ConnectionType.CLIENT)
        self._events: list[Event] = []

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.conn.send(event))

    async def next_event(self) -> Event:
        while not self._events:
            data = await self.stream.receive_some()
            self.conn.receive_data(bytes(data) or None)
            self._events.extend(self.conn.events())
        return self._events.pop(0)


async def test_ws_ping_precedes_each_json_ping(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    _, listener = await serve_in_memory(nursery, with_settings(config, ws_ping=True))
    async with wsproto_client(listener) as client:
        ready_frame = await client.next_event()
        assert isinstance(ready_frame, TextMessage)
        for cycle in (1, 2):
            ping = await client.next_event()
            assert isinstance(ping, Ping)
            assert elapsed(t0) == pytest.approx(30 * cycle)
            json_ping = await client.next_event()
            assert isinstance(json_ping, TextMessage)
            assert json_ping.data == '{"type":"ping"}'
            await client.send(ping.response())


async def test_client_answering_only_ws_pings_stays_for_ten_minutes(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    # What a browser does for a page without keepalive code: pong frames, no JSON.
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, with_settings(config, ws_ping=True))
    async with wsproto_client(listener) as client:
        assert isinstance(await client.next_event(), TextMessage)  # ready
        pings = 0
        while elapsed(t0) < 600:
            event = await client.next_event()
            if isinstance(event, Ping):
                pings += 1
                await client.send(event.response())
        assert pings == 20
        assert gateway.client_count() == 1


async def test_client_answering_nothing_is_reaped_with_ws_ping_on(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, with_settings(config, ws_ping=True))
    async with wsproto_client(listener) as client:
        seen: list[type[Event]] = []
        while not isinstance(event := await client.next_event(), CloseConnection):
            seen.append(type(event))
        assert elapsed(t0) == pytest.approx(60)
        assert (event.code, event.reason) == (1008, "Pong timeout")
        assert seen == [TextMessage, Ping, TextMessage]  # ready, then one cycle's pings
        assert gateway.client_count() == 0


async def test_unsolicited_pong_is_accepted_silently(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    t0 = trio.current_time()
    gateway, listener = await serve_in_memory(nursery, config)
    async with memory_client(listener) as ws:
        await ready(ws)
        await send_json(ws, PONG)
        # No reply to a pong: the next frame is the server's first ping.
        assert await receive_json(ws) == PING
        assert elapsed(t0) == pytest.approx(30)
        assert gateway.client_count() == 1


# --- sweep, directly -----------------------------------------------------------------------


def hand_built_client(
    hub: Hub, client_id: str, last_seen: float, depth: int = 4
) -> tuple[Client, Outbox]:
    outbox = Outbox(depth)
    client = Client(id=client_id, outbox=outbox, connected_at=0.0, last_seen=last_seen)
    hub.add(client)
    return client, outbox


def outbox_frames(outbox: Outbox) -> list[bytes]:
    return outbox.take_nowait()


def test_sweep_pings_the_fresh_and_reaps_the_stale() -> None:
    hub = Hub()
    fresh, fresh_out = hand_built_client(hub, "fresh", last_seen=100.0)
    boundary, boundary_out = hand_built_client(hub, "boundary", last_seen=60.0)
    stale, stale_out = hand_built_client(hub, "stale", last_seen=59.5)
    ancient, ancient_out = hand_built_client(hub, "ancient", last_seen=0.0)

    sweep(hub, now=100.0, stale_after=40.0)

    assert text_frame('{"type":"ping"}') == PING_FRAME
    assert outbox_frames(fresh_out) == [PING_FRAME]
    # Silent for exactly stale_after is not yet stale: the rule is "longer than".
    assert outbox_frames(boundary_out) == [PING_FRAME]
    assert outbox_frames(stale_out) == []
    assert outbox_frames(ancient_out) == []
    for client in (fresh, boundary):
        assert client.close_reason is None
    for client in (stale, ancient):
        assert client.close_reason == PONG_TIMEOUT
        assert client.reader_scope.cancel_called
        assert client.flush_before_close is False
    # sweep only asks to close; the connection task removes the client from the hub.
    assert len(hub) == 4


def test_sweep_does_not_ping_a_closing_client() -> None:
    hub = Hub()
    client, out = hand_built_client(hub, "c", last_seen=10.0)
    client.close(PONG_TIMEOUT)
    sweep(hub, now=20.0, stale_after=40.0)
    assert outbox_frames(out) == []


def test_sweep_with_full_outbox_closes_slow_consumer() -> None:
    hub = Hub()
    client, out = hand_built_client(hub, "c", last_seen=10.0, depth=1)
    client.send(b"backlog")
    sweep(hub, now=20.0, stale_after=40.0)
    assert client.close_reason is not None
    assert client.close_reason.code == 4008
    assert outbox_frames(out) == [b"backlog"]


def test_sweep_first_reason_wins_when_stale_client_already_closing() -> None:
    hub = Hub()
    client, _ = hand_built_client(hub, "c", last_seen=0.0, depth=1)
    client.send(b"backlog")
    client.send(b"overflow")  # closes with 4008 first
    sweep(hub, now=100.0, stale_after=40.0)
    assert client.close_reason is not None
    assert client.close_reason.code == 4008


def test_ping_frames_put_the_websocket_ping_first(config: Config) -> None:
    assert ping_frames(with_settings(config, ws_ping=True)) == WS_PING_FRAME + PING_FRAME
    assert ping_frames(with_settings(config, ws_ping=False)) == PING_FRAME
    assert WS_PING_FRAME == b"\x89\x00"
    assert Config().ws_ping is True


def test_sweep_on_empty_hub_is_a_no_op() -> None:
    hub = Hub()
    sweep(hub, now=1e9, stale_after=40.0)
    assert hub.clients == {}
