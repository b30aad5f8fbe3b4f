"""Typed client and server messages. They know nothing about JSON; codec.py does.

Each class carries its wire tag in `TAG`. Optional server fields default to None and are
omitted from the wire when None.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

# --- client -> server ---------------------------------------------------------------------


@attrs.frozen
class Since:
    """Where a resuming client left off on one key: the last offset it got, in which epoch."""

    offset: int
    epoch: str


@attrs.frozen
class Subscribe:
    TAG: ClassVar[str] = "subscribe"
    scope: str | None = None
    workspace_id: str | None = None
    session_id: str | None = None
    topic: str | None = None
    # Ask for the key's position in the ack, and offsets on every message (see PROTOCOL.md).
    recover: bool = False
    since: Since | None = None


@attrs.frozen
class Unsubscribe:
    TAG: ClassVar[str] = "unsubscribe"
    scope: str | None = None
    workspace_id: str | None = None
    session_id: str | None = None
    topic: str | None = None


@attrs.frozen
class Identify:
    """The credential of a connection that did not present one at the upgrade."""

    TAG: ClassVar[str] = "identify"
    token: str


@attrs.frozen
class Refresh:
    """A new token for the same user, extending the session before it expires."""

    TAG: ClassVar[str] = "refresh"
    token: str


@attrs.frozen
class Publish:
    """A client publishing on a topic (allowed by its token's pub_topics)."""

    TAG: ClassVar[str] = "publish"
    topic: str
    data: Any


@attrs.frozen
class Sync:
    """Ask for the retained state of a session (answered with `session.state`)."""

    TAG: ClassVar[str] = "sync"
    session_id: str


@attrs.frozen
class Pong:
    """The client's answer to a server ping (and the server's answer to a client ping)."""

    TAG: ClassVar[str] = "pong"


@attrs.frozen
class Ping:
    """A ping either way: the server's keepalive probe, or a client checking liveness."""

    TAG: ClassVar[str] = "ping"


ClientMessage = Subscribe | Unsubscribe | Sync | Identify | Refresh | Publish | Pong | Ping
CLIENT_MESSAGES: dict[str, type[ClientMessage]] = {
    cls.TAG: cls for cls in (Subscribe, Unsubscribe, Sync, Identify, Refresh, Publish, Pong, Ping)
}

# --- server -> client ---------------------------------------------------------------------


@attrs.frozen
class Hello:
    """Sent instead of `ready` to a connection without credentials: identify first."""

    TAG: ClassVar[str] = "hello"
    heartbeat_interval: int  # milliseconds
    identify_timeout: int  # milliseconds


@attrs.frozen
class Ready:
    TAG: ClassVar[str] = "ready"
    client_id: str
    heartbeat_interval: int  # milliseconds between server pings
    # A JWT's user, and when its session ends (Unix seconds); absent for API keys.
    user_id: str | None = None
    expires_at: float | None = None


@attrs.frozen
class Refreshed:
    TAG: ClassVar[str] = "refreshed"
    expires_at: float | None = None


@attrs.frozen
class Published:
    """The ack of a client publish: accepted by the broker, with its offset on the topic."""

    TAG: ClassVar[str] = "published"
    topic: str
    offset: int


@attrs.frozen
class SessionExpired:
    TAG: ClassVar[str] = "session.expired"


@attrs.frozen
class UserMessage:
    """A message sent to every connection of one user (send_to_user)."""

    TAG: ClassVar[str] = "user.message"
    data: Any


@attrs.frozen
class Subscribed:
    """The ack of a subscribe. A key with history also gives its position: the epoch and the
    offset of its latest message; `recovered` answers a subscribe that carried `since`."""

    TAG: ClassVar[str] = "subscribed"
    subscription: str
    epoch: str | None = None
    offset: int | None = None
    recovered: bool | None = None


@attrs.frozen
class Unsubscribed:
    TAG: ClassVar[str] = "unsubscribed"
    subscription: str


@attrs.frozen
class Error:
    TAG: ClassVar[str] = "error"
    message: str
    code: str | None = None


@attrs.frozen
class EventMessage:
    TAG: ClassVar[str] = "event"
    event: dict[str, Any]


@attrs.frozen
class SessionUpdate:
    TAG: ClassVar[str] = "session.update"
    session_id: str
    lifecycle: str
    summary: str | None = None
    stats: dict[str, Any] | None = None


@attrs.frozen
class SessionState:
    """The retained latest session update, sent to a client that subscribes or asks (sync)."""

    TAG: ClassVar[str] = "session.state"
    session_id: str
    lifecycle: str
    summary: str | None = None
    stats: dict[str, Any] | None = None


@attrs.frozen
class SessionDeleted:
    TAG: ClassVar[str] = "session.deleted"
    session_id: str


@attrs.frozen
class TopicMessage:
    """A message published on a generic topic; `data` is any JSON value, passed through."""

    TAG: ClassVar[str] = "message"
    topic: str
    data: Any
    # The publishing user, stamped by the server on a client publish (never from the client).
    user_id: str | None = None


@attrs.frozen
class RemoteUpdate:
    TAG: ClassVar[str] = "remote.update"
    remote_env_id: str
    status: str
    public_ip: str | None = None


ServerMessage = (
    Hello
    | Ready
    | Refreshed
    | Published
    | SessionExpired
    | UserMessage
    | Subscribed
    | Unsubscribed
    | Error
    | Ping
    | Pong
    | EventMessage
    | SessionUpdate
    | SessionState
    | SessionDeleted
    | TopicMessage
    | RemoteUpdate
)
