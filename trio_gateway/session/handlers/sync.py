"""sync: the retained state of one session, asked for directly (answered `session.state`)."""

from __future__ import annotations

from ...broker import BrokerUnavailable
from ...fanout.hub import Client
from ...protocol.codec import ECHO_LIMIT
from ...protocol.errors import ProtocolError
from ...protocol.frames import text_frame
from ...protocol.messages import Sync
from ...protocol.routing import encodable, session_key
from ..context import GatewayContext
from ..registry import Registry


async def sync(client: Client, context: GatewayContext, message: Sync) -> None:
    if not message.session_id or not encodable(message.session_id):
        raise ProtocolError("Invalid sync: session_id must be a non-empty string")
    try:
        state = await context.broker.state(session_key(message.session_id))
    except BrokerUnavailable:
        raise ProtocolError("Broker unavailable: try again later") from None
    if state is None:
        raise ProtocolError(f"No state retained for session {message.session_id[:ECHO_LIMIT]}")
    client.send(text_frame(state))


def install(registry: Registry) -> None:
    registry.register(Sync, sync)
