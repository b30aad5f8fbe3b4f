"""The client's position tracking, fed frames directly: synchronous, no socket, no trio.

What the reader does with each ack and message, in frame order: positions, duplicate
suppression across subscriptions and replays, and giving up a gap that never fills; and what
`positions` reports as the application takes messages (the reader runs ahead of it).
"""

from __future__ import annotations

from typing import Any

import pytest

from trio_gateway.client.positions import (
    MAX_AHEAD,
    Position,
    _Committed,
    _Delivery,
    _message_offsets,
    _Tracker,
)


class Feed:
    """The reader's bookkeeping without a socket: acks and messages in, delivered out."""

    def __init__(self, resume: dict[str, Position] | None = None) -> None:
        self.tracker = _Tracker(resume)
        self.delivered: list[dict[str, Any]] = []
        # What the buffer holds, in order, with the positions taking each reaches.
        self.buffered: list[_Delivery] = []

    def ack(
        self,
        key: str,
        epoch: str,
        offset: int,
        *,
        since: Position | None = None,
        recovered: bool | None = None,
    ) -> None:
        frame: dict[str, Any] = {
            "type": "subscribed",
            "subscription": key,
            "epoch": epoch,
            "offset": offset,
        }
        if recovered is not None:
            frame["recovered"] = recovered
        if since is not None:
            self.tracker.expect(key, since)
        self.tracker.acknowledged(key, since, frame)

    def frame(self, message: dict[str, Any]) -> bool:
        offsets = _message_offsets(message)
        if self.tracker.duplicate(offsets):
            self.tracker.record(offsets)
            return False
        self.delivered.append(message)
        self.tracker.record(offsets)
        self.buffered.append(_Delivery(message, self.tracker.marks(offsets)))
        return True

    def event(self, name: str, **offsets: int) -> bool:
        keys = {key.replace("_", ":", 1): offset for key, offset in offsets.items()}
        return self.frame({"type": "event", "event": {"n": name}, "offsets": keys})

    def names(self) -> list[str]:
        return [message["event"]["n"] for message in self.delivered]


def test_message_offsets() -> None:
    topic = {"type": "message", "topic": "chat.room.1", "data": 1, "offset": 7}
    assert _message_offsets(topic) == {"chat.room.1": 7}
    routed = {"type": "event", "event": {}, "offsets": {"all": 3, "workspace:w": 2}}
    assert _message_offsets(routed) == {"all": 3, "workspace:w": 2}
    # Malformed entries are ignored rather than trusted.
    odd = {"type": "event", "offsets": {"all": True, "workspace:w": -1, "session:s": "4"}}
    assert _message_offsets(odd) == {}
    assert _message_offsets({"type": "event", "event": {}}) == {}
    # A retained state is not part of the stream, even if it carried offsets.
    state = {"type": "session.state", "session_id": "s", "offsets": {"session:s": 4}}
    assert _message_offsets(state) == {}


def test_positions_follow_acks_and_messages() -> None:
    feed = Feed()
    feed.ack("all", "E1", 10)
    feed.ack("workspace:w", "E2", 4)
    assert feed.tracker.positions() == {"all": ("E1", 10), "workspace:w": ("E2", 4)}
    assert feed.event("a", all=11, workspace_w=5)
    assert feed.event("b", all=12)
    assert feed.tracker.positions() == {"all": ("E1", 12), "workspace:w": ("E2", 5)}
    # A subscribe acked again in the same epoch changes nothing.
    feed.ack("all", "E1", 12)
    assert feed.tracker.position("all") == ("E1", 12)
    # A new epoch starts over from the ack.
    feed.ack("all", "E9", 1)
    assert feed.tracker.position("all") == ("E9", 1)


def test_messages_without_a_tracked_offset_are_always_delivered() -> None:
    feed = Feed()
    feed.ack("all", "E", 5)
    assert feed.frame({"type": "event", "event": {"n": "old server"}})
    assert feed.frame({"type": "error", "message": "x"})
    # Reached us through a pattern: its topic is not a held key.
    assert feed.frame({"type": "message", "topic": "chat.x", "data": 1, "offset": 1})
    assert feed.frame({"type": "message", "topic": "chat.x", "data": 1, "offset": 1})
    state = {"type": "session.state", "session_id": "s", "lifecycle": "x"}
    assert feed.frame(state)
    assert feed.frame(state)
    assert len(feed.delivered) == 6


def test_older_than_every_held_key_is_dropped() -> None:
    feed = Feed()
    feed.ack("all", "E", 5)
    feed.ack("workspace:w", "E", 3)
    assert not feed.event("old", all=5, workspace_w=3)
    # Older on one key, new on the other: delivered.
    assert feed.event("new on w", all=4, workspace_w=4)
    assert feed.event("next", all=6, workspace_w=5)
    assert not feed.event("again", all=6, workspace_w=5)
    assert feed.names() == ["new on w", "next"]


def test_a_replay_repeating_live_deliveries_is_dropped() -> None:
    """Held live: all. Resumed later: workspace:w, whose replay repeats what all brought."""
    feed = Feed()
    feed.ack("all", "EA", 100)
    assert feed.event("1", all=101, workspace_w=1)
    assert feed.event("x", all=102)
    assert feed.event("2", all=103, workspace_w=2)
    feed.ack("workspace:w", "EW", 3, since=Position("EW", 0), recovered=True)
    # The replay: 1 and 2 came through all already; 3 is older than all's subscription
    # (offset 99 on all) and was never delivered here.
    assert not feed.event("1", all=101, workspace_w=1)
    assert not feed.event("2", all=103, workspace_w=2)
    assert feed.event("3", all=99, workspace_w=3)
    assert feed.names() == ["1", "x", "2", "3"]
    assert feed.tracker.positions() == {"all": ("EA", 103), "workspace:w": ("EW", 3)}


