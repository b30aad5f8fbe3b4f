"""Runs command calls: the handler of `Command` messages in the message registry.

Theory of operation
-------------------
The reader hands a call over and goes on reading at once: the call runs as a task in the
connection's session nursery (`Client.tasks`), so a slow command never delays that
connection's pings, pongs, acks or deliveries; once the connection stops reading (the
lifecycle's stop hook, `stop`), every call still running is cancelled (their backend
requests with them). At most `max_inflight` calls of one connection run at once;
one more is refused with `too_many`. Each call has `timeout` seconds.

Every call gets exactly one answer: the handler's event, or the error event with a code
(docs/PROTOCOL.md). A handler's exception never reaches the client as text: `CommandError`
is sent as its author wrote it, anything else is logged and answered `failed`. At debug
level every call, refused ones included, is logged once with its outcome (`ok` or the error
code; `cancelled` when the connection went away first) and duration.

Must not: know where a command is answered (registry.py resolves that) or write to the
socket other than through `client.send`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from ..fanout.hub import Client
from ..observability.jsonlog import fields
from ..protocol.commands import (
    FAILED,
    FORBIDDEN,
    INVALID,
    TIMEOUT,
    TOO_MANY,
    UNKNOWN_COMMAND,
    Command,
    answer_frame,
    error_answer_frame,
    may_call,
)
from ..session.context import GatewayContext
from ..session.lifecycle import Lifecycle
from ..session.registry import Registry
from .registry import Caller, CommandError, CommandHandler, Commands

log = logging.getLogger("trio_gateway.commands")

# Longest error code a `CommandError` may carry; a longer one is answered `failed`.
MAX_CODE_LENGTH = 64
#: The outcome logged for a call answered with the handler's event.
OK = "ok"
#: The outcome logged for a call cancelled before it was answered (the client went away).
CANCELLED = "cancelled"
#: The outcome counted for a call answered with a handler's own error code: the codes a
#: `CommandError` may carry are unbounded, the metrics' labels must not be.
REJECTED = "error"
_COUNTED = frozenset(
    {OK, CANCELLED, FAILED, FORBIDDEN, INVALID, TIMEOUT, TOO_MANY, UNKNOWN_COMMAND}
)

#: Told of every call once: its outcome, and its seconds when it ran (None when refused).
CallObserver = Callable[[str, "float | None"], None]


def _ignore(outcome: str, seconds: float | None) -> None:
    pass


class CommandRunner:
    """Runs the calls of every connection of one gateway."""

    def __init__(
        self,
        commands: Commands,
        *,
        timeout: float,
        max_inflight: int,
        on_call: CallObserver = _ignore,
    ) -> None:
        self.commands = commands
        self.timeout = timeout
        self.max_inflight = max_inflight
        self._on_call = on_call
        self._running: dict[Client, set[trio.CancelScope]] = {}

    def inflight(self, client: Client) -> int:
        """Calls of `client` running now."""
        return len(self._running.get(client, ()))

    def stop(self, client: Client) -> None:
        """Cancel every call of `client` still running (it has stopped reading)."""
        for scope in self._running.get(client, ()):
            scope.cancel()

    def handle(self, client: Client, context: GatewayContext, message: Command) -> None:
        """Start the call `message` asks for, or answer why not; never waits."""
        name = message.name
        if message.problem is not None:
            self._refuse(client, message, INVALID, f"Invalid command: {message.problem}")
        elif not may_call(client.identity.commands, name):
            self._refuse(client, message, FORBIDDEN, f"Forbidden: may not call {name}")
        elif (handler := self.commands.resolve(name)) is None:
            self._refuse(client, message, UNKNOWN_COMMAND, f"Unknown command: {name}")
        elif self.inflight(client) >= self.max_inflight:
            self._refuse(
                client,
                message,
                TOO_MANY,
                f"Too many commands in flight: at most {self.max_inflight} per connection",
            )
        elif client.tasks is not None:
            scope = trio.CancelScope()
            self._running.setdefault(client, set()).add(scope)
            client.tasks.start_soon(self._run, client, handler, message, scope)

    def _refuse(self, client: Client, message: Command, code: str, text: str) -> None:
        _log_call(client, message, code, trio.current_time())
        self._on_call(code, None)
        client.send(error_answer_frame(message.name, text, code, message.id))

    async def _run(
        self, client: Client, handler: CommandHandler, message: Command, scope: trio.CancelScope
    ) -> None:
        started = trio.current_time()
        outcome = CANCELLED
        try:
            with scope:
                frame, outcome = await self._answer(client, handler, message)
                client.send(frame)
        finally:
            _log_call(client, message, outcome, started)
            self._on_call(
                outcome if outcome in _COUNTED else REJECTED, trio.current_time() - started
            )
            running = self._running[client]
            running.discard(scope)
            if not running:
                del self._running[client]

    async def _answer(
        self, client: Client, handler: CommandHandler, message: Command
    ) -> tuple[bytes, str]:
        """The answer frame of one call, and its outcome for the log (`ok` or the code)."""
        identity = client.identity
        caller = Caller(
            client.id, identity.user_id, identity.session_id, identity.info, client.state
        )
        name, call_id = message.name, message.id
        try:
            with trio.move_on_after(self.timeout):
                answer = await handler(caller, message.payload)
                return _answer_frame(answer, call_id), OK
            text = f"Command timed out after {self.timeout:g} s"
            return error_answer_frame(name, text, TIMEOUT, call_id), TIMEOUT
        except CommandError as exc:
            code = exc.code if _valid_code(exc.code) else FAILED
            return error_answer_frame(name, str(exc.message), code, call_id), code
        except Exception:
            log.exception("command failed", extra=fields(client_id=client.id, command=name))
            return error_answer_frame(name, "Command failed", FAILED, call_id), FAILED


def _log_call(client: Client, message: Command, outcome: str, started: float) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "command",
            extra=fields(
                client_id=client.id,
                command=message.name,
                id=message.id,
                outcome=outcome,
                duration_ms=round((trio.current_time() - started) * 1000, 3),
            ),
        )


class BadAnswer(Exception):
    """A handler returned something that is not `(event, payload)` with JSON payload."""


def _answer_frame(answer: Any, call_id: str | None) -> bytes:
    if not isinstance(answer, tuple | list) or len(answer) != 2:
        raise BadAnswer("a command handler must return (event, payload)")
    event, payload = answer
    if not isinstance(event, str) or not event:
        raise BadAnswer("a command handler's event must be a non-empty string")
    try:
        return answer_frame(event, payload, call_id)
    except (TypeError, ValueError):
        raise BadAnswer("a command handler's payload must be JSON") from None


def _valid_code(code: object) -> bool:
    return isinstance(code, str) and 0 < len(code) <= MAX_CODE_LENGTH


def install(registry: Registry, lifecycle: Lifecycle, runner: CommandRunner) -> None:
    registry.register(Command, runner.handle)
    lifecycle.on_stop(runner.stop)
