"""Flags, `TRIO_GATEWAY_*` environment variables and a TOML file, merged into one `Config`.

Owns how each setting is parsed from each source, the table of settings derived from the
declarations in config.py (`SETTINGS`), and the precedence order: flag > environment > file >
default. Pure: it is handed the flag values, an environment
mapping and the file's text, and must not read files, the real environment or argv itself;
cli.py does that and turns `ConfigError` into exit status 2.

Theory of operation
-------------------
Every setting has one name, used three ways: the `Config` field and TOML key (`max_body_size`),
the flag (`--max-body-size`) and the variable (`TRIO_GATEWAY_MAX_BODY_SIZE`). The lists
(`api_keys`, `allowed_origins`, `ws_paths`, `presence_topics`) have a singular flag that
repeats (`--api-key`), a comma-separated variable, and a TOML list of strings.
The TOML file holds the settings as top-level keys; anything else in it is an error. A
setting may have one more variable (`TRIO_GATEWAY_API_KEY` for `api_keys`, the spelling people
reach for); giving both is an error rather than a silent choice.

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

from .config import DOC, Config, ConfigError, Doc, LogSettings

ENV_PREFIX = "TRIO_GATEWAY_"
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


def _choice_from_text(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in choices:
            raise _Invalid(f"must be one of {', '.join(choices)}, got {text!r}")
        return word

    return parse


def _choice_from_toml(choices: tuple[str, ...]) -> Callable[[object], str]:
    from_text = _choice_from_text(choices)
    return lambda value: from_text(_str_from_toml(value))


@attrs.frozen
class Setting:
    """One setting as the sources see it: its names, parsers and its declaration's `Doc`."""

    name: str
    default: object
    doc: Doc
    from_text: Callable[[str], Any]
    from_toml: Callable[[object], Any]
    #: Parses the list a repeatable flag collects; None for a flag given once.
    from_flags: Callable[[Sequence[str]], Any] | None = None
    #: A flag that takes no value (`--enable-echo`); its presence means "true".
    switch: bool = False

    @property
    def flag(self) -> str:
        return self.doc.flag or "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def metavar(self) -> str:
        return self.doc.metavar or _METAVARS.get(self.from_text, "")

    @property
    def help(self) -> str:
        """The help line as plain text (the declaration may quote code in backticks)."""
        return self.doc.help.replace("`", "")

    @property
    def unset(self) -> bool:
        """Whether the default is no value at all (None, or an empty list)."""
        return self.default is None or self.default == ()


_METAVARS: dict[Callable[[str], Any], str] = {_int_from_text: "N", _float_from_text: "SECONDS"}


def _setting(field: attrs.Attribute[Any]) -> Setting:
    """The Setting a declared field makes: its annotation says how each source is parsed."""
    doc: Doc = field.metadata[DOC]
    name, default = field.name, field.default
    if doc.choices:
        return Setting(
            name, default, doc, _choice_from_text(doc.choices), _choice_from_toml(doc.choices)
        )
    # `from __future__ import annotations` leaves the annotation as its source text; a new
    # type fails here, at import, until it is given its parsers.
    match field.type:
        case "int":
            return Setting(name, default, doc, _int_from_text, _int_from_toml)
        case "float":
            return Setting(name, default, doc, _float_from_text, _float_from_toml)
        case "bool":
            return Setting(name, default, doc, _bool_from_text, _bool_from_toml, switch=True)
        case "str" | "str | None":
            return Setting(name, default, doc, _str_from_text, _str_from_toml)
        case "tuple[str, ...]":
            return Setting(name, default, doc, _keys_from_text, _keys_from_toml, _keys_from_flags)
    raise TypeError(f"{name}: no parsers for a setting of type {field.type}")


SETTINGS: tuple[Setting, ...] = tuple(
    _setting(field) for field in (*attrs.fields(Config), *attrs.fields(LogSettings))
)
_BY_NAME = {setting.name: setting for setting in SETTINGS}
_BY_ENV = {setting.env: setting for setting in SETTINGS} | {
    setting.doc.env_alias: setting for setting in SETTINGS if setting.doc.env_alias
}
_LOG_NAMES = frozenset(attrs.fields_dict(LogSettings))


@attrs.frozen
class Settings:
    """The merged result: a validated Config plus what is not part of it."""

    config: Config
    logs: LogSettings
    #: `TRIO_GATEWAY_*` variables that name no setting (names only: values may be secrets).
    ignored_env: tuple[str, ...] = ()


def _validated(setting: Setting, value: Any, source: str) -> Any:
    """`value`, checked by Config's own validator for that field, so errors name `source`."""
    field = (attrs.fields_dict(Config) | attrs.fields_dict(LogSettings))[setting.name]
    try:
        if field.validator is not None:
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
    sources: dict[str, str] = {}
    ignored = []
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_ENV:
            continue
        setting = _BY_ENV.get(name)
        if setting is None:
            ignored.append(name)
        elif text:
            if (other := sources.get(setting.name)) is not None:
                first, second = sorted((other, name))
                raise ConfigError(f"{setting.name}: set {first} or {second}, not both")
            sources[setting.name] = name
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
        The validated Config and LogSettings, and the unknown variables seen.

    Raises:
        ConfigError: a value is malformed or invalid; the message starts with the setting's
            name and ends with its source, and is one line.
    """
    from_file = _from_file(file_text, file_name) if file_text is not None else {}
    from_env, ignored_env = _from_env(env)
    merged = {**from_file, **from_env, **_from_flags(flags)}
    logs = {name: merged.pop(name) for name in _LOG_NAMES & merged.keys()}
    return Settings(Config(**merged), LogSettings(**logs), ignored_env)
