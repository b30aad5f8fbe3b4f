"""The client's half of the wire: subscribe fields and keys, decoding frames. Pure.

The key rules are the server's (protocol/routing.py); this module only maps between the
keys an application names and the fields a subscribe message carries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..protocol.codec import encode
from ..protocol.messages import Pong
from ..protocol.routing import SESSION_PREFIX, WORKSPACE_PREFIX, is_pattern_key
from ..protocol.topics import ALL
from .positions import Position

PONG_TEXT = encode(Pong())
REPLY_TYPES = frozenset({"subscribed", "unsubscribed", "error"})


def _subscription_fields(key: str) -> dict[str, str]:
    """The subscribe message fields for a key: "all", "workspace:W", "session:S", a topic or
    a pattern (the server checks a topic's syntax)."""
    if key == ALL:
        return {"scope": ALL}
    kind, colon, value = key.partition(":")
    field = {WORKSPACE_PREFIX: "workspace_id", SESSION_PREFIX: "session_id"}.get(kind + colon)
    if (colon and (field is None or not value)) or not key:
        raise ValueError(
            f'expected "all", "workspace:<id>", "session:<id>" or a topic, got {key!r}'
        )
    return {field: value} if field is not None else {"topic": key}


def _key_of(fields: Mapping[str, str]) -> str:
    """The key the server acknowledges for these (exactly one) subscribe fields."""
    ((name, value),) = fields.items()
    if name == "workspace_id":
        return WORKSPACE_PREFIX + value
    if name == "session_id":
        return SESSION_PREFIX + value
    return value  # scope ("all") or topic


def _selection(
    scope: str | None, workspace_id: str | None, session_id: str | None, topic: str | None
) -> dict[str, str]:
    given = {
        name: value
        for name, value in (
            ("scope", scope),
            ("workspace_id", workspace_id),
            ("session_id", session_id),
            ("topic", topic),
        )
        if value is not None
    }
    if len(given) != 1:
        raise ValueError("give exactly one of scope, workspace_id, session_id, topic")
    return given


def _subscribe_message(
    key: str, fields: Mapping[str, str], since: Position | None
) -> dict[str, Any]:
    """A subscribe that asks for the key's position (`recover`) and resumes from `since`;
    a pattern is live only and asks for neither."""
    message: dict[str, Any] = {"type": "subscribe", **fields}
    if since is not None:
        message["since"] = {"offset": since.offset, "epoch": since.epoch}
    elif not is_pattern_key(key):
        message["recover"] = True
    return message


def _decode(frame: str | bytes) -> dict[str, Any] | None:
    if isinstance(frame, bytes):
        return None
    try:
        data = json.loads(frame)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
