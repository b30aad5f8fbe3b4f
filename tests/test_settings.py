"""settings.resolve: precedence, value parsing and the one-line error for every bad input.

Pure and synchronous: flags, environment and file text go in as plain values.
"""

from __future__ import annotations

import attrs
import pytest

from trio_gateway import Config, ConfigError
from trio_gateway.runtime.config import LogSettings
from trio_gateway.runtime.settings import SETTINGS, Settings, closest_env, config_file, resolve

FILE = "gw.toml"


def load(
    flags: dict[str, str | list[str]] | None = None,
    env: dict[str, str] | None = None,
    toml: str | None = None,
) -> Settings:
    return resolve(flags or {}, env or {}, toml, FILE)


def error(
    flags: dict[str, str | list[str]] | None = None,
    env: dict[str, str] | None = None,
    toml: str | None = None,
) -> str:
    with pytest.raises(ConfigError) as caught:
        load(flags, env, toml)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults_without_any_source() -> None:
    assert load() == Settings(Config(), LogSettings(log_level="info", log_format=None), ())


def test_every_config_field_is_a_setting() -> None:
    expected = {*attrs.fields_dict(Config), "log_level", "log_format"}
    assert {s.name for s in SETTINGS} == expected


def test_names_of_each_setting() -> None:
    names = {s.name: (s.flag, s.env) for s in SETTINGS}
    assert names["api_keys"] == ("--api-key", "TRIO_GATEWAY_API_KEYS")
    assert names["max_message_size"] == ("--max-message-size", "TRIO_GATEWAY_MAX_MESSAGE_SIZE")
    assert names["log_level"] == ("--log-level", "TRIO_GATEWAY_LOG_LEVEL")
    assert names["log_format"] == ("--log-format", "TRIO_GATEWAY_LOG_FORMAT")


# (setting, flag text, env text, TOML literal, parsed values for flag / env / file)
PRECEDENCE = [
    ("port", "9001", "9002", "9003", (9001, 9002, 9003)),
    ("host", "::1", "0.0.0.0", '"10.0.0.1"', ("::1", "0.0.0.0", "10.0.0.1")),
    ("ping_interval", "1.5", "2", "3", (1.5, 2.0, 3.0)),
    ("drain_timeout", "4", "5.25", "6.5", (4.0, 5.25, 6.5)),
    ("queue_depth", "7", "8", "9", (7, 8, 9)),
    ("api_keys", ["f1", "f2"], "e1,e2", '["t1"]', (("f1", "f2"), ("e1", "e2"), ("t1",))),
    ("log_format", "json", "Console", '"json"', ("json", "console", "json")),
]


def _value(settings: Settings, name: str) -> object:
    if name in attrs.fields_dict(LogSettings):
        return getattr(settings.logs, name)
    return getattr(settings.config, name)


@pytest.mark.parametrize(("name", "flag", "env", "toml", "expected"), PRECEDENCE)
def test_flag_beats_env_beats_file_beats_default(
    name: str,
    flag: str | list[str],
    env: str,
    toml: str,
    expected: tuple[object, object, object],
) -> None:
    setting = next(s for s in SETTINGS if s.name == name)
    flags = {name: flag}
    environ = {setting.env: env}
    text = f"{name} = {toml}\n"
    from_flag, from_env, from_file = expected
    assert _value(load(flags, environ, text), name) == from_flag
    assert _value(load({}, environ, text), name) == from_env
    assert _value(load({}, {}, text), name) == from_file
    assert _value(load(), name) == setting.default


def test_log_level_precedence_and_case() -> None:
    text = 'log_level = "ERROR"'
    env = {"TRIO_GATEWAY_LOG_LEVEL": "Warning"}
    assert load({"log_level": "DEBUG"}, env, text).logs.log_level == "debug"
    assert load({}, env, text).logs.log_level == "warning"
    assert load({}, {}, text).logs.log_level == "error"
    assert load().logs.log_level == "info"


def test_sources_merge_per_setting() -> None:
    settings = load(
        {"port": "1"}, {"TRIO_GATEWAY_HOST": "::"}, "ping_interval = 5\nport = 2\nhost = 'x'"
    )
    assert settings.config == Config(port=1, host="::", ping_interval=5.0)


