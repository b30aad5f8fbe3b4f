"""Text <-> typed messages. Owns the one private cattrs Converter; does no I/O.

`decode` never raises on client input: anything malformed becomes an `Error` reply (or, for
a command frame, a `Command` carrying its problem). `encode` produces compact JSON with `type`
first, ASCII-escaped so that no string (lone surrogates included) can fail to encode as UTF-8
later in a writer task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs import transform_error
from cattrs.gen import make_dict_unstructure_fn, override

from .commands import Command
from .jsontext import ECHO_LIMIT as ECHO_LIMIT
from .jsontext import dumps, loads
from .messages import (
    CLIENT_MESSAGES,
    ClientMessage,
    Error,
    EventMessage,
    ServerMessage,
    Since,
)

_converter = cattrs.Converter()


def _strict_str(value: object, _: type) -> str:
    # cattrs would turn 1 into "1"; a number where a string is due is a client error.
    if not isinstance(value, str):
        raise TypeError("must be a string")
    return value


def _strict_int(value: object, _: type) -> int:
    # Neither true nor 3.0 nor "3" is an offset.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("must be an integer")
    return value


def _since(value: object, _: type) -> Since:
    if not isinstance(value, dict):
        raise TypeError("must be an object with offset and epoch")
    offset, epoch = value.get("offset"), value.get("epoch")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise TypeError("offset must be a non-negative integer")
    if not isinstance(epoch, str) or not epoch:
        raise TypeError("epoch must be a non-empty string")
    return Since(offset, epoch)


def _strict_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError("must be true or false")
    return value


_converter.register_structure_hook(str, _strict_str)
_converter.register_structure_hook(bool, _strict_bool)
_converter.register_structure_hook(int, _strict_int)
_converter.register_structure_hook(Since, _since)


def _is_server_message(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, ServerMessage) and attrs.has(cls)


def _omit_none_fields(cls: Any) -> Callable[[Any], dict[str, Any]]:
    # Optional fields (default None) are left off the wire rather than sent as null.
    omitted: dict[str, Any] = {
        field.name: override(omit_if_default=True)
        for field in attrs.fields(cls)
        if field.default is None
    }
    return make_dict_unstructure_fn(cls, _converter, **omitted)


_converter.register_unstructure_hook_factory(_is_server_message, _omit_none_fields)


def _describe(exc: Exception) -> str:
    messages = transform_error(
        exc,
        path="$",
        format_exception=lambda e, _t: (
            "is required" if isinstance(e, KeyError) else str(e) or "invalid value"
        ),
    )
    first = messages[0] if messages else "invalid value"
    detail, _, path = first.rpartition(" @ $.")
    return f"{path} {detail}" if detail else first


def decode(text: str) -> ClientMessage | Error:
    """Parse one client text frame into a typed message, or the `Error` reply to send.

    A frame without `type` but with `command` is a command call (seed 002): it decodes to a
    `Command` even when malformed, since it is answered in the command error form.
    """
    try:
        data: Any = loads(text)
    except ValueError:
        return Error("Invalid JSON")
    if not isinstance(data, dict):
        return Error("Invalid message: expected a JSON object")
    tag = data.get("type")
    if tag is None and "command" in data:
        return Command.from_wire(data)
    if not isinstance(tag, str):
        return Error("Missing message type")
    cls = CLIENT_MESSAGES.get(tag)
    if cls is None:
        return Error(f"Unknown message type: {tag[:ECHO_LIMIT]}")
    try:
        return _converter.structure(data, cls)
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError) as exc:
        return Error(f"Invalid {tag}: {_describe(exc)}")


def encode(message: ServerMessage) -> str:
    """Serialise a server message to the exact text sent on the wire."""
    return dumps({"type": message.TAG, **_converter.unstructure(message)})


_EVENT_HEAD = '{"type":"' + EventMessage.TAG + '","event":'


def encode_event(event: Mapping[str, Any]) -> str:
    """`encode(EventMessage(dict(event)))`, the same text, without the converter when
    `event` is plain JSON already (as every event the HTTP API parsed is): publishing an
    event is the hot path, and the converter's walk is most of its cost.

    Raises:
        ValueError, TypeError: as `encode`.
    """
    try:
        return _EVENT_HEAD + dumps(event) + "}"
    except TypeError:
        # Values only the converter turns into JSON (attrs classes, enums), or not JSON.
        return encode(EventMessage(dict(event)))
