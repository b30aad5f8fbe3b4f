"""What a publisher hands to the broker, and how a message gets its offsets. Pure.

Owns `Publication` (a message serialised once, without offsets), `Position` (where a key's
history stands) and `with_offsets`, which completes a message text once its offsets are
known. Building publications from events (validation, routing) lives in broadcaster.py;
assigning offsets and moving publications between instances lives in broker/.
"""

from __future__ import annotations

from typing import NamedTuple

import attrs

from ..protocol.frames import text_frame
from ..protocol.jsontext import dumps


@attrs.frozen
class Extra:
    """The rare parts of a publication: who must not get it, and control actions."""

    #: "expire": the recipients' sessions end (4002) instead of receiving a message;
    #: "unbind": recipients the backend bound to one of its keys close 1000 after it;
    #: "epoch": an epoch notice (broker/epochs.py), for the key's recovering subscribers only.
    control: str | None = None
    exclude_user: str | None = None
    exclude_client: str | None = None


EXPIRE = "expire"
UNBIND = "unbind"
EPOCH = "epoch"


class Delivery(NamedTuple):
    """One publication as the hub gets it, its offsets known.

    `plain` is the seed protocol's frame byte for byte; a client that asked for recovery gets
    `complete`, the frame with offsets. On a topic message the two are the same.
    """

    plain: bytes
    complete: bytes
    keys: tuple[str, ...]
    #: Aligned with `keys`.
    offsets: tuple[int, ...]
    topic: str | None
    extra: Extra | None


class OffsetFrame(NamedTuple):
    """A message frame with its offset on one key: a replay entry, or one kept aside."""

    offset: int
    frame: bytes


@attrs.frozen
class Retain:
    """Keep (or, with `state` None, forget) the latest state of a key: session.state."""

    key: str
    state: str | None


@attrs.frozen
class Publication:
    """A server message serialised once, with the subscription keys it goes to.

    `body` is the message JSON without its offsets (the broker assigns those); it ends with
    the closing brace that `with_offsets` reopens.
    """

    body: str
    keys: tuple[str, ...]
    # A generic-topic message: one key, the topic, and a single "offset" field.
    topic: str | None = None
    retain: Retain | None = None
    extra: Extra | None = None
    # The publisher's key for this publication: one already published under it within
    # `idempotency_ttl` (on any instance) is not published again.
    idempotency_key: str | None = None


class Assigned(NamedTuple):
    """What the broker did with one publication: its offsets (aligned with its keys), and
    whether it was a repeat of an idempotency key, the offsets being those of the first."""

    offsets: tuple[int, ...]
    duplicate: bool = False


@attrs.frozen
class Position:
    """Where a key's history stands, as a subscribe ack reports it, plus any replay."""

    epoch: str
    offset: int
    # Answer to a `since`: None when none was asked.
    recovered: bool | None = None
    # Message frames after `since`, in order, with their offsets on this key.
    replay: tuple[OffsetFrame, ...] = ()
    # The retained state message (session.state) when asked for and present.
    state: str | None = None


def delivery(
    body: str,
    keys: tuple[str, ...],
    offsets: tuple[int, ...],
    topic: str | None,
    extra: Extra | None = None,
) -> Delivery:
    """Both frames of a publication whose offsets are known, built once for every client."""
    complete = text_frame(with_offsets(body, keys, offsets, topic))
    plain = complete if topic is not None else text_frame(body)
    return Delivery(plain, complete, keys, offsets, topic, extra)


def with_offsets(
    body: str, keys: tuple[str, ...], offsets: tuple[int, ...], topic: str | None
) -> str:
    """`body` completed with its offsets: `"offset":N` on a topic message, else a key map."""
    if topic is not None:
        return f'{body[:-1]},"offset":{offsets[0]}}}'
    mapping = dumps(dict(zip(keys, offsets, strict=True)))
    return f'{body[:-1]},"offsets":{mapping}}}'
