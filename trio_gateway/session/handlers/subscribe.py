"""subscribe and unsubscribe: permission, limits, and the ack ordered with what it enables.

A live subscribe is acked once its key is live on this instance (the broker says so). A
subscribe that asks for a position or history (`recover`, `since`) or a session key (whose
latest state comes first) fetches it from the broker while the hub keeps what is published
meanwhile aside, then sends the ack, the replay and what was kept, nothing lost or doubled.
Must not: write to the socket other than through `client.send`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ...broker import BrokerUnavailable
from ...fanout.hub import Client
from ...fanout.publication import Position
from ...observability.jsonlog import fields
from ...protocol.codec import ECHO_LIMIT, encode
from ...protocol.errors import FORBIDDEN, TOO_MANY, ProtocolError
from ...protocol.frames import text_frame
from ...protocol.messages import Since, Subscribe, Subscribed, Unsubscribe, Unsubscribed
from ...protocol.routing import (
    ALL,
    SESSION_PREFIX,
    is_pattern_key,
    subscription_key,
    unsubscription_key,
)
from ..auth import may_subscribe
from ..context import GatewayContext
from ..pattern_quota import check_pattern
from ..registry import Registry

log = logging.getLogger("trio_gateway.session")


async def subscribe(client: Client, context: GatewayContext, message: Subscribe) -> None:
    hub, config = context.hub, context.config
    key = subscription_key(message)
    if not may_subscribe(client.identity, key):
        raise ProtocolError(f"Forbidden: may not subscribe to {key[:ECHO_LIMIT]}", FORBIDDEN)
    if key not in client.subscriptions and len(client.subscriptions) >= config.max_subscriptions:
        raise ProtocolError(
            f"Too many subscriptions: at most {config.max_subscriptions} per connection",
            TOO_MANY,
        )
    check_pattern(config, hub.patterns, client.subscriptions, key)
    recover = message.recover or message.since is not None
    if is_pattern_key(key) and recover:
        raise ProtocolError(
            "Invalid subscribe: wildcard topics are live only (no since or recover)"
        )
    # Subscribing is a benchmark hot path: with debug off, the guard is all it costs.
    if log.isEnabledFor(logging.DEBUG):
        log.debug("subscribe", extra=fields(client_id=client.id, key=key, recover=recover))
    if recover:
        client.offsets = True
    elif is_pattern_key(key) or not key.startswith(SESSION_PREFIX):
        hub.subscribe(client, key)
        # Acked from the broker's side the moment the key is live, ahead of any message it
        # brings (those reach the client straight through the hub).
        ack = text_frame(encode(Subscribed(key)))
        await when_live(context, key, lambda: client.send(ack))
        return
    await _subscribe_with_position(client, context, key, message.since, recover=recover)


def unsubscribe(client: Client, context: GatewayContext, message: Unsubscribe) -> None:
    maybe_key = unsubscription_key(message)
    if log.isEnabledFor(logging.DEBUG):
        # key None: every subscription of the client.
        log.debug("unsubscribe", extra=fields(client_id=client.id, key=maybe_key))
    if maybe_key is None:
        context.hub.unsubscribe_all(client)
        client.send(text_frame(encode(Unsubscribed(ALL))))
    else:
        context.hub.unsubscribe(client, maybe_key)
        client.send(text_frame(encode(Unsubscribed(maybe_key))))


async def _subscribe_with_position(
    client: Client,
    context: GatewayContext,
    key: str,
    since: Since | None,
    *,
    recover: bool,
) -> None:
    """Subscribe after asking the broker where `key` stands (and, for a session, its state).

    What is published meanwhile is kept aside by the hub, then sent after the ack and any
    replay, minus what the replay already covered: nothing lost or doubled on `key`.
    """
    hub = context.hub
    hub.begin_recovery(client, key)
    position: Position | None = None
    try:
        await when_live(context, key, lambda: None)
        position = await context.broker.fetch(key, since, state=key.startswith(SESSION_PREFIX))
    except BrokerUnavailable:
        pass
    # No checkpoint from here on: ack, replay and what was kept aside go out in one piece,
    # and as one queue entry, so a replay of up to history_size messages is not mistaken for
    # a slow consumer (the outbox limit counts entries).
    kept = hub.end_recovery(client, key)
    context.metrics.fetched(None if since is None else position is not None and position.recovered)
    if position is None:
        # The broker is down: live from now on, and a resume cannot be vouched for.
        ack = Subscribed(key, recovered=False if since is not None else None)
        client.send(b"".join([text_frame(encode(ack)), *(each.frame for each in kept)]))
        return
    if recover:
        ack = Subscribed(key, position.epoch, position.offset, position.recovered)
    else:
        ack = Subscribed(key)
    frames = [text_frame(encode(ack))]
    if position.recovered:
        frames += [each.frame for each in position.replay]
    elif position.state is not None:
        # A client starting afresh gets the latest state first; one that recovered got every
        # update it missed instead, and an older state now would go back in time.
        frames.append(text_frame(position.state))
    frames += [each.frame for each in kept if each.offset > position.offset]
    client.send(frames[0] if len(frames) == 1 else b"".join(frames))


async def when_live(context: GatewayContext, key: str, on_live: Callable[[], object]) -> None:
    """Run `on_live` once `key` is live on this instance, or after `request_timeout`."""
    done = trio.Event()

    def fire() -> None:
        if not done.is_set():
            done.set()
            on_live()

    context.broker.when_live(key, fire)
    with trio.move_on_after(context.config.request_timeout):
        await done.wait()
    # Redis too slow to confirm: go on; the channel still comes up when Redis answers.
    fire()


def install(registry: Registry) -> None:
    registry.register(Subscribe, subscribe)
    registry.register(Unsubscribe, unsubscribe)