def test_api_keys_from_each_source() -> None:
    assert load({"api_keys": ["a", "b"]}).config.api_keys == ("a", "b")
    env = {"TRIO_GATEWAY_API_KEYS": "a, b ,c"}
    assert load(env=env).config.api_keys == ("a", "b", "c")
    assert load(toml='api_keys = ["a", "b"]').config.api_keys == ("a", "b")
    # A higher source replaces the key list; it does not add to it.
    assert load({"api_keys": ["f"]}, env).config.api_keys == ("f",)


def test_api_key_variable_is_an_alias_of_api_keys() -> None:
    settings = load(env={"TRIO_GATEWAY_API_KEY": "a,b"})
    assert settings.config.api_keys == ("a", "b")
    assert settings.ignored_env == ()
    both = {"TRIO_GATEWAY_API_KEY": "a", "TRIO_GATEWAY_API_KEYS": "b"}
    assert error(env=both) == (
        "api_keys: set TRIO_GATEWAY_API_KEY or TRIO_GATEWAY_API_KEYS, not both"
    )
    # An empty one counts as unset, like any other variable.
    assert load(env={**both, "TRIO_GATEWAY_API_KEY": ""}).config.api_keys == ("b",)


def test_empty_environment_variable_counts_as_unset() -> None:
    env = {"TRIO_GATEWAY_PORT": "", "TRIO_GATEWAY_API_KEYS": ""}
    assert load(env=env, toml="port = 7").config == Config(port=7)


def test_toml_integer_is_accepted_for_seconds() -> None:
    assert load(toml="close_timeout = 3").config.close_timeout == 3.0


def test_unknown_prefixed_variables_are_reported_by_name() -> None:
    env = {
        "TRIO_GATEWAY_APIKEYS": "secret",
        "TRIO_GATEWAY_PROT": "1",
        "TRIO_GATEWAY_CONFIG": "gw.toml",
        "HOME": "/root",
    }
    assert load(env=env).ignored_env == ("TRIO_GATEWAY_APIKEYS", "TRIO_GATEWAY_PROT")
    assert closest_env("TRIO_GATEWAY_APIKEYS") == "TRIO_GATEWAY_API_KEYS"
    assert closest_env("TRIO_GATEWAY_PROT") == "TRIO_GATEWAY_PORT"
    assert closest_env("TRIO_GATEWAY_XYZZY_FROB_NITZ") is None


def test_config_file_flag_beats_variable() -> None:
    env = {"TRIO_GATEWAY_CONFIG": "env.toml"}
    assert config_file("flag.toml", env) == ("flag.toml", "--config")
    assert config_file(None, env) == ("env.toml", "TRIO_GATEWAY_CONFIG")
    assert config_file(None, {}) is None


