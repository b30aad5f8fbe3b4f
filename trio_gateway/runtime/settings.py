"""Flags, `TRIO_GATEWAY_*` environment variables and a TOML file, merged into one `Config`.

Owns the table of settings (names, help, how each is parsed) and the precedence order:
flag > environment > file > default. Pure: it is handed the flag values, an environment
mapping and the file's text, and must not read files, the real environment or argv itself;
cli.py does that and turns `ConfigError` into exit status 2.

Theory of operation
-------------------
Every setting has one name, used three ways: the `Config` field and TOML key (`max_body_size`),
the flag (`--max-body-size`) and the variable (`TRIO_GATEWAY_MAX_BODY_SIZE`). The lists
(`api_keys`, `allowed_origins`, `ws_paths`, `presence_topics`) have a singular flag that
repeats (`--api-key`), a comma-separated variable, and a TOML list of strings.
The TOML file holds the settings as top-level keys; anything else in it is an error.

Each value is parsed and validated where it comes from, even one a higher-precedence source
overrides, so a broken file or variable is reported before it can bite later, and every error
ends with its source: `port: must be between 0 and 65535, got 70000 (from --port)`. Error
text never echoes an API key. An empty environment variable counts as unset (what
`KEY=${UNSET_VAR}` in a compose file produces). Unknown `TRIO_GATEWAY_*` variables are
reported back as `ignored_env` so the caller can warn about a likely typo.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from .config import Config, ConfigError

ENV_PREFIX = "TRIO_GATEWAY_"
# Names accepted by `logging`, lower-case; the flag is case-insensitive.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_LOG_LEVEL = "info"
# The one setting that says where the others live: `--config` or this variable, never a TOML
# key (a file cannot name another file).
CONFIG_FILE = "config"
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG"


class _Invalid(ValueError):
    """A value that cannot be parsed; the message says what was expected and what came."""


def _int_from_text(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _Invalid(f"must be an integer, got {text!r}") from None


def _int_from_toml(value: object) -> int:
    # bool is an int subclass in Python, but `port = true` is a type error in TOML terms.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"must be an integer, got {value!r}")
    return value


def _finite(value: float, shown: object) -> float:
    # NaN passes every comparison-based validator, and inf overflows the millisecond
    # heartbeat announced to clients, so both are refused here.
    if not math.isfinite(value):
        raise _Invalid(f"must be a finite number, got {shown!r}")
    return value


def _float_from_text(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _Invalid(f"must be a number, got {text!r}") from None
    return _finite(value, text)


def _float_from_toml(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"must be a number, got {value!r}")
    return _finite(float(value), value)


def _str_from_text(text: str) -> str:
    return text


def _str_from_toml(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {value!r}")
    return value


def _keys_from_text(text: str) -> tuple[str, ...]:
    return tuple(key.strip() for key in text.split(","))


def _keys_from_flags(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(values)


def _keys_from_toml(value: object) -> tuple[str, ...]:
    # The value itself is never shown: it may be a secret typed in the wrong shape.
    if not isinstance(value, list) or not all(isinstance(key, str) for key in value):
        raise _Invalid(f"must be a list of strings, got a TOML {_toml_type(value)}")
    return tuple(value)


def _toml_type(value: object) -> str:
    if isinstance(value, list):
        return "array with a non-string item"
    names = {str: "string", bool: "boolean", int: "integer", float: "float", dict: "table"}
    return names.get(type(value), type(value).__name__)


_TRUE_TEXTS = ("1", "true", "yes", "on")
_FALSE_TEXTS = ("0", "false", "no", "off")


def _bool_from_text(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE_TEXTS:
        return True
    if word in _FALSE_TEXTS:
        return False
    raise _Invalid(f"must be one of {', '.join(_TRUE_TEXTS + _FALSE_TEXTS)}, got {text!r}")


def _bool_from_toml(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {value!r}")
    return value


def _level_from_text(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise _Invalid(f"must be one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


def _level_from_toml(value: object) -> str:
    return _level_from_text(_str_from_toml(value))


@attrs.frozen
class Setting:
    """One setting: its names, how to parse it from text and from TOML, and its help line."""

    name: str
    help: str
    metavar: str
    from_text: Callable[[str], Any]
    from_toml: Callable[[object], Any]
    #: Parses the list a repeatable flag collects; None for a flag given once.
    from_flags: Callable[[Sequence[str]], Any] | None = None
    #: A flag that takes no value (`--enable-echo`); its presence means "true".
    switch: bool = False
    flag: str = attrs.field(
        default=attrs.Factory(lambda self: "--" + self.name.replace("_", "-"), takes_self=True)
    )

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def default(self) -> object:
        return _DEFAULTS[self.name]


def _integer(name: str, help: str) -> Setting:
    return Setting(name, help, "N", _int_from_text, _int_from_toml)


def _seconds(name: str, help: str) -> Setting:
    return Setting(name, help, "SECONDS", _float_from_text, _float_from_toml)


def _switch(name: str, help: str) -> Setting:
    return Setting(name, help, "", _bool_from_text, _bool_from_toml, switch=True)


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "address to listen on", "HOST", _str_from_text, _str_from_toml),
    _integer("port", "TCP port to listen on; 0 picks a free one"),
    Setting(
        "api_keys",
        "an accepted API key; repeat for several (with none, an ephemeral one is generated)",
        "KEY",
        _keys_from_text,
        _keys_from_toml,
        _keys_from_flags,
        flag="--api-key",
    ),
    _integer("max_message_size", "largest client message in bytes; bigger ones close with 1009"),
    _seconds("ping_interval", "seconds between keepalive pings"),
    _seconds("pong_timeout", "seconds beyond one ping interval before a silent client is reaped"),
    _integer("queue_depth", "outgoing messages buffered per client; overflowing closes with 4008"),
    _integer("publish_queue_depth", "publications buffered before publishers wait"),
    _integer("max_subscriptions", "most subscriptions one connection may hold"),
    _seconds("request_timeout", "seconds to send an HTTP request or finish the handshake"),
    _integer("max_body_size", "largest HTTP request body in bytes; bigger ones get 413"),
    _seconds("close_timeout", "seconds a close handshake may take"),
    _seconds("drain_timeout", "seconds a graceful shutdown may take before cancelling"),
    _switch("enable_echo", "serve the diagnostics echo endpoint /api/echo (conformance tests)"),
    Setting(
        "jwt_secret", "HS256 secret for JWT credentials", "SECRET", _str_from_text, _str_from_toml
    ),
    Setting(
        "jwt_public_key",
        "PEM public key file for RS256 (RSA) or ES256 (EC P-256) JWTs",
        "FILE",
        _str_from_text,
        _str_from_toml,
    ),
    Setting("jwt_audience", "required JWT aud", "AUD", _str_from_text, _str_from_toml),
    Setting("jwt_issuer", "required JWT iss", "ISS", _str_from_text, _str_from_toml),
    _switch("jwt_optional_exp", "accept JWTs without exp (sessions that never expire)"),
    Setting(
        "auth_cookie",
        "cookie that may carry the token (browsers)",
        "NAME",
        _str_from_text,
        _str_from_toml,
    ),
    _switch("reject_at_upgrade", "answer bad credentials with HTTP 401 at the upgrade"),
    Setting(
        "allowed_origins",
        "an Origin browsers may connect from; repeat for several (none: any)",
        "ORIGIN",
        _keys_from_text,
        _keys_from_toml,
        _keys_from_flags,
        flag="--allowed-origin",
    ),
    _seconds("identify_timeout", "seconds to send identify when connecting without a token"),
    _integer("history_size", "messages kept per key for clients that resume"),
    _seconds("history_ttl", "seconds a message stays available for resume"),
    _seconds("state_ttl", "seconds the latest session update is retained (session.state)"),
    Setting(
        "redis_url",
        "Redis broker shared by instances, redis://[:password@]host:port/db or rediss://",
        "URL",
        _str_from_text,
        _str_from_toml,
    ),
    Setting(
        "redis_prefix",
        "prefix of every Redis channel name",
        "PREFIX",
        _str_from_text,
        _str_from_toml,
    ),
    _switch("redis_wait", "retry an unreachable Redis at startup instead of exiting"),
    Setting(
        "ws_paths",
        "a path WebSocket clients connect on; repeat for several (default /api/ws)",
        "PATH",
        _keys_from_text,
        _keys_from_toml,
        _keys_from_flags,
        flag="--ws-path",
    ),
    Setting(
        "command_url",
        "backend URL commands without an in-process handler are POSTed to",
        "URL",
        _str_from_text,
        _str_from_toml,
    ),
    _seconds("command_timeout", "seconds a command may take before it fails with timeout"),
    _integer("max_inflight_commands", "commands one connection may run at once"),
    Setting(
        "connect_url",
        "backend URL asked who a token is when it is neither an API key nor a valid JWT",
        "URL",
        _str_from_text,
        _str_from_toml,
    ),
    _seconds("connect_timeout", "seconds the connect hook may take before closing 1013"),
    Setting(
        "presence_topics",
        "a topic pattern whose subscribers are tracked as present; repeat for several",
        "PATTERN",
        _keys_from_text,
        _keys_from_toml,
        _keys_from_flags,
        flag="--presence-topic",
    ),
    _seconds("presence_diff_interval", "most seconds presence changes are gathered per diff"),
    _seconds("presence_grace", "seconds a user's last connection may be gone before a leave"),
    _seconds("presence_ttl", "seconds a stopped instance's members outlive it (Redis)"),
    _seconds("typing_ttl", "seconds a typing start lasts unless sent again"),
    Setting(
        "metrics_token",
        "a bearer token that may read /metrics besides the API keys (never logged)",
        "TOKEN",
        _str_from_text,
        _str_from_toml,
    ),
    _switch("metrics_public", "serve /metrics without credentials"),
    _seconds("node_ttl", "seconds an instance stays in /api/nodes after its last heartbeat"),
    _integer("workers", "processes sharing the port (SO_REUSEPORT); more than 1 needs Redis"),
    _switch("reuse_port", "set SO_REUSEPORT so other processes may bind the same port"),
    Setting(
        "log_level",
        "least severe log level written: " + ", ".join(LOG_LEVELS),
        "LEVEL",
        _level_from_text,
        _level_from_toml,
    ),
)
_DEFAULTS = {**attrs.asdict(Config()), "log_level": DEFAULT_LOG_LEVEL}
_BY_NAME = {setting.name: setting for setting in SETTINGS}
_BY_ENV = {setting.env: setting for setting in SETTINGS}


@attrs.frozen
class Settings:
    """The merged result: a validated Config plus what is not part of it."""

    config: Config
    #: One of LOG_LEVELS.
    log_level: str
    #: `TRIO_GATEWAY_*` variables that name no setting (names only: values may be secrets).
    ignored_env: tuple[str, ...] = ()


def _validated(setting: Setting, value: Any, source: str) -> Any:
    """`value`, checked by Config's own validator for that field, so errors name `source`."""
    field = attrs.fields_dict(Config).get(setting.name)
    try:
        if field is not None and field.validator is not None:
            field.validator(None, field, value)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (from {source})") from None
    return value


