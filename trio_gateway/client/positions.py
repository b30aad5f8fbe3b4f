"""Where every held subscription stands, and which messages were delivered already. Pure.

Owns the position of each key (epoch, watermark, offsets delivered above it), duplicate
suppression, and the application's committed view of positions. No trio, no I/O: the
connection's reader feeds it acks and messages in frame order.

Positions and resume. Every key except a wildcard pattern has a log on the server: an epoch
and per-key offsets 1, 2, 3... The client tracks, per key it holds, the epoch and the set of
offsets it has delivered, kept as a watermark (every offset up to it delivered, or older than
the subscription) plus the few delivered above it out of order (`_Tracker`). A subscribe ack
sets the epoch and the starting offset; each message advances every held key it carries an
offset for (`offset` of a topic message, the `offsets` map of the others). All of this is
done by the reader, in frame order, so an ack and the replay right behind it are accounted
in the order the server sent them; the task awaiting the ack only reads the result.

- Reconnecting, each subscription is restored with `since` = its (watermark, epoch); the
  server answers `recovered: true` and replays what was missed before going live, or
  `recovered: false` (history gone, or a new epoch): that ack is handed to the application
  through the iterator, so it knows to refetch, and tracking starts again from the ack.
- While connected, an `epoch` frame says a key's history started over (Redis flushed or
  restarted): tracking starts again at its position, and the application gets the same
  `recovered: false` ack as after a failed resume, before the new epoch's messages.
  Patterns are restored without `since`: they are live only.
- A message may reach a connection twice when a replay repeats what another subscription
  delivered live. The reader drops a message when a held key has delivered it already (an
  offset names one message within its key and epoch), or when every held key it carries an
  offset for is past it (delivered, or older than the subscription). A message with no
  offset for a held key (a pattern match, an older server, a `session.state` snapshot) is
  always delivered.
- A message the application's buffer has no room for is not recorded as delivered, so the
  resume after the drop asks for it again.
- `positions`, what an application persists, must not run ahead of what it has taken from
  the buffer: each buffered message carries the positions its delivery reached (`_Delivery`),
  and the iterator moves the application's view (`_Committed`) as it hands messages out.
"""

from __future__ import annotations

import logging
from collections.abc import (
    Mapping,
)
from typing import Any, NamedTuple, TypeGuard

import attrs

log = logging.getLogger("trio_gateway.client")

# Messages that are a key's state rather than part of its stream: never deduplicated, never
# counted in a position (a session.state is the retained latest update, already counted).
SNAPSHOT_TYPES = frozenset({"session.state"})
# Delivered offsets held above a key's watermark. Only a gap that never fills (a message the
# server never sent this connection) makes them pile up; past this many the gap is given up.
MAX_AHEAD = 10_000


class Position(NamedTuple):
    """Where a client stands on one subscription key: the log's epoch and an offset.

    A plain tuple, `(epoch, offset)`, so it persists as JSON (`["3f2a9c1e", 42]`) and comes
    back with `Position(*loaded)`. Offsets count a key's messages from 1 within an epoch; a
    new epoch means the server's history for the key started over.
    """

    epoch: str
    offset: int


@attrs.frozen
class Subscribed:
    """The server's answer to a subscribe.

    Attributes:
        key: the acknowledged key: "all", "workspace:<id>", "session:<id>", a topic or a
            pattern.
        position: the key's position on the server when it answered: its epoch and the
            offset of its latest message (0 if none yet). None for a pattern (live only) and
            from a server that does not keep offsets, or could not reach its history.
        recovered: None for a subscribe without `since`. True: every message after `since`
            follows the ack, then live ones. False: nothing was replayed; the application
            must refetch its state, and the stream continues from `position`.
    """

    key: str
    position: Position | None
    recovered: bool | None

    @classmethod
    def from_ack(cls, ack: Mapping[str, Any]) -> Subscribed:
        recovered = ack.get("recovered")
        return cls(
            key=str(ack.get("subscription")),
            position=_ack_position(ack),
            recovered=recovered if isinstance(recovered, bool) else None,
        )