def test_resume_in_either_order_loses_nothing_and_doubles_nothing() -> None:
    """Both keys resumed after a drop; a restore's replays repeat each other."""
    published = [
        ("a", {"all": 11, "workspace:w": 6}),
        ("b", {"all": 12}),
        ("c", {"all": 13, "workspace:w": 7}),
    ]
    replays = {
        "all": [item for item in published],
        "workspace:w": [item for item in published if "workspace:w" in item[1]],
    }
    for order in (["all", "workspace:w"], ["workspace:w", "all"]):
        feed = Feed({"all": Position("EA", 10), "workspace:w": Position("EW", 5)})
        latest = {"all": ("EA", 13), "workspace:w": ("EW", 7)}
        for key in order:
            since = feed.tracker.position(key)
            feed.ack(key, *latest[key], since=since, recovered=True)
            for name, offsets in replays[key]:
                feed.frame({"type": "event", "event": {"n": name}, "offsets": offsets})
        assert feed.names() == ["a", "b", "c"] if order[0] == "all" else ["a", "c", "b"]
        assert feed.tracker.positions() == latest


def test_live_messages_during_a_replay_wait_above_the_watermark() -> None:
    """A live message through all overtakes workspace:w's replay; the replay still fills."""
    feed = Feed({"all": Position("EA", 10), "workspace:w": Position("EW", 5)})
    feed.ack("all", "EA", 10, since=Position("EA", 10), recovered=True)
    # workspace:w is being resumed; meanwhile all brings a new message, w offset 8.
    assert feed.event("live", all=11, workspace_w=8)
    assert feed.tracker.position("workspace:w") == ("EW", 5)
    feed.ack("workspace:w", "EW", 7, since=Position("EW", 5), recovered=True)
    assert feed.event("r6", all=3, workspace_w=6)
    assert feed.event("r7", all=4, workspace_w=7)
    # The watermark absorbed 8, delivered out of order; w's live copy of it is a repeat.
    assert feed.tracker.position("workspace:w") == ("EW", 8)
    assert not feed.event("live", all=11, workspace_w=8)
    assert feed.names() == ["live", "r6", "r7"]


def test_failed_recovery_starts_over_from_the_ack() -> None:
    feed = Feed({"workspace:w": Position("old", 50)})
    feed.ack("workspace:w", "new", 3, since=Position("old", 50), recovered=False)
    assert feed.tracker.position("workspace:w") == ("new", 3)
    assert not feed.event("before", workspace_w=3)
    assert feed.event("after", workspace_w=4)
    # Same epoch, history gone: also from the ack.
    feed.ack("workspace:w", "new", 90, since=Position("new", 4), recovered=False)
    assert feed.tracker.position("workspace:w") == ("new", 90)


def test_ack_without_a_position_keeps_what_we_had() -> None:
    feed = Feed({"workspace:w": Position("E", 5)})
    # A pattern, or a server that could not reach its history.
    feed.tracker.acknowledged("workspace:w", Position("E", 5), {"type": "subscribed"})
    feed.tracker.acknowledged("chat.*", None, {"type": "subscribed", "subscription": "chat.*"})
    assert feed.tracker.positions() == {"workspace:w": ("E", 5)}


def test_a_gap_that_never_fills_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trio_gateway.client.positions.MAX_AHEAD", 3)
    feed = Feed()
    feed.ack("topic", "E", 0)
    for offset in (2, 3, 4):
        assert feed.frame({"type": "message", "topic": "topic", "data": 0, "offset": offset})
    # Offset 1 never came; the watermark waits for it...
    assert feed.tracker.position("topic") == ("E", 0)
    assert feed.frame({"type": "message", "topic": "topic", "data": 0, "offset": 5})
    # ...until more than MAX_AHEAD wait above it.
    assert feed.tracker.position("topic") == ("E", 5)
    assert MAX_AHEAD > 1000


def test_positions_report_what_was_handed_out_not_what_was_read() -> None:
    feed = Feed()
    feed.ack("all", "E", 10)
    feed.ack("workspace:w", "W", 4)
    committed = _Committed(feed.tracker.positions())
    assert feed.event("a", all=11, workspace_w=5)
    assert feed.event("b", all=12)
    assert feed.event("c", all=13, workspace_w=6)
    # The reader is at 13; the application has taken nothing yet.
    assert feed.tracker.positions() == {"all": ("E", 13), "workspace:w": ("W", 6)}
    assert committed.snapshot() == {"all": ("E", 10), "workspace:w": ("W", 4)}
    taken = feed.buffered.pop(0)
    committed.advance(taken.marks)
    assert committed.snapshot() == {"all": ("E", 11), "workspace:w": ("W", 5)}
    committed.advance(feed.buffered.pop(0).marks)
    assert committed.snapshot() == {"all": ("E", 12), "workspace:w": ("W", 5)}
    committed.advance(feed.buffered.pop(0).marks)
    assert committed.snapshot() == feed.tracker.positions()


def test_positions_never_go_back_or_cross_an_epoch() -> None:
    committed = _Committed({"all": Position("E", 10)})
    committed.advance({"all": Position("E", 7)})
    assert committed.snapshot() == {"all": ("E", 10)}
    # A mark from before a reset into another epoch is stale.
    committed.set("all", Position("F", 2))
    committed.advance({"all": Position("E", 30)})
    assert committed.snapshot() == {"all": ("F", 2)}
    # A key no longer held (unsubscribed while its message sat in the buffer) stays gone.
    committed.drop("all")
    committed.advance({"all": Position("F", 3)})
    assert committed.snapshot() == {}
