"""The gateway's settings as frozen values, each declared once, with validation. Pure: reads
no files or env.

Owns every setting's declaration: its name (the field), type (the annotation), default, the
check of its value, and, in the field's `metadata`, a `Doc` saying how people see it (help
line, unit, flag and variable names). `Config` holds what the gateway itself runs with;
`LogSettings` what only the daemon's logging needs. settings.py derives the flags, variables
and TOML keys from these declarations and merges the sources; settings_text.py renders
them as `genconfig`'s file and docs/OPERATIONS.md's table; tests build a Config directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

from ..protocol.topics import pattern_problem


class ConfigError(ValueError):
    """An invalid setting; the message names it (`port: must be between 0 and 65535`)."""


@attrs.frozen(kw_only=True)
class Doc:
    """How people see one setting, in `--help`, `genconfig` and docs/OPERATIONS.md.

    Text may quote code in backticks (`0.0.0.0`); plain-text renderings drop them.
    """

    #: What the setting does, in one line.
    help: str
    #: What a value counts, for the docs ("bytes", "frames"); seconds for every float.
    unit: str = ""
    #: The flag's placeholder; integers are N and seconds SECONDS unless given.
    metavar: str = ""
    #: The flag when it is not the name's (a list's singular, repeatable `--api-key`).
    flag: str = ""
    #: Another variable accepted for the same setting (a common misspelling).
    env_alias: str = ""
    #: What no value means ("memory broker"), when the default is unset (None or empty).
    unset: str = ""
    #: A value `genconfig` shows, commented out, for a setting whose default is unset.
    example: object = None
    #: More for the docs table only: how the sources spell it, pointers to sections.
    note: str = ""
    #: The only values accepted (lower-case), for a text setting.
    choices: tuple[str, ...] = ()


DOC = "trio_gateway.doc"


def _doc(help: str, **details: Any) -> Mapping[str, Doc]:
    return {DOC: Doc(help=help, **details)}


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{attribute.name}: must be greater than 0, got {value!r}")


def _not_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigError(f"{attribute.name}: must be 0 or more, got {value!r}")


def _port(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{attribute.name}: must be between 0 and 65535, got {value!r}")


# Frames: a client's queue must hold two publish rounds of queue_depth // 4 (server.py's
# round size, at least 1) beside the flusher's queue_depth // 2 ahead, plus the reply it is
# owed (`ready`, an ack). Below 4 those sizes are clamped to 1 and no longer fit: with 1, a
# client reading at full speed is closed 4008 by any burst.
MIN_QUEUE_DEPTH = 4


def _queue_depth(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if 0 < value < MIN_QUEUE_DEPTH:
        raise ConfigError(
            f"{attribute.name}: must be at least {MIN_QUEUE_DEPTH} frames "
            f"(a burst of publications needs that room), got {value!r}"
        )


def _keys(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for key in value:
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"{attribute.name}: keys must be non-empty strings")


REDIS_SCHEMES = ("redis://", "rediss://")


def _redis_url(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    # Messages never show the URL: it may hold a password.
    if value is None:
        return
    name = attribute.name
    if not value.startswith(REDIS_SCHEMES):
        scheme = value.partition("://")[0] if "://" in value else "(none)"
        raise ConfigError(f"{name}: must start with redis:// or rediss://, got scheme {scheme!r}")
    parts = urlsplit(value)
    try:
        _ = parts.port  # reading it parses it; coredis would fail only when connecting
    except ValueError:
        raise ConfigError(f"{name}: the port must be a number from 0 to 65535") from None
    if not parts.hostname:
        raise ConfigError(f"{name}: a host is required (redis://host:port/db)")
    # coredis quietly falls back to database 0 on a path it cannot read as a number.
    database = parts.path.removeprefix("/")
    databases = parse_qs(parts.query).get("db", [])
    if not all(text.isdigit() for text in [*databases, database] if text):
        raise ConfigError(f"{name}: the database must be a number (redis://host:port/0)")


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


def _choice(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    choices = attribute.metadata[DOC].choices
    if value is not None and value not in choices:
        raise ConfigError(f"{attribute.name}: must be one of {', '.join(choices)}, got {value!r}")


@attrs.frozen(kw_only=True)
class Config:
    host: str = attrs.field(
        default="127.0.0.1",
        metadata=_doc(
            "address to listen on (`0.0.0.0` / `::` for all interfaces)",
            unit="address",
            metavar="HOST",
        ),
    )
    port: int = attrs.field(
        default=8000,
        validator=_port,
        metadata=_doc(
            "TCP port to listen on; `0` picks a free one (printed at start)", unit="TCP port"
        ),
    )
    # Empty means nobody is let in; the CLI generates an ephemeral key instead of starting
    # with an empty tuple.
    api_keys: tuple[str, ...] = attrs.field(
        default=(),
        converter=_key_tuple,
        validator=_keys,
        metadata=_doc(
            "accepted tokens for WebSocket clients and HTTP publishers",
            unit="strings",
            metavar="KEY",
            flag="--api-key",
            env_alias="TRIO_GATEWAY_API_KEY",
            unset="an ephemeral key is generated at each start",
            example=["change-me"],
            note="`--api-key` repeats; `TRIO_GATEWAY_API_KEYS=a,b` (or `TRIO_GATEWAY_API_KEY`); "
            'TOML `api_keys = ["a", "b"]`. A higher source replaces the whole list',
        ),
    )
    max_message_size: int = attrs.field(
        default=64 * 1024,
        validator=_positive,
        metadata=_doc("largest client message; bigger closes with 1009", unit="bytes (UTF-8)"),
    )
    # Also announced to clients as heartbeat_interval.
    ping_interval: float = attrs.field(
        default=30.0,
        validator=_positive,
        metadata=_doc("keepalive ping period; announced as `heartbeat_interval` (ms) in `ready`"),
    )
    # Beyond one ping interval: 30 + 10 = 40 s of silence at most.
    pong_timeout: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata=_doc(
            "grace beyond one interval: silent for more than `ping_interval + pong_timeout` "
            "at a ping → closed 1008"
        ),
    )
    queue_depth: int = attrs.field(
        default=256,
        validator=[_positive, _queue_depth],
        metadata=_doc(
            f"per-client outgoing queue (at least {MIN_QUEUE_DEPTH}); overflow closes that "
            "client with 4008",
            unit="frames",
        ),
    )
    publish_queue_depth: int = attrs.field(
        default=4096,
        validator=_positive,
        metadata=_doc(
            "publications between publishers and the publisher task (which hands them to "
            "the broker); when full, HTTP publishers wait",
            unit="batches",
            note="`Broadcaster.broadcast_*` then raise `PublishQueueFull`",
        ),
    )
    # Bounds memory per client.
    max_subscriptions: int = attrs.field(
        default=1000,
        validator=_positive,
        metadata=_doc(
            "most subscriptions one connection may hold; beyond it subscribe gets an error",
            unit="keys",
        ),
    )
    request_timeout: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata=_doc(
            "to send a whole HTTP request (else 408) or finish the WebSocket handshake; also "
            "the idle time after which a keep-alive HTTP connection is closed"
        ),
    )
    max_body_size: int = attrs.field(
        default=1024 * 1024,
        validator=_positive,
        metadata=_doc("largest HTTP request body; bigger gets 413", unit="bytes"),
    )
    close_timeout: float = attrs.field(
        default=2.0,
        validator=_positive,
        metadata=_doc(
            "how long one close handshake (or lingering close) may take before the socket "
            "is dropped"
        ),
    )
    drain_timeout: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata=_doc("how long a graceful shutdown may take before everything left is cancelled"),
    )
    # --- connection limits, inbound rate, liveness, staged drain (issue 18, limits-conn) ---
    # Browsers answer WebSocket pings by themselves but page code may never answer a JSON
    # one, so by default both go out and either answer (any frame) keeps a client alive.
    ws_ping: bool = attrs.field(
        default=True,
        metadata=_doc(
            "also send a WebSocket-level ping at every keepalive cycle (behind the JSON "
            "`ping`); any frame a client sends counts as alive, so a browser stays connected "
            "without page code",
            note="on by default; off (JSON ping only) with `TRIO_GATEWAY_WS_PING=0` or "
            "`ws_ping = false`",
        ),
    )
    # Spreads the reconnect wave of a shutdown over the other instances (Phoenix's drainer).
    # Half the default drain_timeout: the last clients closed still have time to flush.
    drain_window: float = attrs.field(
        default=5.0,
        validator=_not_negative,
        metadata=_doc(
            "graceful shutdown: close clients 1001 in jittered batches of 100 spread over this "
            "long (one batch, at once, up to 100 clients); ends `close_timeout` before "
            "`drain_timeout` at the latest; 0: all at once"
        ),
    )
    # Seed 004's per-address limit. Clients behind one NAT or proxy share an address: raise it
    # there (or 0) rather than refuse a whole office.
    max_connections_per_ip: int = attrs.field(
        default=100,
        validator=_not_negative,
        metadata=_doc(
            "WebSockets one address may hold open; one more gets HTTP 503 at the upgrade; "
            "0: no limit",
            unit="connections",
        ),
    )
    # About 10 KiB of memory each when idle: 100 MiB at the cap. Never more than the
    # descriptor limit allows, less a reserve for HTTP (transport/limits.py).
    max_connections: int = attrs.field(
        default=10_000,
        validator=_not_negative,
        metadata=_doc(
            "WebSockets this process holds open in all (and never more than `ulimit -n` "
            "less 128 descriptors kept for HTTP); one more gets HTTP 503; 0: only the "
            "descriptor bound",
            unit="connections",
        ),
    )
    max_handshakes: int = attrs.field(
        default=256,
        validator=_not_negative,
        metadata=_doc(
            "WebSockets past the 101 but not yet registered (waiting for `identify` or the "
            "connect hook); one more upgrade gets HTTP 503; 0: no limit",
            unit="connections",
        ),
    )
    # Frames a second a client may send, pings included. Well-behaved clients send a few a
    # minute (a pong, a subscribe, a typing start); a burst of 100 covers a page subscribing
    # to everything it shows at once.
    client_rate: float = attrs.field(
        default=50.0,
        validator=_not_negative,
        metadata=_doc(
            "frames a second one connection may send (every frame: messages, pings, pongs); "
            "beyond `client_burst` the client gets an error and is closed 4008 "
            "`Rate limited`; 0: no limit",
            unit="frames/s",
            metavar="RATE",
        ),
    )
    client_burst: int = attrs.field(
        default=100,
        validator=_positive,
        metadata=_doc(
            "frames a connection may send at once before `client_rate` applies", unit="frames"
        ),
    )
    # Publishes and commands reach the broker or a backend, so they get a budget of their own.
    client_publish_rate: float = attrs.field(
        default=20.0,
        validator=_not_negative,
        metadata=_doc(
            "publishes and command calls a second one connection may make; beyond "
            "`client_publish_burst` each is refused with code `rate_limited` (the connection "
            "stays); 0: no limit",
            unit="messages/s",
            metavar="RATE",
        ),
    )
    client_publish_burst: int = attrs.field(
        default=50,
        validator=_positive,
        metadata=_doc(
            "publishes and command calls a connection may make at once before "
            "`client_publish_rate` applies",
            unit="messages",
        ),
    )
    # The echo endpoint sends every client message straight back through the same reader
    # and writer as real clients: for RFC 6455 conformance runs (Autobahn), not production,
    # so it is off unless asked for.
    enable_echo: bool = attrs.field(
        default=False,
        metadata=_doc(
            "serve the diagnostics echo endpoint `/api/echo` (conformance runs only)",
            note="flag `--enable-echo` takes no value; env/TOML take a boolean "
            "(`1/true/yes/on`, `0/false/no/off`)",
        ),
    )
    # The JWT algorithm follows from which key is set, never from the token.
    jwt_secret: str | None = attrs.field(
        default=None,
        validator=_optional_text,
        metadata=_doc(
            "HS256 secret: JWTs signed with it are accepted besides API keys (never logged)",
            unit="string",
            metavar="SECRET",
            example="change-me",
        ),
    )
    jwt_public_key: str | None = attrs.field(
        default=None,
        validator=_optional_text,
        metadata=_doc(
            "PEM public key file instead of a secret: RSA → RS256, EC P-256 → ES256",
            unit="path",
            metavar="FILE",
            example="/etc/trio-gateway/jwt.pem",
            note="read at start (a bad file is an invalid configuration, exit 2)",
        ),
    )
    jwt_audience: str | None = attrs.field(
        default=None,
        validator=_optional_text,
        metadata=_doc(
            "when set, a JWT's `aud` must equal it", unit="string", metavar="AUD", example="gateway"
        ),
    )
    jwt_issuer: str | None = attrs.field(
        default=None,
        validator=_optional_text,
        metadata=_doc(
            "when set, a JWT's `iss` must equal it",
            unit="string",
            metavar="ISS",
            example="https://login.example.com",
        ),
    )
    jwt_optional_exp: bool = attrs.field(
        default=False,
        metadata=_doc("accept JWTs without `exp` (sessions that never expire)"),
    )
    auth_cookie: str | None = attrs.field(
        default=None,
        validator=_optional_text,
        metadata=_doc(
            "also take the token from this cookie at the upgrade (browsers)",
            unit="cookie name",
            metavar="NAME",
            example="session",
            note="set `allowed_origins` with it: a warning is logged otherwise",
        ),
    )
    reject_at_upgrade: bool = attrs.field(
        default=False,
        metadata=_doc(
            "answer a wrong token with HTTP 401 before the handshake instead of "
            "accept-then-close 4001"
        ),
    )
    allowed_origins: tuple[str, ...] = attrs.field(
        default=(),
        converter=_key_tuple,
        validator=_keys,
        metadata=_doc(
            "browsers may connect only from these exact `scheme://host[:port]` origins "
            "(403 otherwise); requests without `Origin` pass",
            unit="origins",
            metavar="ORIGIN",
            flag="--allowed-origin",
            unset="any",
            example=["https://app.example.com"],
            note="`--allowed-origin` repeats, env comma-separated, TOML list",
        ),
    )
    identify_timeout: float = attrs.field(
        default=5.0,
        validator=_positive,
        metadata=_doc("a connection without a token must `identify` within this, else 4001"),
    )
    history_size: int = attrs.field(
        default=100,
        validator=_positive,
        metadata=_doc(
            "kept per key (topic, workspace, session, `all`) for clients that resume; in "
            "memory or in Redis",
            unit="messages",
        ),
    )
    history_ttl: float = attrs.field(
        default=300.0,
        validator=_positive,
        metadata=_doc(
            "how long a message stays available for a resume; an older gap answers "
            "`recovered: false`"
        ),
    )
    state_ttl: float = attrs.field(
        default=3600.0,
        validator=_positive,
        metadata=_doc(
            "how long the latest `session.update` of a session is retained as its `session.state`"
        ),
    )
    redis_url: str | None = attrs.field(
        default=None,
        validator=_redis_url,
        metadata=_doc(
            "`redis://[user:password@]host:port/db` or `rediss://…` (TLS): instances sharing "
            "this Redis behave as one gateway; the password never appears in logs",
            unit="URL",
            metavar="URL",
            unset="memory broker",
            example="redis://127.0.0.1:6379/0",
            note="see Scaling out",
        ),
    )
    # Several deployments can share one Redis under different prefixes.
    redis_prefix: str = attrs.field(
        default="trio-gateway:",
        validator=_prefix,
        metadata=_doc(
            "prepended to every Redis channel name, so several deployments can share one "
            "Redis; no whitespace",
            unit="string",
            metavar="PREFIX",
        ),
    )
    redis_wait: bool = attrs.field(
        default=False,
        metadata=_doc(
            "at startup, retry an unreachable Redis with backoff instead of exiting with status 1"
        ),
    )
    # Seed clients use /api/ws, /ws and /ws/gateway.
    ws_paths: tuple[str, ...] = attrs.field(
        default=("/api/ws",),
        converter=_key_tuple,
        validator=_paths,
        metadata=_doc(
            "WebSocket endpoints, each starting with `/`",
            unit="paths",
            metavar="PATH",
            flag="--ws-path",
            note="several allowed (`--ws-path` repeats, env comma-separated, TOML list), e.g. "
            "`/ws` and `/ws/gateway` for seed clients",
        ),
    )
    command_url: str | None = attrs.field(
        default=None,
        validator=_backend_url,
        metadata=_doc(
            "`http(s)://` backend that runs every command without an in-process handler; "
            "none: such commands are `unknown_command`",
            unit="URL",
            metavar="URL",
            example="http://127.0.0.1:9000/commands",
            note="see Backend hooks",
        ),
    )
    command_timeout: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata=_doc(
            "a command (in-process or proxied) not answered within this is answered "
            "`timeout` and cancelled"
        ),
    )
    max_inflight_commands: int = attrs.field(
        default=8,
        validator=_positive,
        metadata=_doc(
            "commands one connection may have running at once; one more is answered `too_many`",
            unit="calls",
        ),
    )
    # For opaque session tokens: asked only when a token is neither an API key nor a JWT.
    connect_url: str | None = attrs.field(
        default=None,
        validator=_backend_url,
        metadata=_doc(
            "`http(s)://` backend asked who a token is when it is neither an API key nor a "
            "valid JWT; none: such tokens get 4001",
            unit="URL",
            metavar="URL",
            example="http://127.0.0.1:9000/connect",
            note="for opaque session tokens; see Backend hooks",
        ),
    )
    connect_timeout: float = attrs.field(
        default=5.0,
        validator=_positive,
        metadata=_doc(
            "a connect hook call not answered within this closes the client 1013 `Try again later`"
        ),
    )
    presence_topics: tuple[str, ...] = attrs.field(
        default=(),
        converter=_key_tuple,
        validator=_patterns,
        metadata=_doc(
            "presence is tracked on the topics these match (`chat.*`, `rooms.**`)",
            unit="topic patterns",
            metavar="PATTERN",
            flag="--presence-topic",
            unset="presence is off",
            example=["chat.*"],
            note="see Presence and typing; `--presence-topic` repeats, env comma-separated, "
            "TOML list; none: `presence` and `presence.get` are refused",
        ),
    )
    presence_diff_interval: float = attrs.field(
        default=0.1,
        validator=_positive,
        metadata=_doc(
            "the longest presence changes of a topic are gathered before one `presence.diff` "
            "goes out"
        ),
    )
    presence_grace: float = attrs.field(
        default=5.0,
        validator=_positive,
        metadata=_doc(
            "how long a user's last connection on a topic may be gone (a reload, a flaky "
            "phone) before they leave"
        ),
    )
    presence_ttl: float = attrs.field(
        default=30.0,
        validator=_positive,
        metadata=_doc(
            "Redis: the lease of each instance's members, renewed every third of it; a dead "
            "instance's members leave within this plus one sweep"
        ),
    )
    # One broadcast per this, however often a client sends start.
    typing_ttl: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata=_doc("a typing indicator lapses (stop announced) this long after the last start"),
    )
    metrics_token: str | None = attrs.field(
        default=None,
        validator=_optional_text,
        metadata=_doc(
            "a bearer token that may read `/metrics` besides the API keys (a scraper's, so it "
            "needs no API key); never logged",
            unit="string",
            metavar="TOKEN",
            example="change-me-too",
        ),
    )
    metrics_public: bool = attrs.field(
        default=False,
        metadata=_doc("serve `/metrics` without credentials (only on a scrape network you trust)"),
    )
    admin: bool = attrs.field(
        default=False,
        metadata=_doc(
            "serve the admin page at `/admin` (its data needs an API key; put it behind TLS)",
            note='see "Admin page" below',
        ),
    )
    node_ttl: float = attrs.field(
        default=15.0,
        validator=_positive,
        metadata=_doc(
            "Redis: an instance stays in `/api/nodes` this long after its last heartbeat "
            "(sent every third of it); a dead one drops out within this"
        ),
    )
    workers: int = attrs.field(
        default=1,
        validator=_positive,
        metadata=_doc(
            "processes sharing the port (SO_REUSEPORT); more than 1 requires `redis_url`",
            unit="processes",
        ),
    )
    reuse_port: bool = attrs.field(
        default=False,
        metadata=_doc(
            "set SO_REUSEPORT on the listener so other processes may bind the same port "
            "(what `workers` uses)"
        ),
    )
    # Wildcard patterns (limits-patterns): what one publication may cost the pattern matcher.
    # A connection's patterns are within `max_subscriptions` too, with a lower cap of their
    # own: every pattern takes part in matching each topic publication, a plain key does not.
    max_patterns: int = attrs.field(
        default=16,
        validator=_positive,
        metadata=_doc(
            "most wildcard patterns one connection may hold (within `max_subscriptions`); "
            "beyond it subscribe gets an error",
            unit="patterns",
        ),
    )
    # Matching a topic costs one lookup per shape held (protocol/topics.py), whatever the
    # number of patterns; 256 lookups take under 0.1 ms of a publication (docs/PERFORMANCE.md).
    max_pattern_shapes: int = attrs.field(
        default=256,
        validator=_positive,
        metadata=_doc(
            "most distinct pattern shapes (`chat.*.x` and `news.*.y` share one) held on the "
            "instance; a pattern of a new shape beyond it is refused with an error",
            unit="shapes",
        ),
    )
    # --- HTTP and handshake hardening (issue 18): what one client may make the server hold ---
    max_fragments: int = attrs.field(
        default=1024,
        validator=_positive,
        metadata=_doc(
            "most frames one client message may be fragmented into; more closes with 1009",
            unit="frames",
        ),
    )
    max_body_memory: int = attrs.field(
        default=64 * 1024 * 1024,
        validator=_positive,
        metadata=_doc(
            "what all HTTP request bodies being read may hold together; a body that would "
            "exceed it gets 503 with `Retry-After`",
            unit="bytes",
            note="at least `max_body_size`",
        ),
    )
    # --- broker under faults (limits-broker) ---
    # Centrifugo keeps idempotency keys 5 minutes: a publisher retrying within that window
    # after a 504 (outcome unknown) or a lost response is never delivered twice.
    idempotency_ttl: float = attrs.field(
        default=300.0,
        validator=_positive,
        metadata=_doc(
            "how long a publish's `idempotency_key` is remembered (on every instance, with "
            "Redis); a repeat within it is answered as a duplicate and not delivered again"
        ),
    )

    def __attrs_post_init__(self) -> None:
        if self.jwt_secret is not None and self.jwt_public_key is not None:
            raise ConfigError(
                "jwt_secret: set either jwt_secret (HS256) or jwt_public_key (RS256/ES256), "
                "not both"
            )
        if self.max_body_memory < self.max_body_size:
            raise ConfigError(
                f"max_body_memory: must be at least max_body_size ({self.max_body_size} "
                f"bytes), got {self.max_body_memory}"
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


# Names accepted by `logging`, lower-case; the flag is case-insensitive.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "console")


@attrs.frozen(kw_only=True)
class LogSettings:
    """The settings of the daemon's logging, which the gateway itself does not see."""

    log_level: str = attrs.field(
        default="info",
        validator=_choice,
        metadata=_doc(
            "least severe level written: " + ", ".join(f"`{level}`" for level in LOG_LEVELS),
            metavar="LEVEL",
            choices=LOG_LEVELS,
        ),
    )
    # Unset, the stream decides (observability/jsonlog.py): a person at a terminal reads
    # console lines, anything else (a pipe, journald, a collector) gets JSON.
    log_format: str | None = attrs.field(
        default=None,
        validator=_choice,
        metadata=_doc(
            "`json`: one JSON object per line; `console`: one readable line per event",
            metavar="FORMAT",
            choices=LOG_FORMATS,
            unset="json, or console when stderr is a terminal",
            example="console",
        ),
    )


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
