"""Presence and typing on the wire: the client messages, members, diffs and frames. Pure.

Owns the shapes of `presence`, `presence.get` and `typing` (client to server) and of
`presence.state`, `presence.diff`, `presence.set` and `typing` (server to client), and the
two pure computations presence needs: a user's member entry from every instance's share of
them, and the diff between what observers were told and what is true now. Must not: know
where shares are stored or who observes (presence/).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs

from .jsontext import dumps
from .messages import ClientMessage, client_message

ONLINE = "online"
INVISIBLE = "invisible"
#: The statuses a client may set; `invisible` hides the user from every member list.
STATUSES = (ONLINE, "idle", "dnd", INVISIBLE)
START = "start"
STOP = "stop"
TYPING_STATES = (START, STOP)


@client_message
@attrs.frozen
class PresenceUpdate(ClientMessage):
    """Set the sender's user's status on every presence topic they are on."""

    TAG: ClassVar[str] = "presence"
    status: str


@client_message
@attrs.frozen
class PresenceGet(ClientMessage):
    """Ask who is present on a topic (answered with presence.state)."""

    TAG: ClassVar[str] = "presence.get"
    topic: str


@client_message
@attrs.frozen
class Typing(ClientMessage):
    """The sender's user started (or stopped) typing on a topic."""

    TAG: ClassVar[str] = "typing"
    topic: str
    state: str = START


@attrs.frozen
class Share:
    """One instance's part of a user's presence on a topic: its connections there (at least
    1, held through the grace of a reload) and what the user's identity says about them."""

    connections: int
    info: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Member:
    """A present user as every observer sees them."""

    user_id: str
    status: str
    connections: int
    info: Mapping[str, Any]

    def wire(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "status": self.status,
            "connections": self.connections,
            "info": dict(self.info),
        }


def member(user_id: str, shares: Iterable[Share], status: str | None) -> Member | None:
    """The member entry of a user from every instance's share, or None when they are not to
    be seen (no share left, or invisible)."""
    shares = list(shares)
    if not shares or status == INVISIBLE:
        return None
    info = next((share.info for share in shares if share.info), {})
    return Member(user_id, status or ONLINE, sum(share.connections for share in shares), info)


@attrs.frozen
class Diff:
    joins: tuple[Member, ...] = ()
    leaves: tuple[str, ...] = ()
    updates: tuple[Member, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.joins or self.leaves or self.updates)


def diff(seen: Mapping[str, Member], fresh: Mapping[str, Member | None]) -> Diff:
    """What changed for the users in `fresh` (their entry now, None: gone) since `seen`."""
    joins, leaves, updates = [], [], []
    for user_id in sorted(fresh):
        now, before = fresh[user_id], seen.get(user_id)
        if now is None:
            if before is not None:
                leaves.append(user_id)
        elif before is None:
            joins.append(now)
        elif now != before:
            updates.append(now)
    return Diff(tuple(joins), tuple(leaves), tuple(updates))


def apply(seen: dict[str, Member], change: Diff) -> None:
    """Bring `seen` up to date with `change`."""
    for user_id in change.leaves:
        del seen[user_id]
    for entry in (*change.joins, *change.updates):
        seen[entry.user_id] = entry


def state_text(topic: str, members: Iterable[Member]) -> str:
    ordered = sorted(members, key=lambda entry: entry.user_id)
    return dumps(
        {"type": "presence.state", "topic": topic, "members": [entry.wire() for entry in ordered]}
    )


def diff_text(topic: str, change: Diff) -> str:
    return dumps(
        {
            "type": "presence.diff",
            "topic": topic,
            "joins": [entry.wire() for entry in change.joins],
            "leaves": [{"user_id": user_id} for user_id in change.leaves],
            "updates": [entry.wire() for entry in change.updates],
        }
    )


def status_set_text(status: str) -> str:
    return dumps({"type": "presence.set", "status": status})


def typing_text(topic: str, user_id: str, state: str) -> str:
    return dumps({"type": "typing", "topic": topic, "user_id": user_id, "state": state})
