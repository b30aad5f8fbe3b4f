"""Which code answers which command: in-process handlers by name, then the backend.

Owns the handler contract an embedding program writes to, and the lookup. Must not run a
command (runner.py does: limits, time limits, turning failures into error events) or know
HTTP (the backend proxy is backend/commands.py, installed as the fallback).

A handler is `async def handler(caller: Caller, payload) -> tuple[str, object]`: it gets who
called and the call's payload (any JSON value, None when absent) and returns the answer's
event name and payload (any JSON value). To fail in words the client may read it raises
`CommandError(message, code)`; any other exception answers `failed` with a generic message
(the exception is logged, never sent).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from ..protocol.commands import FAILED

#: What a handler returns: the answer's event and its payload.
Answer = tuple[str, Any]


@attrs.frozen
class Caller:
    """Who called a command."""

    #: The connection (its `ready`'s client_id).
    client_id: str
    #: The user (JWT `sub`, or the connect hook's user_id); None for an API key.
    user_id: str | None
    #: The backend's session (connect hook); None otherwise.
    session_id: str | None
    #: What the connect hook said about the user; None otherwise.
    info: Any
    #: Lives as long as the connection and is shared by all its commands (seed 002's
    #: per-connection browsing context): a handler may keep anything here.
    state: dict[str, Any]


CommandHandler = Callable[[Caller, Any], Awaitable[Answer]]
#: The handler of every command without one of its own; it is also given the name.
Fallback = Callable[[str, Caller, Any], Awaitable[Answer]]


class CommandError(Exception):
    """A command's failure as the client sees it: `message` and `code` are sent as they are.

    `code` is one of the documented codes (docs/PROTOCOL.md), `failed` by default.
    """

    def __init__(self, message: str, code: str = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Commands:
    """The commands of one gateway: `register` them before clients call."""

    def __init__(self) -> None:
        self._handlers: dict[str, CommandHandler] = {}
        self._fallback: Fallback | None = None

    def register(self, name: str, handler: CommandHandler) -> None:
        """Make `handler` answer the command `name`; one handler per name.

        Raises:
            ValueError: `name` is empty or has a handler already.
        """
        if not name:
            raise ValueError("a command name must not be empty")
        if name in self._handlers:
            raise ValueError(f"command {name!r} has a handler already")
        self._handlers[name] = handler

    def command(self, name: str) -> Callable[[CommandHandler], CommandHandler]:
        """`register` as a decorator: `@gateway.commands.command("getTables")`."""

        def decorate(handler: CommandHandler) -> CommandHandler:
            self.register(name, handler)
            return handler

        return decorate

    def set_fallback(self, fallback: Fallback | None) -> None:
        """Answer every command without a handler of its own with `fallback` (the backend)."""
        self._fallback = fallback

    def resolve(self, name: str) -> CommandHandler | None:
        """What answers `name`: its handler, else the fallback, else None (unknown)."""
        handler = self._handlers.get(name)
        if handler is not None:
            return handler
        fallback = self._fallback
        if fallback is None:
            return None

        async def call(caller: Caller, payload: Any) -> Answer:
            return await fallback(name, caller, payload)

        return call
