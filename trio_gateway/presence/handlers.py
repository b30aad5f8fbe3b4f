"""The client side of presence and typing: `presence`, `presence.get`, `typing`, and the
presence.state that follows a subscribe ack on a presence topic.

Plugs into the seams: message handlers and a subscribe middleware in the registry, and
lifecycle hooks (the state of topics the connect hook subscribed a client to, after `ready`;
a typist's last connection going stops its indicator). Must not: track connections itself
(tracker.py follows the hub) or reach the store except through the service's parts.
"""

from __future__ import annotations

from ..broker import BrokerUnavailable
from ..fanout.hub import Client
from ..protocol.codec import ECHO_LIMIT
from ..protocol.errors import FORBIDDEN, UNAVAILABLE, ProtocolError
from ..protocol.frames import text_frame
from ..protocol.messages import Subscribe
from ..protocol.presence import (
    START,
    STATUSES,
    TYPING_STATES,
    PresenceGet,
    PresenceUpdate,
    Typing,
    status_set_text,
)
from ..protocol.routing import encodable, subscription_key
from ..protocol.topics import is_pattern, topic_problem
from ..session.auth import may_subscribe
from ..session.context import GatewayContext
from ..session.lifecycle import Lifecycle
from ..session.registry import Message, Next, Registry
from .service import Presence
from .tracker import member_id

_UNAVAILABLE = "Broker unavailable: try again later"


def _topic(verb: str, client: Client, topic: str) -> str:
    """`topic` once it is a topic (not a pattern) the client may subscribe to."""
    if not encodable(topic):
        raise ProtocolError(f"Invalid {verb}: topic must be valid Unicode text")
    if is_pattern(topic):
        raise ProtocolError(f"Invalid {verb}: wildcard topics have no presence or typing")
    problem = topic_problem(topic)
    if problem is not None:
        raise ProtocolError(f"Invalid {verb}: {problem}")
    if not may_subscribe(client.identity, topic):
        raise ProtocolError(f"Forbidden: may not subscribe to {topic[:ECHO_LIMIT]}", FORBIDDEN)
    return topic


def install(registry: Registry, lifecycle: Lifecycle, presence: Presence) -> None:
    tracker, typists = presence.tracker, presence.typists

    async def set_status(client: Client, context: GatewayContext, message: PresenceUpdate) -> None:
        if message.status not in STATUSES:
            raise ProtocolError(f"Invalid presence: status must be one of {', '.join(STATUSES)}")
        if not tracker.enabled:
            raise ProtocolError("Invalid presence: presence is not enabled on this gateway")
        try:
            await presence.store.set_status(member_id(client), message.status)
        except BrokerUnavailable:
            raise ProtocolError(_UNAVAILABLE, UNAVAILABLE) from None
        client.send(text_frame(status_set_text(message.status)))

    async def get(client: Client, context: GatewayContext, message: PresenceGet) -> None:
        topic = _topic("presence.get", client, message.topic)
        if not tracker.tracks(topic):
            raise ProtocolError(
                f"Invalid presence.get: presence is not tracked on {topic[:ECHO_LIMIT]}"
            )
        try:
            frame = await tracker.state_frame(topic)
        except BrokerUnavailable:
            raise ProtocolError(_UNAVAILABLE, UNAVAILABLE) from None
        client.send(frame)

    async def typing(client: Client, context: GatewayContext, message: Typing) -> None:
        if message.state not in TYPING_STATES:
            raise ProtocolError('Invalid typing: state must be "start" or "stop"')
        topic = _topic("typing", client, message.topic)
        try:
            if message.state == START:
                await typists.start(client, topic)
            else:
                await typists.stop(client, topic)
        except BrokerUnavailable:
            raise ProtocolError(_UNAVAILABLE, UNAVAILABLE) from None

    async def state_after_ack(
        client: Client, context: GatewayContext, message: Message, call_next: Next
    ) -> None:
        await call_next(client, context, message)
        if isinstance(message, Subscribe):
            tracker.send_state(client, subscription_key(message))

    def bound_states(client: Client) -> None:
        for key in client.identity.subscriptions:
            tracker.send_state(client, key)

    registry.register(PresenceUpdate, set_status)
    registry.register(PresenceGet, get)
    registry.register(Typing, typing)
    lifecycle.on_disconnect(typists.disconnected)
    if tracker.enabled:
        registry.use(state_after_ack)
        lifecycle.on_connect(bound_states)
