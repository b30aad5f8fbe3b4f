"""The gateway's settings as one frozen value, with validation. Pure: reads no files or env.

Every setting's unit and reason is documented in docs/OPERATIONS.md. cli.py builds a Config
from flags, environment and TOML; tests build one directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import attrs

from ..protocol.topics import pattern_problem


class ConfigError(ValueError):
    """An invalid setting; the message names it (`port: must be between 0 and 65535`)."""


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{attribute.name}: must be greater than 0, got {value!r}")


def _port(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{attribute.name}: must be between 0 and 65535, got {value!r}")


def _keys(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for key in value:
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"{attribute.name}: keys must be non-empty strings")


REDIS_SCHEMES = ("redis://", "rediss://")


def _redis_url(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and not value.startswith(REDIS_SCHEMES):
        # Only the scheme is shown: the rest of the URL may hold a password.
        scheme = value.partition("://")[0] if "://" in value else "(none)"
        raise ConfigError(
            f"{attribute.name}: must start with redis:// or rediss://, got scheme {scheme!r}"
        )


def _prefix(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if any(character.isspace() for character in value):
        raise ConfigError(f"{attribute.name}: must not contain whitespace, got {value!r}")


def _optional_text(
    instance: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None and not value.strip():
        raise ConfigError(f"{attribute.name}: must not be empty")


def _key_tuple(keys: Iterable[str]) -> tuple[str, ...]:
    return tuple(keys)


def _patterns(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for pattern in value:
        problem = pattern_problem(pattern) if isinstance(pattern, str) else "must be a string"
        if problem is not None:
            raise ConfigError(f"{attribute.name}: {problem}, got {pattern!r}")


HTTP_SCHEMES = ("http://", "https://")


def _backend_url(
    instance: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None and (not value.startswith(HTTP_SCHEMES) or len(value) <= 8):
        # Only the scheme is shown: the rest of the URL may hold credentials.
        scheme = value.partition("://")[0] if "://" in value else "(none)"
        raise ConfigError(
            f"{attribute.name}: must be an http:// or https:// URL, got scheme {scheme!r}"
        )


def _paths(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if not value:
        raise ConfigError(f"{attribute.name}: at least one path is required")
    for path in value:
        if (
            not isinstance(path, str)
            or not path.startswith("/")
            or any(character.isspace() or character in "?#" for character in path)
        ):
            raise ConfigError(
                f"{attribute.name}: each path must start with / and hold no spaces, ? or #, "
                f"got {path!r}"
            )


@attrs.frozen(kw_only=True)
class Config:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8000, validator=_port)
    # Accepted tokens for WebSocket clients and HTTP publishers. Empty means nobody is let in;
    # the CLI generates an ephemeral key instead of starting with an empty tuple.
    api_keys: tuple[str, ...] = attrs.field(default=(), converter=_key_tuple, validator=_keys)
    # Largest client message in bytes; bigger ones close the connection with 1009.
    max_message_size: int = attrs.field(default=64 * 1024, validator=_positive)
    # Seconds between keepalive pings; also announced to clients as heartbeat_interval.
    ping_interval: float = attrs.field(default=30.0, validator=_positive)
    # Grace in seconds beyond one ping interval before a silent client is reaped (30 + 10 = 40).
    pong_timeout: float = attrs.field(default=10.0, validator=_positive)
    # Outgoing frames buffered per client; overflowing it closes that client with 4008.
    queue_depth: int = attrs.field(default=256, validator=_positive)
    # Publications buffered between publishers and the publisher task (which hands them to
    # the broker).
    publish_queue_depth: int = attrs.field(default=4096, validator=_positive)
    # Most subscriptions one connection may hold; bounds memory per client.
    max_subscriptions: int = attrs.field(default=1000, validator=_positive)
    # Seconds a client has to send a whole HTTP request or complete the WebSocket handshake,
    # and the longest an idle keep-alive HTTP connection is kept open.
    request_timeout: float = attrs.field(default=10.0, validator=_positive)
    # Largest HTTP request body in bytes; bigger ones get 413.
    max_body_size: int = attrs.field(default=1024 * 1024, validator=_positive)
    # Seconds a close handshake may take before the socket is dropped.
    close_timeout: float = attrs.field(default=2.0, validator=_positive)
    # Seconds a graceful shutdown may spend flushing queues before cancelling everything.
    drain_timeout: float = attrs.field(default=10.0, validator=_positive)
    # Serve /api/echo, which sends every client message straight back through the same
    # reader and writer as real clients: for RFC 6455 conformance runs (Autobahn), not
    # production, so it is off unless asked for.
    enable_echo: bool = False
    # JWT verification: an HS256 shared secret, or the path of a PEM public key (RSA for
    # RS256, EC P-256 for ES256). The algorithm follows from this, never from the token.
    jwt_secret: str | None = attrs.field(default=None, validator=_optional_text)
    jwt_public_key: str | None = attrs.field(default=None, validator=_optional_text)
    # When set, a JWT's aud / iss must equal them.
    jwt_audience: str | None = attrs.field(default=None, validator=_optional_text)
    jwt_issuer: str | None = attrs.field(default=None, validator=_optional_text)
    # Accept JWTs without an exp claim (sessions that never expire): off by default.
    jwt_optional_exp: bool = False
    # Name of a cookie that may carry the token at the upgrade (browsers); None: not read.
    auth_cookie: str | None = attrs.field(default=None, validator=_optional_text)
    # Answer bad credentials at the upgrade with HTTP 401 instead of accepting, then closing
    # with 4001.
    reject_at_upgrade: bool = False
    # Origins a browser may open a WebSocket from (exact "scheme://host[:port]"); empty: any.
    allowed_origins: tuple[str, ...] = attrs.field(
        default=(), converter=_key_tuple, validator=_keys
    )
    # Seconds a connection without credentials has to send identify before 4001.
    identify_timeout: float = attrs.field(default=5.0, validator=_positive)
    # Messages kept per key (topic, workspace, session, "all") for clients that resume.
    history_size: int = attrs.field(default=100, validator=_positive)
    # Seconds a message stays in history; a resume needing an older one gets recovered=false.
    history_ttl: float = attrs.field(default=300.0, validator=_positive)
    # Seconds the latest session.update of a session is retained for session.state.
    state_ttl: float = attrs.field(default=3600.0, validator=_positive)
    # Where the broker lives: None runs the in-memory broker (one process); a
    # redis://[:password@]host:port/db or rediss:// URL makes instances share one Redis.
    redis_url: str | None = attrs.field(default=None, validator=_redis_url)
    # Prepended to every Redis channel name, so several deployments can share one Redis.
    redis_prefix: str = attrs.field(default="trio-gateway:", validator=_prefix)
    # At startup, keep retrying an unreachable Redis (with backoff) instead of exiting.
    redis_wait: bool = False
    # Paths WebSocket clients connect on (seeds use /api/ws, /ws and /ws/gateway).
    ws_paths: tuple[str, ...] = attrs.field(
        default=("/api/ws",), converter=_key_tuple, validator=_paths
    )
    # The backend that runs commands the gateway has no in-process handler for: each call is
    # POSTed there as JSON; None: such commands are unknown.
    command_url: str | None = attrs.field(default=None, validator=_backend_url)
    # Seconds a command (in-process or at command_url) may take before it fails with timeout.
    command_timeout: float = attrs.field(default=10.0, validator=_positive)
    # Commands one connection may have running at once; more are refused with too_many.
    max_inflight_commands: int = attrs.field(default=8, validator=_positive)
    # The backend asked who a token belongs to when it is neither an API key nor a valid JWT
    # (opaque session tokens); None: such tokens are refused.
    connect_url: str | None = attrs.field(default=None, validator=_backend_url)
    # Seconds the connect hook may take; beyond it the client is closed 1013 (try again).
    connect_timeout: float = attrs.field(default=5.0, validator=_positive)
    # Topic patterns whose subscribers are tracked as present (presence.state / .diff);
    # empty: presence is off.
    presence_topics: tuple[str, ...] = attrs.field(
        default=(), converter=_key_tuple, validator=_patterns
    )
    # Most seconds presence changes on a topic are gathered into one presence.diff.
    presence_diff_interval: float = attrs.field(default=0.1, validator=_positive)
    # Seconds a user's last connection on a topic may be gone before they leave (a reload).
    presence_grace: float = attrs.field(default=5.0, validator=_positive)
    # Seconds another instance's members outlive it once it stops renewing them (Redis).
    presence_ttl: float = attrs.field(default=30.0, validator=_positive)
    # Seconds a typing start lasts without being sent again; one broadcast per this.
    typing_ttl: float = attrs.field(default=10.0, validator=_positive)
    # A bearer token that may read /metrics besides the API keys (a scraper's); never logged.
    metrics_token: str | None = attrs.field(default=None, validator=_optional_text)
    # Serve /metrics without credentials (a scrape network the operator trusts).
    metrics_public: bool = False
    # Seconds an instance stays listed by /api/nodes after its last heartbeat (Redis); it
    # sends one every third of this.
    node_ttl: float = attrs.field(default=15.0, validator=_positive)
    # Processes sharing the port (SO_REUSEPORT); more than 1 needs redis_url.
    workers: int = attrs.field(default=1, validator=_positive)
    # Set SO_REUSEPORT on the listening socket, so other processes may bind the same port.
    reuse_port: bool = False

    def __attrs_post_init__(self) -> None:
        if self.jwt_secret is not None and self.jwt_public_key is not None:
            raise ConfigError(
                "jwt_secret: set either jwt_secret (HS256) or jwt_public_key (RS256/ES256), "
                "not both"
            )
        if self.workers > 1 and self.redis_url is None:
            raise ConfigError(
                f"workers: {self.workers} workers need a shared broker; set redis_url "
                "(--redis-url redis://host:port/db)"
            )

    @property
    def stale_after(self) -> float:
        """A client whose last pong is older than this at a ping is reaped."""
        return self.ping_interval + self.pong_timeout


_URL_USERINFO = re.compile(r"^(?P<scheme>[^:/?#]+://)(?P<userinfo>[^/?#]*)@")
_URL_PASSWORD_PARAMETER = re.compile(r"(?P<name>[?&]password=)[^&#]*", re.IGNORECASE)
REDACTED = "***"


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***`, for logs: `redis://:***@host:6379/0`.

    A user name is kept; user information without a colon is redacted whole, since some
    clients read `redis://secret@host` as a password.
    """

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        redacted = f"{user}:{REDACTED}" if colon else REDACTED
        return f"{match['scheme']}{redacted}@"

    url = _URL_USERINFO.sub(userinfo, url, count=1)
    return _URL_PASSWORD_PARAMETER.sub(rf"\g<name>{REDACTED}", url)
