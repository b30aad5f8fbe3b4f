"""The one keepalive task for all connections: ping on a fixed cycle, reap the silent.

Owns the ping schedule and the staleness rule: a client that has sent no frame at all (no
message, no ping or pong, JSON or WebSocket-level) for longer than `stale_after` at a cycle
is closed 1008; every other client gets the JSON `ping` and, with `ws_ping`, a
WebSocket-level ping ahead of it in the same write, which browsers answer by themselves.
The WebSocket ping goes first so that a client library has answered it by the time its
application sees the JSON ping: trio-websocket 0.12 fails if a ping arrives after it sent
its own close (python-trio/trio-websocket#184), and an application often closes in
response to a message. Liveness is a timestamp on the client (`Client.last_seen`), not a
task or a timer each.

Must not close sockets itself: it asks a Client to close (session/connection.py carries it
out). It reads time only from trio, so tests run whole cycles under the autojump clock.
"""

from __future__ import annotations

import logging

import trio

from ..fanout.hub import Hub
from ..observability.jsonlog import fields
from ..protocol.errors import PONG_TIMEOUT
from ..protocol.frames import WS_PING_FRAME
from ..protocol.replies import PING_FRAME
from ..runtime.config import Config

log = logging.getLogger("trio_gateway.keepalive")


def ping_frames(config: Config) -> bytes:
    """What each live client is sent at a cycle: the WebSocket ping, then the JSON one."""
    return WS_PING_FRAME + PING_FRAME if config.ws_ping else PING_FRAME


def sweep(hub: Hub, now: float, stale_after: float, ping: bytes = PING_FRAME) -> None:
    """One keepalive cycle: reap clients silent for longer than `stale_after`, queue the
    rest `ping`.

    The pings are queued like a fan-out and written by the flusher (fanout/flusher.py), a
    slice of clients at a time with other tasks running between slices: written here, one
    cycle over 20,000 connections would hold the event loop for some 100 ms.
    """
    dirty = hub.flusher.dirty
    listed = 0
    for client in tuple(hub.clients.values()):
        silent_for = now - client.last_seen
        if silent_for > stale_after:
            log.info(
                "client stale, closing",
                extra=fields(client_id=client.id, silent_for=round(silent_for, 3)),
            )
            client.close(PONG_TIMEOUT)
        elif client.stage(ping):
            dirty.append(client.outbox)
            listed += 1
    hub.flusher.queued(listed)


async def run_keepalive(
    hub: Hub, config: Config, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Every `ping_interval` seconds, run `sweep`. Cycles keep to a fixed grid (no drift)."""
    deadline = trio.current_time()
    ping = ping_frames(config)
    task_status.started()
    while True:
        deadline += config.ping_interval
        await trio.sleep_until(deadline)
        sweep(hub, trio.current_time(), config.stale_after, ping)
