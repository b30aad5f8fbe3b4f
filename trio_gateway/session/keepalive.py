"""The one keepalive task for all connections: ping on a fixed cycle, reap the silent.

Owns the ping schedule and the staleness rule. Must not close sockets itself: it asks a
Client to close (session/connection.py carries it out). It reads time only from trio, so
tests run whole cycles under the autojump clock.
"""

from __future__ import annotations

import logging

import trio

from ..fanout.hub import Hub
from ..observability.jsonlog import fields
from ..protocol.errors import PONG_TIMEOUT
from ..protocol.replies import PING_FRAME
from ..runtime.config import Config

log = logging.getLogger("trio_gateway.keepalive")


def sweep(hub: Hub, now: float, stale_after: float) -> None:
    """One keepalive cycle: reap clients silent for longer than `stale_after`, ping the rest."""
    for client in tuple(hub.clients.values()):
        silent_for = now - client.last_pong
        if silent_for > stale_after:
            log.info(
                "client stale, closing",
                extra=fields(client_id=client.id, silent_for=round(silent_for, 3)),
            )
            client.close(PONG_TIMEOUT)
        else:
            client.send(PING_FRAME)


async def run_keepalive(
    hub: Hub, config: Config, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Every `ping_interval` seconds, run `sweep`. Cycles keep to a fixed grid (no drift)."""
    deadline = trio.current_time()
    task_status.started()
    while True:
        deadline += config.ping_interval
        await trio.sleep_until(deadline)
        sweep(hub, trio.current_time(), config.stale_after)