INVALID = [
    pytest.param(
        {"port": "70000"},
        {},
        None,
        "port: must be between 0 and 65535, got 70000 (from --port)",
        id="port-range-flag",
    ),
    pytest.param(
        {},
        {"TRIO_GATEWAY_PORT": "http"},
        None,
        "port: must be an integer, got 'http' (from TRIO_GATEWAY_PORT)",
        id="port-unparseable-env",
    ),
    pytest.param(
        {},
        {},
        'port = "8000"',
        "port: must be an integer, got '8000' (from gw.toml)",
        id="port-string-toml",
    ),
    pytest.param(
        {}, {}, "port = true", "port: must be an integer, got True (from gw.toml)", id="port-bool"
    ),
    pytest.param(
        {}, {}, "port = 80.5", "port: must be an integer, got 80.5 (from gw.toml)", id="port-float"
    ),
    pytest.param(
        {"max_message_size": "1.5"},
        {},
        None,
        "max_message_size: must be an integer, got '1.5' (from --max-message-size)",
        id="size-float-flag",
    ),
    pytest.param(
        {"ping_interval": "-1"},
        {},
        None,
        "ping_interval: must be greater than 0, got -1.0 (from --ping-interval)",
        id="negative-interval",
    ),
    pytest.param(
        {},
        {"TRIO_GATEWAY_PONG_TIMEOUT": "soon"},
        None,
        "pong_timeout: must be a number, got 'soon' (from TRIO_GATEWAY_PONG_TIMEOUT)",
        id="unparseable-seconds",
    ),
    pytest.param(
        {"drain_timeout": "nan"},
        {},
        None,
        "drain_timeout: must be a finite number, got 'nan' (from --drain-timeout)",
        id="nan",
    ),
    pytest.param(
        {},
        {},
        "request_timeout = inf",
        "request_timeout: must be a finite number, got inf (from gw.toml)",
        id="inf-toml",
    ),
    pytest.param(
        {},
        {},
        "queue_depth = 0",
        "queue_depth: must be greater than 0, got 0 (from gw.toml)",
        id="zero-depth",
    ),
    pytest.param(
        {},
        {},
        'close_timeout = "2"',
        "close_timeout: must be a number, got '2' (from gw.toml)",
        id="seconds-string-toml",
    ),
    pytest.param(
        {},
        {},
        "host = 127",
        "host: must be a string, got 127 (from gw.toml)",
        id="host-type",
    ),
    pytest.param(
        {},
        {"TRIO_GATEWAY_API_KEYS": "a,,b"},
        None,
        "api_keys: keys must be non-empty strings (from TRIO_GATEWAY_API_KEYS)",
        id="empty-key-env",
    ),
    pytest.param(
        {"api_keys": ["a", " "]},
        {},
        None,
        "api_keys: keys must be non-empty strings (from --api-key)",
        id="blank-key-flag",
    ),
    pytest.param(
        {},
        {},
        'api_keys = ["a", 1]',
        "api_keys: must be a list of strings, got a TOML array with a non-string item"
        " (from gw.toml)",
        id="key-list-type",
    ),
    pytest.param(
        {"log_level": "verbose"},
        {},
        None,
        "log_level: must be one of debug, info, warning, error, critical, got 'verbose'"
        " (from --log-level)",
        id="log-level-flag",
    ),
    pytest.param(
        {},
        {"TRIO_GATEWAY_LOG_LEVEL": "trace"},
        None,
        "log_level: must be one of debug, info, warning, error, critical, got 'trace'"
        " (from TRIO_GATEWAY_LOG_LEVEL)",
        id="log-level-env",
    ),
    pytest.param(
        {},
        {},
        "log_level = 10",
        "log_level: must be a string, got 10 (from gw.toml)",
        id="log-level-type",
    ),
    pytest.param(
        {"log_format": "text"},
        {},
        None,
        "log_format: must be one of json, console, got 'text' (from --log-format)",
        id="log-format-flag",
    ),
    pytest.param(
        {},
        {},
        'log_format = ["json"]',
        "log_format: must be a string, got ['json'] (from gw.toml)",
        id="log-format-type",
    ),
    pytest.param(
        {"queue_depth": "3"},
        {},
        None,
        "queue_depth: must be at least 4 frames (a burst of publications needs that room), "
        "got 3 (from --queue-depth)",
        id="queue-depth-below-minimum",
    ),
    pytest.param(
        {"redis_url": "redis://:pw@127.0.0.1:notaport/0"},
        {},
        None,
        "redis_url: the port must be a number from 0 to 65535 (from --redis-url)",
        id="redis-port",
    ),
    pytest.param(
        {},
        {"TRIO_GATEWAY_REDIS_URL": "redis:///0"},
        None,
        "redis_url: a host is required (redis://host:port/db) (from TRIO_GATEWAY_REDIS_URL)",
        id="redis-host",
    ),
    pytest.param(
        {},
        {},
        'redis_url = "redis://:pw@127.0.0.1:6379/notadb"',
        "redis_url: the database must be a number (redis://host:port/0) (from gw.toml)",
        id="redis-db",
    ),
    pytest.param(
        {"redis_url": "redis://127.0.0.1:6379?db=x"},
        {},
        None,
        "redis_url: the database must be a number (redis://host:port/0) (from --redis-url)",
        id="redis-db-parameter",
    ),
    pytest.param(
        {},
        {},
        "prot = 8000",
        "prot: unknown setting; did you mean 'port'? (from gw.toml)",
        id="unknown-key",
    ),
    pytest.param(
        {},
        {},
        "[gateway]\nport = 8000",
        "gateway: unknown setting (from gw.toml)",
        id="table",
    ),
    pytest.param(
        {},
        {},
        'config = "other.toml"',
        "config: unknown setting (from gw.toml)",
        id="config-in-file",
    ),
    pytest.param(
        {"redis_url": "http://:pw@redis:6379"},
        {},
        None,
        "redis_url: must start with redis:// or rediss://, got scheme 'http' (from --redis-url)",
        id="redis-scheme",
    ),
    pytest.param(
        {},
        {"TRIO_GATEWAY_REDIS_PREFIX": "a b"},
        None,
        "redis_prefix: must not contain whitespace, got 'a b' (from TRIO_GATEWAY_REDIS_PREFIX)",
        id="redis-prefix",
    ),
    pytest.param(
        {"workers": "0"},
        {},
        None,
        "workers: must be greater than 0, got 0 (from --workers)",
        id="workers-zero",
    ),
    pytest.param(
        {"history_size": "0"},
        {},
        None,
        "history_size: must be greater than 0, got 0 (from --history-size)",
        id="history-size",
    ),
    pytest.param(
        {},
        {},
        "history_ttl = -1",
        "history_ttl: must be greater than 0, got -1.0 (from gw.toml)",
        id="history-ttl",
    ),
    pytest.param(
        {"state_ttl": "nan"},
        {},
        None,
        "state_ttl: must be a finite number, got 'nan' (from --state-ttl)",
        id="state-ttl",
    ),
    pytest.param(
        {"jwt_secret": " "},
        {},
        None,
        "jwt_secret: must not be empty (from --jwt-secret)",
        id="jwt-secret-blank",
    ),
    pytest.param(
        {},
        {},
        'allowed_origins = "https://a"',
        "allowed_origins: must be a list of strings, got a TOML string (from gw.toml)",
        id="origins-shape",
    ),
    pytest.param(
        {"identify_timeout": "0"},
        {},
        None,
        "identify_timeout: must be greater than 0, got 0.0 (from --identify-timeout)",
        id="identify-timeout",
    ),
]


