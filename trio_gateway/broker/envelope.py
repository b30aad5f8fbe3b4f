"""How a publication travels through Redis: channel names and the message envelope. Pure.

Channel: `<prefix><key>`, one per subscription key (`trio-gateway:workspace:w1`,
`trio-gateway:all`). A publication is published once on the channel of each of its keys, so an
instance subscribes only to the keys its clients hold, and one with no "all" subscriber never
sees the "all" copy.

Envelope: `<header JSON>\n<message text>`, header `["<id>", ["<key>", ...]]`. The id lets an
instance that receives several copies (one per channel it subscribes to) deliver once; the keys
let it deliver to every local client of any of them. The message text is the JSON the clients
get, untouched, so it is never parsed again; compact JSON has no raw newline, so the first
newline ends the header.
"""

from __future__ import annotations

import json

import attrs


def channel(prefix: str, key: str) -> str:
    return prefix + key


def encode(message_id: str, keys: tuple[str, ...], text: str) -> bytes:
    header = json.dumps([message_id, keys], separators=(",", ":"), ensure_ascii=False)
    return f"{header}\n{text}".encode()


@attrs.frozen
class Envelope:
    id: str
    keys: tuple[str, ...]
    # UTF-8 of the message text: framed as is, never decoded.
    payload: bytes


def decode(data: bytes) -> Envelope:
    """Raises ValueError for anything this module did not encode."""
    header, newline, payload = data.partition(b"\n")
    if not newline:
        raise ValueError("no envelope header")
    parsed = json.loads(header)
    if (
        not isinstance(parsed, list)
        or len(parsed) != 2
        or not isinstance(parsed[0], str)
        or not isinstance(parsed[1], list)
        or not all(isinstance(key, str) for key in parsed[1])
    ):
        raise ValueError("malformed envelope header")
    # Clients would fail the connection on a text frame that is not UTF-8 (RFC 6455 8.1).
    payload.decode("utf-8")
    return Envelope(parsed[0], tuple(parsed[1]), payload)
