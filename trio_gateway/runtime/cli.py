"""The `trio-gateway` command: argv, environment and config file in; a running daemon out.

Owns the process edges: argparse and the commands (`serve`, `genconfig`, `check-config`),
reading the TOML file, the lines printed for humans on stderr, the generated API key,
`trio.run`, and exit statuses. Must not decide precedence or
validate values (settings.py), nor run any part of the gateway itself (server.py), nor manage
worker processes (workers.py: `serve --workers N` runs a supervisor there, whose workers come
back here as the hidden `_worker` command and run `run_daemon` like a single process).

Exit statuses:
    0    graceful shutdown finished (first SIGTERM/SIGINT, or the drain ran out of time)
    1    the listener could not be opened (port in use, unknown host, ...), or Redis could not
         be reached at startup
    2    invalid configuration or command line
    N    with --workers: the status of a worker that failed during the first start
    130  interrupted (SIGINT) before the signal watcher was installed
    128+N  a second signal N arrived while draining (130 for SIGINT, 143 for SIGTERM)
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import NoReturn

import attrs
import trio

from .._version import __version__
from ..broker import BrokerUnavailable
from ..common.groups import first_leaf
from ..observability import jsonlog
from ..observability.jsonlog import fields, instance_field
from . import workers
from .collector import tune_for_serving
from .config import REDACTED, Config, ConfigError, LogSettings, redact_url
from .server import Gateway, read_public_key, serve
from .settings import (
    CONFIG_FILE,
    CONFIG_FILE_ENV,
    SETTINGS,
    Setting,
    Settings,
    closest_env,
    config_file,
    resolve,
)
from .settings_text import default_text, genconfig
from .signals import SHUTDOWN_SIGNALS, ForcedShutdown, watch_signals

log = logging.getLogger("trio_gateway.cli")

PROG = "trio-gateway"
EXIT_OK = 0
EXIT_CANNOT_LISTEN = 1
EXIT_INVALID_CONFIG = 2
EXIT_INTERRUPTED = 130
# Bytes of randomness in a generated API key (43 URL-safe characters): unguessable.
GENERATED_KEY_BYTES = 32
HTTP_API_PATH = "/api/"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _flag_help(setting: Setting) -> str:
    env = setting.env + (f" or {setting.doc.env_alias}" if setting.doc.env_alias else "")
    repeats = "; repeat the flag for several" if setting.from_flags else ""
    text = f"{setting.help}{repeats} (env {env}; default {default_text(setting)})"
    # argparse %-formats help strings.
    return text.replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="A real-time WebSocket gateway.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser(
        "serve",
        help="run the gateway until SIGTERM or SIGINT",
        description=(
            "Run the gateway. Each setting comes from its flag, else its environment "
            "variable, else the TOML file (top-level keys named like the settings, e.g. "
            'port = 8000, api_keys = ["k1"]), else its default.'
        ),
        # Absent flags must stay absent so that lower-precedence sources can supply them.
        argument_default=argparse.SUPPRESS,
        # `--max 5` silently meaning `--max-subscriptions` is a trap in a deployment script.
        allow_abbrev=False,
    )
    serve_parser.add_argument(
        "--config",
        dest=CONFIG_FILE,
        metavar="FILE.toml",
        help=f"TOML file of settings (env {CONFIG_FILE_ENV})",
    )
    for setting in SETTINGS:
        if setting.switch:
            serve_parser.add_argument(
                setting.flag,
                dest=setting.name,
                action="store_const",
                const="true",
                help=_flag_help(setting),
            )
            continue
        serve_parser.add_argument(
            setting.flag,
            dest=setting.name,
            metavar=setting.metavar,
            action="append" if setting.from_flags else "store",
            help=_flag_help(setting),
        )
    commands.add_parser(
        "genconfig",
        help="print a TOML file of every setting at its default, with comments",
        description="Print, on stdout, a commented TOML file of every setting at its default "
        "(settings without one commented out, with an example).",
    )
    check_parser = commands.add_parser(
        "check-config",
        help="validate a TOML file as `serve --config FILE` would, without starting",
        description="Validate FILE exactly as `serve --config FILE` reads it, ignoring flags "
        "and TRIO_GATEWAY_* variables. Prints `FILE: ok` and exits 0, or prints the error "
        "and exits 2.",
    )
    check_parser.add_argument("file", metavar="FILE")
    # Internal: how the supervisor starts a worker (workers.py); no help, so it is not listed.
    worker_parser = commands.add_parser(workers.WORKER_COMMAND)
    worker_parser.add_argument("index", type=int)
    return parser


def load_settings(
    flags: Mapping[str, str | Sequence[str]], config_flag: str | None, env: Mapping[str, str]
) -> Settings:
    """Read the TOML file named by `--config` or the environment, then merge every source.

    Raises:
        ConfigError: the file cannot be read, or any setting is invalid.
    """
    file = config_file(config_flag, env)
    if file is None:
        return resolve(flags, env)
    path, source = file
    return resolve(flags, env, _read_config_file(path, source), path)


def _read_config_file(path: str, source: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{CONFIG_FILE}: cannot read {path}: {reason} (from {source})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{CONFIG_FILE}: {path} is not UTF-8 text (from {source})") from None
    return text


def _checked(settings: Settings) -> Settings:
    """`settings`, once what only files can tell is checked too (the JWT key's PEM).

    Raises:
        ConfigError: the JWT public key file cannot be read or used.
    """
    read_public_key(settings.config)
    return settings


def check_config(path: str) -> int:
    """`check-config FILE`: what `serve --config FILE` would make of it, without env or flags."""
    try:
        _checked(resolve({}, {}, _read_config_file(path, "check-config"), path))
    except ConfigError as exc:
        _say(f"{PROG}: invalid configuration: {exc}")
        return EXIT_INVALID_CONFIG
    print(f"{path}: ok", flush=True)
    return EXIT_OK


def _with_generated_key(config: Config) -> Config:
    key = secrets.token_urlsafe(GENERATED_KEY_BYTES)
    # The key goes to stderr exactly once, in the human line below, and never into a log
    # record: log pipelines are where secrets leak.
    log.warning("no API key configured; generated an ephemeral one, valid until exit")
    _say(f"{PROG}: no API key configured; ephemeral key for this run only: {key}")
    # config.py's bare `converter=tuple` leaves its parameter type unsolved (Iterable[_T_co]).
    return attrs.evolve(config, api_keys=(key,))


# The password of a redis://user:password@host URL, or a `password=` query parameter.
def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _announce_addresses(ws_path: str, addresses: Sequence[tuple[str, int]]) -> None:
    for host, port in addresses:
        base = f"{_url_host(host)}:{port}"
        _say(f"{PROG} listening on ws://{base}{ws_path} (HTTP API http://{base}{HTTP_API_PATH})")


def _announce(gateway: Gateway) -> None:
    _announce_addresses(gateway.config.ws_paths[0], gateway.addresses)


async def run_daemon(
    config: Config,
    *,
    on_started: Callable[[Gateway], None] = _announce,
    watch: Callable[[Gateway], Awaitable[None]] | None = None,
) -> int:
    """Serve until a signal drains the gateway; returns the exit status.

    Args:
        config: the validated configuration, with at least one API key.
        on_started: called once the gateway is listening (prints where, by default).
        watch: run alongside the gateway until it stops; a worker's lifeline.

    Raises:
        ForcedShutdown: (in an exception group) a second signal arrived while draining.
    """
    # Open before binding: from here on SIGINT/SIGTERM queue up for the watcher instead of
    # raising KeyboardInterrupt (or killing the process) in the middle of start-up.
    with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        async with trio.open_nursery() as daemon_nursery:

            async def run_gateway(task_status: trio.TaskStatus[Gateway]) -> None:
                await serve(config, task_status=task_status)
                # serve has drained and returned; what is left is the watcher.
                daemon_nursery.cancel_scope.cancel()

            try:
                gateway: Gateway = await daemon_nursery.start(run_gateway)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                where = f"{_url_host(config.host)}:{config.port}"
                _say(f"{PROG}: cannot listen on {where}: {reason}")
                return EXIT_CANNOT_LISTEN
            except BrokerUnavailable as exc:
                # The message names the (redacted) URL: "cannot reach Redis at ...: reason".
                _say(f"{PROG}: {exc}")
                return EXIT_CANNOT_LISTEN
            # The tasks started from here on log as this gateway too (signals, the lifeline).
            instance_field.set(gateway.instance)
            on_started(gateway)
            if watch is not None:
                daemon_nursery.start_soon(watch, gateway)
            await daemon_nursery.start(watch_signals, gateway, signals)
    return EXIT_OK


def _run_daemon_to_exit(
    config: Config,
    on_started: Callable[[Gateway], None] = _announce,
    watch: Callable[[Gateway], Awaitable[None]] | None = None,
) -> int:
    tune_for_serving()
    try:
        status = trio.run(partial(run_daemon, config, on_started=on_started, watch=watch))
    except* ForcedShutdown as forced:
        status = first_leaf(forced).exit_status
    except* KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    return status


def run_worker(index: int) -> int:
    """One worker of `serve --workers N`: its configuration comes from the supervisor on stdin."""
    try:
        if sys.stdin.isatty():
            raise EOFError  # a person typing it; waiting for JSON would only hang
        config, logs = workers.read_spec()
    except EOFError:
        _say(f"{PROG}: {workers.WORKER_COMMAND} is internal to `serve --workers N`")
        return EXIT_INVALID_CONFIG
    jsonlog.configure(logs.log_level, logs.log_format)
    workers.tag_logs(index)
    return _run_daemon_to_exit(config, workers.report_ready, workers.shutdown_when_orphaned)


def _run_supervisor(config: Config, logs: LogSettings, env: Mapping[str, str]) -> int:
    try:
        status = trio.run(
            workers.supervise,
            config,
            logs,
            env,
            partial(_announce_addresses, config.ws_paths[0]),
        )
    except* workers.PortUnavailable as group:
        reason = first_leaf(group)
        _say(f"{PROG}: cannot listen on {_url_host(config.host)}:{config.port}: {reason}")
        status = EXIT_CANNOT_LISTEN
    except* KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    return status


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """The whole command, minus `sys.exit`; argparse itself exits for --help and usage errors."""
    arguments = vars(build_parser().parse_args(argv))
    command = arguments.pop("command")
    if command == workers.WORKER_COMMAND:
        return run_worker(arguments["index"])
    if command == "genconfig":
        print(genconfig(), end="", flush=True)
        return EXIT_OK
    if command == "check-config":
        return check_config(arguments["file"])
    config_flag = arguments.pop(CONFIG_FILE, None)
    try:
        # Checked before anything starts (workers included): a bad key is a config error.
        settings = _checked(load_settings(arguments, config_flag, env))
    except ConfigError as exc:
        _say(f"{PROG}: invalid configuration: {exc}")
        return EXIT_INVALID_CONFIG

    # Decided once here, so that workers (sharing this stderr) write the same format.
    logs = attrs.evolve(
        settings.logs, log_format=jsonlog.chosen_format(settings.logs.log_format, sys.stderr)
    )
    jsonlog.configure(logs.log_level, logs.log_format)
    for name in settings.ignored_env:
        log.warning(
            "ignoring unknown environment variable",
            extra=fields(name=name, did_you_mean=closest_env(name)),
        )
    config = settings.config
    if not config.api_keys:
        config = _with_generated_key(config)
    settings_logged = attrs.asdict(config, filter=lambda field, _: field.name != "api_keys")
    for name in ("redis_url", "command_url", "connect_url"):
        if (url := getattr(config, name)) is not None:
            settings_logged[name] = redact_url(url)
    for name in ("jwt_secret", "metrics_token"):
        if getattr(config, name) is not None:
            settings_logged[name] = REDACTED
    log.info(
        "configuration loaded",
        extra=fields(
            version=__version__,
            log_level=logs.log_level,
            log_format=logs.log_format,
            api_key_count=len(config.api_keys),
            **settings_logged,
        ),
    )

    if config.workers > 1:
        return _run_supervisor(config, logs, env)
    return _run_daemon_to_exit(config)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the `trio-gateway` console script and `python -m trio_gateway`."""
    sys.exit(run(sys.argv[1:] if argv is None else argv, os.environ))