@pytest.mark.parametrize(("flags", "env", "toml", "message"), INVALID)
def test_invalid_configuration_names_setting_and_source(
    flags: dict[str, str | list[str]], env: dict[str, str], toml: str | None, message: str
) -> None:
    assert error(flags, env, toml) == message


def test_an_overridden_value_is_still_validated() -> None:
    message = error({"port": "8000"}, {"TRIO_GATEWAY_PORT": "eighty"})
    assert message == "port: must be an integer, got 'eighty' (from TRIO_GATEWAY_PORT)"


def test_api_key_in_wrong_toml_shape_is_not_echoed() -> None:
    message = error(toml='api_keys = "s3cret-value"')
    assert message == "api_keys: must be a list of strings, got a TOML string (from gw.toml)"


def test_toml_syntax_error_names_file_and_position() -> None:
    message = error(toml="host = 'x'\nport 8000")
    # The parser's own wording varies between Python versions; the position does not.
    assert message.startswith("config: gw.toml is not valid TOML: ")
    assert message.endswith("(at line 2, column 6)")


def test_enable_echo_switch_from_each_source() -> None:
    assert load().config.enable_echo is False
    assert load({"enable_echo": "true"}).config.enable_echo is True
    for text, expected in [("1", True), ("Yes", True), ("off", False), ("false", False)]:
        assert load(env={"TRIO_GATEWAY_ENABLE_ECHO": text}).config.enable_echo is expected
    assert load(toml="enable_echo = true").config.enable_echo is True
    # The flag (a switch: presence means true) beats an environment that says false.
    assert load({"enable_echo": "true"}, {"TRIO_GATEWAY_ENABLE_ECHO": "0"}).config.enable_echo


def test_admin_switch_from_each_source() -> None:
    assert load().config.admin is False
    assert load({"admin": "true"}).config.admin is True
    assert load(env={"TRIO_GATEWAY_ADMIN": "1"}).config.admin is True
    assert load(toml="admin = true").config.admin is True
    assert error(toml="admin = 1") == "admin: must be true or false, got 1 (from gw.toml)"


def test_enable_echo_rejects_non_booleans() -> None:
    assert error(env={"TRIO_GATEWAY_ENABLE_ECHO": "maybe"}) == (
        "enable_echo: must be one of 1, true, yes, on, 0, false, no, off, got 'maybe'"
        " (from TRIO_GATEWAY_ENABLE_ECHO)"
    )
    assert error(toml='enable_echo = "yes"') == (
        "enable_echo: must be true or false, got 'yes' (from gw.toml)"
    )


def test_ws_paths_and_backend_urls() -> None:
    config = resolve(
        {"ws_paths": ["/ws", "/ws/gateway"]},
        {"TRIO_GATEWAY_COMMAND_URL": "https://backend.internal/commands"},
        'connect_url = "http://127.0.0.1:9000/connect"\nws_paths = ["/api/ws"]',
    ).config
    assert config.ws_paths == ("/ws", "/ws/gateway")
    assert config.command_url == "https://backend.internal/commands"
    assert config.connect_url == "http://127.0.0.1:9000/connect"
    for flags, problem in (
        ({"ws_paths": ["ws"]}, "ws_paths: each path must start with /"),
        ({"ws_paths": ["/a?b"]}, "ws_paths: each path must start with /"),
        ({"command_url": "ftp://x/y"}, "command_url: must be an http:// or https:// URL"),
        ({"connect_url": "redis://:secret@h"}, "connect_url: must be an http:// or https:// URL"),
    ):
        with pytest.raises(ConfigError, match=problem) as caught:
            resolve(flags, {})
        assert "secret" not in str(caught.value)


