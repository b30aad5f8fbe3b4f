"""Seed 002's command frames: `{command, payload, id}` in, `{event, payload, id}` out. Pure.

A command frame has no `type`: codec.py recognises it by its `command` field and hands the
object to `Command.from_wire` (a command is not in `CLIENT_MESSAGES`: `{"type":"command"}` is
an unknown type), which never fails: a malformed frame becomes a `Command` with
its `problem` set, answered in the command error form (not the `{"type":"error"}` reply), so
a seed 002 client always gets an answer it understands. Running commands is commands/'s.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from .frames import text_frame
from .jsontext import ECHO_LIMIT, dumps
from .messages import ClientMessage
from .routing import encodable

#: The event of every command failure.
ERROR_EVENT = "error"

# Error codes of the command error event (docs/PROTOCOL.md lists them).
UNKNOWN_COMMAND = "unknown_command"
FORBIDDEN = "forbidden"
FAILED = "failed"
TIMEOUT = "timeout"
UNAVAILABLE = "unavailable"
TOO_MANY = "too_many"
INVALID = "invalid"

#: Longest command name accepted; a longer one is refused (and echoed cut to ECHO_LIMIT).
MAX_NAME_LENGTH = 128
#: Longest `id` echoed on answers; a longer one is refused, and not echoed.
MAX_ID_LENGTH = 128


@attrs.frozen
class Command(ClientMessage):
    """A command call. `problem` is set when the frame was malformed: the call is refused
    with `code` `invalid`, and `name`/`id` hold only what can safely be echoed."""

    TAG: ClassVar[str] = "command"
    name: str
    payload: Any = None
    id: str | None = None
    problem: str | None = None

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Command:
        """The command `data` (a JSON object with a `command` field) asks for; never raises."""
        name, raw_id = data["command"], data.get("id")
        call_id = raw_id if _valid_id(raw_id) else None
        echoed = name[:ECHO_LIMIT] if isinstance(name, str) and encodable(name) else ""
        problem = None
        if not isinstance(name, str):
            problem = "command must be a string"
        elif not name:
            problem = "command must not be empty"
        elif len(name) > MAX_NAME_LENGTH:
            problem = f"command must be at most {MAX_NAME_LENGTH} characters"
        elif not encodable(name):
            problem = "command must be valid Unicode text"
        elif raw_id is not None and call_id is None:
            problem = f"id must be a string of at most {MAX_ID_LENGTH} characters"
        return cls(echoed, data.get("payload"), call_id, problem)


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH and encodable(value)


def answer_frame(event: str, payload: Any, call_id: str | None) -> bytes:
    """The answer to a command: `{"event":..,"payload":..}`, plus `id` when the call had one.

    Raises:
        ValueError, TypeError: `payload` is not JSON (a handler's bug, answered as failed).
    """
    answer: dict[str, Any] = {"event": event, "payload": payload}
    if call_id is not None:
        answer["id"] = call_id
    return text_frame(dumps(answer))


def error_answer_frame(command: str, message: str, code: str, call_id: str | None) -> bytes:
    """The command error event: `{"event":"error","payload":{command,message,code}}` (+ id)."""
    payload = {"command": command, "message": message[: ECHO_LIMIT * 2], "code": code}
    return answer_frame(ERROR_EVENT, payload, call_id)


def may_call(allowed: tuple[str, ...] | None, name: str) -> bool:
    """Whether an identity whose command grants are `allowed` (None: all) may call `name`."""
    return allowed is None or "*" in allowed or name in allowed