def _is_offset(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _ack_position(ack: Mapping[str, Any]) -> Position | None:
    epoch, offset = ack.get("epoch"), ack.get("offset")
    if isinstance(epoch, str) and _is_offset(offset):
        return Position(epoch, offset)
    return None


def _checked_position(value: object, what: str) -> Position:
    """`value` as a Position: a Position or any (epoch, offset) pair, e.g. loaded from JSON."""
    pair: tuple[object, ...] = tuple(value) if isinstance(value, tuple | list) else ()
    if len(pair) != 2:
        raise ValueError(f"{what} must be an (epoch, offset) pair, got {value!r}")
    epoch, offset = pair
    if not isinstance(epoch, str) or not _is_offset(offset):
        raise ValueError(f"{what} needs a string epoch and an offset >= 0, got {value!r}")
    return Position(epoch, offset)


def _message_offsets(message: Mapping[str, Any]) -> dict[str, int]:
    """The offsets a message carries, by key: a topic message's `offset` (key = its topic)
    and the `offsets` map of the others. Empty for snapshots and messages without any."""
    if message.get("type") in SNAPSHOT_TYPES:
        return {}
    found: dict[str, int] = {}
    offsets = message.get("offsets")
    if isinstance(offsets, dict):
        for key, offset in offsets.items():
            if isinstance(key, str) and _is_offset(offset):
                found[key] = offset
    topic, offset = message.get("topic"), message.get("offset")
    if isinstance(topic, str) and _is_offset(offset):
        found[topic] = offset
    return found


@attrs.define(eq=False)
class _Track:
    """One key's offsets within one epoch: which this client has delivered, which it has not.

    Everything up to `offset` is accounted for: delivered here if above `floor`, otherwise
    older than the subscription (or delivered by an earlier process that resumed from
    `floor`). `ahead` holds offsets delivered out of the key's order, above `offset`.
    """

    epoch: str
    offset: int
    floor: int = attrs.field()
    ahead: set[int] = attrs.field(factory=set)

    @floor.default
    def _start_at_offset(self) -> int:
        return self.offset

    def seen(self, offset: int) -> bool:
        """Delivered, or older than the subscription."""
        return offset <= self.offset or offset in self.ahead

    def delivered(self, offset: int) -> bool:
        """Handed to the application by this client."""
        return self.floor < offset <= self.offset or offset in self.ahead

    def record(self, offset: int) -> None:
        if offset == self.offset + 1:
            self.offset = offset
            self._absorb()
        elif offset > self.offset:
            self.ahead.add(offset)
            if len(self.ahead) > MAX_AHEAD:
                lowest = min(self.ahead)
                log.warning(
                    "giving up offsets %d..%d (epoch %s): never received",
                    self.offset + 1,
                    lowest - 1,
                    self.epoch,
                )
                self.skip_to(lowest - 1)

    def skip_to(self, offset: int) -> None:
        """Count everything up to `offset` as not owed (a later starting point)."""
        if offset > self.offset:
            # Below the new floor nothing counts as delivered: losing track of what was is
            # safe (a repeat might get through), claiming what was not would drop messages.
            self.offset = self.floor = offset
            self.ahead = {seen for seen in self.ahead if seen > offset}
            self._absorb()

    def _absorb(self) -> None:
        while self.offset + 1 in self.ahead:
            self.offset += 1
            self.ahead.remove(self.offset)


class _Tracker:
    """Positions of the held keys and duplicate suppression. Pure: no I/O, no trio.

    Driven by the reader in frame order: `acknowledged` for each subscribe ack, `duplicate`
    then `record` for each application message. A key without a track (a pattern, a key
    whose ack gave no position) takes no part in either.

    A message is a duplicate when some tracked key has delivered it already (an offset
    identifies a message within its key and epoch), or when every tracked key it carries an
    offset for is past it. The first catches a replay repeating what another subscription
    delivered live; the second is the plain rule, which also drops what is older than the
    subscriptions. A dropped message is recorded all the same: the keys that had not seen it
    yet (the one being replayed) move past it.
    """

    def __init__(self, resume: Mapping[str, Position] | None = None) -> None:
        self._tracks = {
            key: _Track(position.epoch, position.offset) for key, position in (resume or {}).items()
        }

    def positions(self) -> dict[str, Position]:
        return {key: Position(track.epoch, track.offset) for key, track in self._tracks.items()}

    def position(self, key: str) -> Position | None:
        track = self._tracks.get(key)
        return Position(track.epoch, track.offset) if track is not None else None

    def expect(self, key: str, since: Position) -> bool:
        """A subscribe resuming from `since` is on its way: count what comes meanwhile.

        A key already tracked keeps its track (it knows at least as much). Returns whether
        the track is new."""
        if key in self._tracks:
            return False
        self._tracks[key] = _Track(since.epoch, since.offset)
        return True

    def restart(self, key: str, position: Position) -> bool:
        """The server says `key`'s history started over at `position` (an `epoch` frame):
        count from there. False, with nothing changed, for a key not tracked or a position
        it already has."""
        track = self._tracks.get(key)
        if track is None or (track.epoch, track.offset) == position:
            return False
        self._tracks[key] = _Track(position.epoch, position.offset)
        return True

    def forget(self, key: str) -> None:
        self._tracks.pop(key, None)

    def forget_all(self) -> None:
        self._tracks.clear()

    def acknowledged(self, key: str, since: Position | None, ack: Mapping[str, Any]) -> bool:
        """Account a subscribe ack; `since` is what the subscribe carried.

        Returns whether the key starts over: a new track, at the ack's position or `since`.
        """
        position = _ack_position(ack)
        if position is None:
            # A pattern, or no position to go on: keep whatever we had, for the next resume.
            return False
        track = self._tracks.get(key)
        if track is not None and track.epoch != position.epoch:
            track = None
        if since is not None and ack.get("recovered") is True:
            # The missed messages follow the ack: count from `since`, or from what we know.
            if track is None:
                self._tracks[key] = _Track(position.epoch, since.offset)
                return True
            track.skip_to(since.offset)
            return False
        if since is not None or track is None:
            # A fresh start (a new key, a failed recovery, a new epoch): nothing up to the
            # key's latest offset is owed.
            self._tracks[key] = _Track(position.epoch, position.offset)
            return True
        # The key was already held in this epoch; the server changed nothing.
        return False

    def marks(self, offsets: Mapping[str, int]) -> dict[str, Position]:
        """The positions of the tracked keys among `offsets`."""
        return {
            key: Position(track.epoch, track.offset)
            for key in offsets
            if (track := self._tracks.get(key)) is not None
        }

    def duplicate(self, offsets: Mapping[str, int]) -> bool:
        """Whether a message carrying `offsets` was delivered already (see the class doc)."""
        tracked = [
            (track, offset) for key, offset in offsets.items() if (track := self._tracks.get(key))
        ]
        if not tracked:
            return False
        return any(track.delivered(offset) for track, offset in tracked) or all(
            track.seen(offset) for track, offset in tracked
        )

    def record(self, offsets: Mapping[str, int]) -> None:
        """Count a delivered message on every tracked key it carries an offset for."""
        for key, offset in offsets.items():
            track = self._tracks.get(key)
            if track is not None:
                track.record(offset)


@attrs.define(eq=False)
class _Delivery:
    """A message in the application's buffer, with the positions taking it reaches."""

    message: dict[str, Any]
    # Advanced within their epoch (see _Committed.advance)...
    marks: dict[str, Position] = attrs.field(factory=dict)
    # ...or set outright: a failed recovery's notice starts its key over.
    resets: dict[str, Position] = attrs.field(factory=dict)


class _Committed:
    """The positions the application has reached: what `GatewayClient.positions` reports.

    The reader's `_Tracker` runs ahead by whatever sits in the buffer; this one moves as the
    iterator hands messages out, so a position saved after processing a message never
    claims one the application did not get. Pure, like `_Tracker`.
    """

    def __init__(self, resume: Mapping[str, Position]) -> None:
        self._at = dict(resume)

    def snapshot(self) -> dict[str, Position]:
        return dict(self._at)

    def set(self, key: str, position: Position) -> None:
        self._at[key] = position

    def drop(self, key: str) -> None:
        self._at.pop(key, None)

    def clear(self) -> None:
        self._at.clear()

    def advance(self, marks: Mapping[str, Position]) -> None:
        """Move forward within each key's epoch; a mark from another epoch is stale."""
        for key, mark in marks.items():
            current = self._at.get(key)
            if current is not None and current.epoch == mark.epoch and mark.offset > current.offset:
                self._at[key] = mark