def _parse(setting: Setting, parse: Callable[[Any], Any], raw: object, source: str) -> Any:
    try:
        value = parse(raw)
    except _Invalid as exc:
        raise ConfigError(f"{setting.name}: {exc} (from {source})") from None
    return _validated(setting, value, source)


def config_file(flag: str | None, env: Mapping[str, str]) -> tuple[str, str] | None:
    """The TOML file to read and where its name came from: `--config`, else the variable."""
    if flag:
        return flag, "--config"
    if path := env.get(CONFIG_FILE_ENV):
        return path, CONFIG_FILE_ENV
    return None


def closest_env(name: str) -> str | None:
    """The setting variable an unknown `TRIO_GATEWAY_*` name was probably meant to be."""
    # Compared without the prefix, which every candidate shares and would make all look alike.
    suffixes = [setting.env.removeprefix(ENV_PREFIX) for setting in SETTINGS]
    close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), suffixes, n=1)
    return ENV_PREFIX + close[0] if close else None


def _from_file(file_text: str, file_name: str) -> dict[str, Any]:
    try:
        document = tomllib.loads(file_text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{CONFIG_FILE}: {file_name} is not valid TOML: {exc}") from None
    values = {}
    for key, raw in document.items():
        setting = _BY_NAME.get(key)
        if setting is None:
            close = difflib.get_close_matches(key, _BY_NAME, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}: unknown setting{hint} (from {file_name})")
        values[key] = _parse(setting, setting.from_toml, raw, file_name)
    return values


def _from_env(env: Mapping[str, str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    values = {}
    ignored = []
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_ENV:
            continue
        setting = _BY_ENV.get(name)
        if setting is None:
            ignored.append(name)
        elif text:
            values[setting.name] = _parse(setting, setting.from_text, text, name)
    return values, tuple(sorted(ignored))


def _from_flags(flags: Mapping[str, str | Sequence[str]]) -> dict[str, Any]:
    values = {}
    for name, raw in flags.items():
        setting = _BY_NAME[name]
        parse = setting.from_flags or setting.from_text
        values[name] = _parse(setting, parse, raw, setting.flag)
    return values


def resolve(
    flags: Mapping[str, str | Sequence[str]],
    env: Mapping[str, str],
    file_text: str | None = None,
    file_name: str = "config file",
) -> Settings:
    """Merge the sources, highest precedence first: flags, environment, file, defaults.

    Args:
        flags: setting name -> flag text, for the flags given on the command line only (a list
            of texts for the repeatable `api_keys`).
        env: the process environment; only `TRIO_GATEWAY_*` names are read.
        file_text: the TOML file's contents, if there is one.
        file_name: how errors refer to the file (its path).

    Returns:
        The validated Config, the log level and the unknown variables seen.

    Raises:
        ConfigError: a value is malformed or invalid; the message starts with the setting's
            name and ends with its source, and is one line.
    """
    from_file = _from_file(file_text, file_name) if file_text is not None else {}
    from_env, ignored_env = _from_env(env)
    merged = {**from_file, **from_env, **_from_flags(flags)}
    log_level = merged.pop("log_level", DEFAULT_LOG_LEVEL)
    return Settings(Config(**merged), log_level, ignored_env)
