"""How a publication travels through Redis: names, the message envelope, and turning an
envelope back into what the hub delivers. Pure.

Names under `<prefix>` (the `redis_prefix` setting):
- channel `<prefix><key>` (`trio-gateway:workspace:w1`, `trio-gateway:chat.room.1`): one per
  subscription key, so an instance subscribes only to keys its clients hold;
- hash `<prefix>log:<key>`: the key's `epoch` and latest `offset`;
- list `<prefix>hist:<key>`: the key's last messages, as envelopes;
- string `<prefix>state:<key>`: the retained state (session.state) of a session key.

Envelope: `<header JSON>\\n<message body>`, header `["<id>", [keys], [offsets], <ms>,
"<topic>", "<control>", "<exclude_user>", "<exclude_client>", [epochs]]` ("" for none; the
epochs, aligned with the keys, are absent from envelopes of older versions). The id lets an
instance that receives several copies (one per channel or pattern it subscribes to) deliver
once; keys and offsets complete the body into the frame every local client gets
(publication.with_offsets); the time (Redis's clock, ms) dates history entries; the last
three carry control actions and exclusions (publication.Extra), and the epochs show a key's
history starting over (broker/epochs.py). The body is the message JSON
the publisher built, never parsed again; compact JSON has no raw newline, so the first newline
ends the header.
"""

from __future__ import annotations

import json

import attrs

from ..fanout.publication import Delivery, Extra, delivery


def channel(prefix: str, key: str) -> str:
    return prefix + key


def log_name(prefix: str, key: str) -> str:
    return f"{prefix}log:{key}"


def history_name(prefix: str, key: str) -> str:
    return f"{prefix}hist:{key}"


def state_name(prefix: str, key: str) -> str:
    return f"{prefix}state:{key}"


@attrs.frozen
class Envelope:
    id: str
    keys: tuple[str, ...]
    offsets: tuple[int, ...]
    #: When Redis stored it, in milliseconds of Redis's clock.
    time_ms: int
    topic: str | None
    body: str
    extra: Extra | None = None
    #: Aligned with `keys`; empty from a version that did not send them.
    epochs: tuple[str, ...] = ()

    def delivery(self) -> Delivery:
        return delivery(self.body, self.keys, self.offsets, self.topic, self.extra)

    def offset_of(self, key: str) -> int:
        return self.offsets[self.keys.index(key)]


def _is_list_of(value: object, kind: type) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, kind) and not isinstance(item, bool) for item in value
    )


def decode(data: bytes) -> Envelope:
    """Raises ValueError for anything the gateway's publish script did not write."""
    header, newline, body = data.partition(b"\n")
    if not newline:
        raise ValueError("no envelope header")
    parsed = json.loads(header)
    if not isinstance(parsed, list) or len(parsed) not in (8, 9):
        raise ValueError("malformed envelope header")
    message_id, keys, offsets, time_ms, topic, *rare = parsed[:8]
    epochs = parsed[8] if len(parsed) == 9 else []
    if (
        not isinstance(message_id, str)
        or not _is_list_of(keys, str)
        or not _is_list_of(offsets, int)
        or len(keys) != len(offsets)
        or not keys
        or isinstance(time_ms, bool)
        or not isinstance(time_ms, int)
        or not isinstance(topic, str)
        or not all(isinstance(item, str) for item in rare)
        or not _is_list_of(epochs, str)
        or len(epochs) not in (0, len(keys))
    ):
        raise ValueError("malformed envelope header")
    # Clients would fail the connection on a text frame that is not UTF-8 (RFC 6455 8.1),
    # and with_offsets needs a JSON object to reopen.
    text = body.decode("utf-8")
    if not text.endswith("}"):
        raise ValueError("envelope body is not a JSON object")
    control, exclude_user, exclude_client = (item or None for item in rare)
    extra = Extra(control, exclude_user, exclude_client) if any(rare) else None
    return Envelope(
        message_id, tuple(keys), tuple(offsets), time_ms, topic or None, text, extra, tuple(epochs)
    )
