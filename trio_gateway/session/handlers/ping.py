"""ping, pong and heartbeat: a client's liveness checks are answered; its pong is accepted.

None of them feeds the keepalive by itself: every frame a client sends counts as a sign of
life (`Client.admit`, before any message is decoded), so a pong needs no handling beyond
not being an unknown message.
"""

from __future__ import annotations

from ...fanout.hub import Client
from ...protocol.messages import Heartbeat, Ping, Pong
from ...protocol.replies import HEARTBEAT_ACK_FRAME, PONG_FRAME
from ..context import GatewayContext
from ..registry import Registry


def ping(client: Client, context: GatewayContext, message: Ping) -> None:
    client.send(PONG_FRAME)


def heartbeat(client: Client, context: GatewayContext, message: Heartbeat) -> None:
    client.send(HEARTBEAT_ACK_FRAME)


def pong(client: Client, context: GatewayContext, message: Pong) -> None:
    pass


def install(registry: Registry) -> None:
    registry.register(Ping, ping)
    registry.register(Pong, pong)
    registry.register(Heartbeat, heartbeat)
