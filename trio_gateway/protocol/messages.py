"""Typed client and server messages. They know nothing about JSON; codec.py does.

Each class carries its wire tag in `TAG`. Optional server fields default to None and are
omitted from the wire when None.

A client message class is declared with `@client_message`, which files it under its tag in
`CLIENT_MESSAGES`: that table is the only list of what a client may send, and codec.py
decodes by it. A feature may declare its own messages the same way, in its own module.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import attrs


class ClientMessage:
    """Base of every message a client may send (`type` on the wire is its `TAG`)."""

    __slots__ = ()
    TAG: ClassVar[str]


class ServerMessage:
    """Base of every message the server sends."""

    __slots__ = ()
    TAG: ClassVar[str]


CLIENT_MESSAGES: dict[str, type[ClientMessage]] = {}
_C = TypeVar("_C", bound=type[ClientMessage])


def client_message(cls: _C) -> _C:
    """File a client message class under its tag; a tag is declared once."""
    if cls.TAG in CLIENT_MESSAGES:
        raise ValueError(f"client message type {cls.TAG!r} declared twice")
    CLIENT_MESSAGES[cls.TAG] = cls
    return cls


# --- client -> server ---------------------------------------------------------------------


@attrs.frozen
class Since:
    """Where a resuming client left off on one key: the last offset it got, in which epoch."""

    offset: int
    epoch: str


@client_message
@attrs.frozen
class Subscribe(ClientMessage):
    TAG: ClassVar[str] = "subscribe"
    scope: str | None = None
    workspace_id: str | None = None
    session_id: str | None = None
    topic: str | None = None
    # Ask for the key's position in the ack, and offsets on every message (see PROTOCOL.md).
    recover: bool = False
    since: Since | None = None


@client_message
@attrs.frozen
class Unsubscribe(ClientMessage):
    TAG: ClassVar[str] = "unsubscribe"
    scope: str | None = None
    workspace_id: str | None = None
    session_id: str | None = None
    topic: str | None = None


@client_message
@attrs.frozen
class Identify(ClientMessage):
    """The credential of a connection that did not present one at the upgrade."""

    TAG: ClassVar[str] = "identify"
    token: str


@client_message
@attrs.frozen
class Refresh(ClientMessage):
    """A new token for the same user, extending the session before it expires."""

    TAG: ClassVar[str] = "refresh"
    token: str


@client_message
@attrs.frozen
class Publish(ClientMessage):
    """A client publishing on a topic (allowed by its token's pub_topics)."""

    TAG: ClassVar[str] = "publish"
    topic: str
    data: Any


@client_message
@attrs.frozen
class Sync(ClientMessage):
    """Ask for the retained state of a session (answered with `session.state`)."""

    TAG: ClassVar[str] = "sync"
    session_id: str


@client_message
@attrs.frozen
class Pong(ClientMessage, ServerMessage):
    """The client's answer to a server ping (and the server's answer to a client ping)."""

    TAG: ClassVar[str] = "pong"


@client_message
@attrs.frozen
class Ping(ClientMessage, ServerMessage):
    """A ping either way: the server's keepalive probe, or a client checking liveness."""

    TAG: ClassVar[str] = "ping"


@client_message
@attrs.frozen
class Heartbeat(ClientMessage):
    """Seed 003's client heartbeat (its HEARTBEAT op, with `type` as everywhere here)."""

    TAG: ClassVar[str] = "heartbeat"


# --- server -> client ---------------------------------------------------------------------


@attrs.frozen
class HeartbeatAck(ServerMessage):
    """The answer to a client `heartbeat` (seed 003's HEARTBEAT_ACK)."""

    TAG: ClassVar[str] = "heartbeat_ack"


@attrs.frozen
class Hello(ServerMessage):
    """Sent instead of `ready` to a connection without credentials: identify first."""

    TAG: ClassVar[str] = "hello"
    heartbeat_interval: int  # milliseconds
    identify_timeout: int  # milliseconds


@attrs.frozen
class Ready(ServerMessage):
    TAG: ClassVar[str] = "ready"
    client_id: str
    heartbeat_interval: int  # milliseconds between server pings
    # A JWT's user, and when its session ends (Unix seconds); absent for API keys.
    user_id: str | None = None
    expires_at: float | None = None
    # From the connect hook: the backend's session, what it says about the user, and the
    # keys it subscribed the connection to.
    session_id: str | None = None
    info: dict[str, Any] | None = None
    subscriptions: list[str] | None = None


@attrs.frozen
class Refreshed(ServerMessage):
    TAG: ClassVar[str] = "refreshed"
    expires_at: float | None = None


@attrs.frozen
class Published(ServerMessage):
    """The ack of a client publish: accepted by the broker, with its offset on the topic."""

    TAG: ClassVar[str] = "published"
    topic: str
    offset: int


@attrs.frozen
class SessionExpired(ServerMessage):
    """The end of a session (then close 4002), in both shapes: `type` for seeds 000-004's
    clients, `event`/`payload` for seed 002's."""

    TAG: ClassVar[str] = "session.expired"
    event: str = "sessionExpired"
    payload: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class UserMessage(ServerMessage):
    """A message sent to every connection of one user (send_to_user)."""

    TAG: ClassVar[str] = "user.message"
    data: Any


@attrs.frozen
class Subscribed(ServerMessage):
    """The ack of a subscribe. A key with history also gives its position: the epoch and the
    offset of its latest message; `recovered` answers a subscribe that carried `since`."""

    TAG: ClassVar[str] = "subscribed"
    subscription: str
    epoch: str | None = None
    offset: int | None = None
    recovered: bool | None = None


@attrs.frozen
class Gap(ServerMessage):
    """Messages on a subscription may not have reached this connection live: the instance's
    Redis subscriber was cut off while they were published. Up to `offset` (in `epoch`)
    they are in history: resume with `since`, or refetch. A pattern has no offsets."""

    TAG: ClassVar[str] = "gap"
    subscription: str
    epoch: str | None = None
    offset: int | None = None


@attrs.frozen
class EpochChanged(ServerMessage):
    """A held key's history started over under a live subscription (Redis flushed or
    restarted): its new epoch, and the offset its messages now count from.
    Sent to connections that asked for recovery, before the new epoch's first message."""

    TAG: ClassVar[str] = "epoch"
    subscription: str
    epoch: str
    offset: int


@attrs.frozen
class Unsubscribed(ServerMessage):
    TAG: ClassVar[str] = "unsubscribed"
    subscription: str


@attrs.frozen
class Error(ServerMessage):
    TAG: ClassVar[str] = "error"
    message: str
    code: str | None = None


@attrs.frozen
class EventMessage(ServerMessage):
    TAG: ClassVar[str] = "event"
    event: dict[str, Any]


@attrs.frozen
class SessionUpdate(ServerMessage):
    TAG: ClassVar[str] = "session.update"
    session_id: str
    lifecycle: str
    summary: str | None = None
    stats: dict[str, Any] | None = None


@attrs.frozen
class SessionState(ServerMessage):
    """The retained latest session update, sent to a client that subscribes or asks (sync)."""

    TAG: ClassVar[str] = "session.state"
    session_id: str
    lifecycle: str
    summary: str | None = None
    stats: dict[str, Any] | None = None


@attrs.frozen
class SessionDeleted(ServerMessage):
    TAG: ClassVar[str] = "session.deleted"
    session_id: str


@attrs.frozen
class TopicMessage(ServerMessage):
    """A message published on a generic topic; `data` is any JSON value, passed through."""

    TAG: ClassVar[str] = "message"
    topic: str
    data: Any
    # The publishing user, stamped by the server on a client publish (never from the client).
    user_id: str | None = None


@attrs.frozen
class RemoteUpdate(ServerMessage):
    TAG: ClassVar[str] = "remote.update"
    remote_env_id: str
    status: str
    public_ip: str | None = None
