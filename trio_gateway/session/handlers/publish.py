"""publish from a client: permission (its token's pub_topics), then acked with the offset.

Must not: publish around the broadcaster; the ack waits until the broker has accepted it.
"""

from __future__ import annotations

from ...broker import BrokerUnavailable, PublishOutcomeUnknown
from ...fanout.broadcaster import GatewayClosed, topic_publication
from ...fanout.hub import Client
from ...protocol.codec import ECHO_LIMIT, encode
from ...protocol.errors import FORBIDDEN, OUTCOME_UNKNOWN, UNAVAILABLE, ProtocolError
from ...protocol.frames import text_frame
from ...protocol.messages import Publish, Published
from ..auth import may_publish
from ..context import GatewayContext
from ..registry import Registry


async def publish(client: Client, context: GatewayContext, message: Publish) -> None:
    if not may_publish(client.identity, message.topic):
        raise ProtocolError(
            f"Forbidden: may not publish on {message.topic[:ECHO_LIMIT]}", FORBIDDEN
        )
    try:
        publication = topic_publication(message.topic, message.data, client.identity.user_id)
    except ValueError as exc:
        raise ProtocolError(f"Invalid publish: {exc}") from None
    try:
        (offsets,) = await context.broadcaster.send(publication)
    except PublishOutcomeUnknown:
        raise ProtocolError(
            "Publish outcome unknown: the broker did not confirm it", OUTCOME_UNKNOWN
        ) from None
    except (BrokerUnavailable, GatewayClosed):
        raise ProtocolError(
            "Broker unavailable: not published; try again later", UNAVAILABLE
        ) from None
    client.send(text_frame(encode(Published(message.topic, offsets[0]))))


def install(registry: Registry) -> None:
    registry.register(Publish, publish)
