"""The pure presence functions: merging instances' shares into a member, and diffs."""

from __future__ import annotations

import json

from trio_gateway.protocol.presence import Diff, Member, Share, apply, diff, diff_text, member


def entry(user_id: str, connections: int = 1, status: str = "online") -> Member:
    return Member(user_id, status, connections, {})


def test_a_member_sums_every_instances_connections_and_keeps_the_first_info() -> None:
    shares = [Share(2), Share(1, {"name": "Ann"}), Share(1, {"name": "other"})]
    assert member("ann", shares, None) == Member("ann", "online", 4, {"name": "Ann"})
    assert member("ann", shares, "dnd") == Member("ann", "dnd", 4, {"name": "Ann"})


def test_no_share_or_invisible_is_no_member() -> None:
    assert member("ann", [], "online") is None
    assert member("ann", [Share(1)], "invisible") is None


def test_a_diff_names_joins_leaves_and_updates_in_user_order_and_applies() -> None:
    seen = {"b": entry("b"), "c": entry("c"), "d": entry("d")}
    fresh = {"z": entry("z"), "a": entry("a"), "b": None, "c": entry("c", 2), "d": entry("d")}
    change = diff(seen, fresh)
    assert change == Diff(joins=(entry("a"), entry("z")), leaves=("b",), updates=(entry("c", 2),))
    apply(seen, change)
    assert seen == {"a": entry("a"), "c": entry("c", 2), "d": entry("d"), "z": entry("z")}
    assert not diff(seen, fresh | {"b": None})


def test_a_leave_of_someone_never_seen_is_no_change() -> None:
    assert not diff({}, {"ghost": None})


def test_the_diff_frame_has_every_list_even_when_empty() -> None:
    assert json.loads(diff_text("t", Diff(leaves=("b",)))) == {
        "type": "presence.diff",
        "topic": "t",
        "joins": [],
        "leaves": [{"user_id": "b"}],
        "updates": [],
    }