def test_presence_settings_from_each_source() -> None:
    assert load().config.presence_topics == ()
    config = load(
        {"presence_topics": ["chat.*", "doc.**"], "typing_ttl": "4"},
        {"TRIO_GATEWAY_PRESENCE_GRACE": "2.5"},
        "presence_ttl = 60\npresence_diff_interval = 0.25",
    ).config
    assert config.presence_topics == ("chat.*", "doc.**")
    assert (config.presence_grace, config.presence_ttl) == (2.5, 60.0)
    assert (config.presence_diff_interval, config.typing_ttl) == (0.25, 4.0)
    env = {"TRIO_GATEWAY_PRESENCE_TOPICS": "rooms.*,lobby"}
    assert load(env=env).config.presence_topics == ("rooms.*", "lobby")
    assert load(toml='presence_topics = ["a.b"]').config.presence_topics == ("a.b",)


@pytest.mark.parametrize(
    ("flags", "env", "toml", "problem"),
    [
        ({"presence_topics": ["chat..x"]}, {}, None, "presence_topics: "),
        ({"presence_topics": ["chat.**.x"]}, {}, None, "presence_topics: "),
        ({}, {}, 'presence_topics = "chat.*"', "presence_topics: must be a list of strings"),
        ({}, {}, "presence_topics = [1]", "presence_topics: "),
        ({"presence_ttl": "0"}, {}, None, "presence_ttl: must be greater than 0"),
        ({}, {"TRIO_GATEWAY_PRESENCE_GRACE": "-1"}, None, "presence_grace: must be greater"),
        ({"presence_diff_interval": "inf"}, {}, None, "presence_diff_interval: must be a finite"),
        ({}, {}, 'typing_ttl = "soon"', "typing_ttl: "),
    ],
)
def test_malformed_presence_settings_are_refused(
    flags: dict[str, str | list[str]], env: dict[str, str], toml: str | None, problem: str
) -> None:
    assert error(flags, env, toml).startswith(problem)


# Issue 18's limits: each malformed form refused with its name, from any source.
@pytest.mark.parametrize(
    ("flags", "env", "toml", "problem"),
    [
        ({"max_fragments": "0"}, {}, None, "max_fragments: must be greater than 0"),
        ({"max_fragments": "many"}, {}, None, "max_fragments: "),
        ({}, {"TRIO_GATEWAY_MAX_BODY_MEMORY": "-1"}, None, "max_body_memory: must be greater"),
        ({"max_body_memory": "1000"}, {}, None, "max_body_memory: must be at least max_body_size"),
        ({"max_connections_per_ip": "-1"}, {}, None, "max_connections_per_ip: "),
        ({}, {}, "max_connections = 1.5", "max_connections: "),
        ({}, {"TRIO_GATEWAY_MAX_HANDSHAKES": "x"}, None, "max_handshakes: "),
        ({"client_rate": "-5"}, {}, None, "client_rate: "),
        ({"client_burst": "0"}, {}, None, "client_burst: must be greater than 0"),
        ({"client_publish_rate": "inf"}, {}, None, "client_publish_rate: "),
        ({}, {}, "client_publish_burst = 0", "client_publish_burst: must be greater than 0"),
        ({"max_patterns": "0"}, {}, None, "max_patterns: must be greater than 0"),
        ({}, {}, 'max_pattern_shapes = "all"', "max_pattern_shapes: "),
        ({"drain_window": "-1"}, {}, None, "drain_window: "),
        ({"idempotency_ttl": "0"}, {}, None, "idempotency_ttl: must be greater than 0"),
        ({}, {"TRIO_GATEWAY_WS_PING": "sometimes"}, None, "ws_ping: "),
    ],
)
def test_malformed_limit_settings_are_refused(
    flags: dict[str, str | list[str]], env: dict[str, str], toml: str | None, problem: str
) -> None:
    assert error(flags, env, toml).startswith(problem)
