"""Command-line client for trio_gateway: subscribe, publish-event, health.

    python scripts/client.py [--url URL] [--token KEY] subscribe --workspace W [--count N]
    python scripts/client.py --token KEY subscribe --topic chat.room.1 --topic 'alerts.**'
    python scripts/client.py --token KEY subscribe --workspace W --from-offset 41 --epoch E
    python scripts/client.py --token KEY publish-event '{"workspace_id":"W","kind":"x"}'
    echo '[{"workspace_id":"W"}]' | python scripts/client.py --token KEY publish-event
    python scripts/client.py health

stdout carries only JSON (one message per line for `subscribe`, flushed line by line);
progress and errors go to stderr. `subscribe` resumes every subscription from its last
offset after a drop, and on exit logs where each one stands (`--from-offset N --epoch E`)
so a later run can pick up from there. Exit codes: 0 ok, 1 server error or unreachable,
2 usage error (invalid JSON input included), 3 unauthorized (HTTP 401 or close 4001).

A thin shell over trio_gateway.client: it owns argument parsing, output and exit codes, and
no protocol logic of its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any
from urllib.parse import urlsplit

import trio

from trio_gateway.client import (
    ClientError,
    Position,
    Unauthorized,
    open_client,
    websocket_url,
)
from trio_gateway.client.http import health, publish_events
from trio_gateway.protocol.jsontext import loads

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAUTHORIZED = 3
# 128 + SIGINT, what shells report for a command stopped with Ctrl-C.
EXIT_INTERRUPTED = 130
# Seconds an HTTP command may take end to end.
HTTP_TIMEOUT = 30.0


class UsageError(Exception):
    """Input the command cannot use (exit 2), found after argparse's own checks."""


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _subscription_keys(args: argparse.Namespace) -> list[str]:
    return (
        (["all"] if args.all else [])
        + [f"workspace:{workspace}" for workspace in args.workspace]
        + [f"session:{session}" for session in args.session]
        + list(args.topic)
    )


def _is_pattern(key: str) -> bool:
    return any(segment in ("*", "**") for segment in key.split("."))


async def _subscribe(args: argparse.Namespace) -> int:
    keys = _subscription_keys(args)
    resume = {}
    if args.from_offset is not None:
        (key,) = keys
        resume[key] = Position(args.epoch, args.from_offset)
        keys = []
    received = 0
    async with open_client(
        websocket_url(args.url), args.token, subscriptions=keys, resume=resume
    ) as client:
        try:
            async for message in client:
                _print_json(message)
                received += 1
                if received == args.count:
                    break
        finally:
            for key, (epoch, offset) in client.positions.items():
                logging.info("position of %s: --from-offset %d --epoch %s", key, offset, epoch)
    return EXIT_OK


async def _publish_event(args: argparse.Namespace, events: Any) -> int:
    with trio.fail_after(HTTP_TIMEOUT):
        _print_json(await publish_events(args.url, args.token, events))
    return EXIT_OK


async def _health(args: argparse.Namespace) -> int:
    with trio.fail_after(HTTP_TIMEOUT):
        _print_json(await health(args.url))
    return EXIT_OK


def _read_events(source: str | None) -> Any:
    text = sys.stdin.read() if source in (None, "-") else source
    try:
        # Strict, as the server parses: NaN and Infinity are not JSON.
        events = loads(text)
    except ValueError as exc:
        raise UsageError(f"invalid JSON: {exc}") from None
    if not isinstance(events, dict | list):
        raise UsageError("the event must be a JSON object or an array of objects")
    return events


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="client.py",
        description="Talk to a trio_gateway server: subscribe, publish events, check health.",
        epilog="Exit codes: 0 ok, 1 server error or unreachable, 2 usage error, 3 unauthorized.",
    )
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="the gateway's base URL; the WebSocket URL is derived from it (default: %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TRIO_GATEWAY_TOKEN"),
        help="API key (default: $TRIO_GATEWAY_TOKEN)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    subscribe = commands.add_parser(
        "subscribe",
        help="print messages as JSON lines, resuming after drops",
        description="Print every message for the chosen subscriptions as one JSON line each. "
        "When the connection drops, reconnects and resumes each subscription from its last "
        "offset: what was published meanwhile is printed first, once and in order (patterns "
        "are live only). If the server no longer has it, the subscription's ack is printed "
        'instead, with "recovered":false. On exit, stderr gives each position as '
        "--from-offset N --epoch E.",
    )
    subscribe.add_argument("--all", action="store_true", help="everything published")
    subscribe.add_argument(
        "--workspace", action="append", default=[], metavar="W", help="a workspace (repeatable)"
    )
    subscribe.add_argument(
        "--session", action="append", default=[], metavar="S", help="a session (repeatable)"
    )
    subscribe.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="T",
        help="a topic such as chat.room.1, or a pattern such as 'chat.*' or 'chat.**' (repeatable)",
    )
    subscribe.add_argument(
        "--from-offset",
        type=_offset,
        metavar="N",
        help="replay the one subscription given from after offset N (needs --epoch; not for "
        "a pattern)",
    )
    subscribe.add_argument(
        "--epoch", metavar="E", help="the epoch --from-offset counts in (from a position)"
    )
    subscribe.add_argument("--count", type=_positive_int, metavar="N", help="exit after N messages")

    publish = commands.add_parser(
        "publish-event",
        help="publish one event or an array of events",
        description="POST an event object, or an array of them, to /api/events and print "
        "the answer.",
    )
    publish.add_argument(
        "event", nargs="?", help="the event as JSON; read from stdin when absent or '-'"
    )

    commands.add_parser("health", help="print the server's health", description="GET /api/health.")
    return parser


def _offset(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _check_subscribe(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    keys = _subscription_keys(args)
    if not keys:
        parser.error("subscribe needs --all, --workspace, --session or --topic")
    if "" in args.workspace + args.session + args.topic:
        parser.error("--workspace, --session and --topic need a non-empty value")
    if (args.from_offset is None) != (args.epoch is None):
        parser.error("--from-offset and --epoch go together")
    if args.from_offset is not None:
        if len(keys) != 1:
            parser.error("--from-offset replays exactly one subscription")
        if _is_pattern(keys[0]):
            parser.error("--from-offset needs a topic, not a pattern: patterns are live only")
        if not args.epoch:
            parser.error("--epoch needs a non-empty value")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    url = urlsplit(args.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        parser.error(f"--url must be an http:// or https:// URL, got {args.url!r}")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    try:
        if args.command == "subscribe":
            _check_subscribe(parser, args)
            return trio.run(_subscribe, args)
        if args.command == "publish-event":
            return trio.run(_publish_event, args, _read_events(args.event))
        return trio.run(_health, args)
    except UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unauthorized as exc:
        hint = "" if args.token else " (no token: pass --token or set TRIO_GATEWAY_TOKEN)"
        print(f"unauthorized: {exc}{hint}", file=sys.stderr)
        return EXIT_UNAUTHORIZED
    except (ClientError, trio.TooSlowError) as exc:
        print(f"error: {str(exc) or 'timed out'}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (`... | head -n 1`). Point stdout at /dev/null so the
        # interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
