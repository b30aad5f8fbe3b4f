"""ping and pong: a client's liveness check is answered; its pong feeds the keepalive."""

from __future__ import annotations

import trio

from ...fanout.hub import Client
from ...protocol.messages import Ping, Pong
from ...protocol.replies import PONG_FRAME
from ..context import GatewayContext
from ..registry import Registry


def ping(client: Client, context: GatewayContext, message: Ping) -> None:
    client.send(PONG_FRAME)


def pong(client: Client, context: GatewayContext, message: Pong) -> None:
    client.last_pong = trio.current_time()


def install(registry: Registry) -> None:
    registry.register(Ping, ping)
    registry.register(Pong, pong)
