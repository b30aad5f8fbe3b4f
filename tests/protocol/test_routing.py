"""Sync tests of subscription keys and publication routing (pure functions)."""

from __future__ import annotations

import types

import pytest

from trio_gateway.protocol.errors import ProtocolError
from trio_gateway.protocol.messages import Subscribe, Unsubscribe
from trio_gateway.protocol.routing import (
    ALL,
    SUBSCRIBE_HINT,
    event_problem,
    route_keys,
    session_key,
    subscription_key,
    unsubscription_key,
    workspace_key,
)

# --- subscription_key ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "key"),
    [
        (Subscribe(scope="all"), "all"),
        (Subscribe(workspace_id="w1"), "workspace:w1"),
        (Subscribe(session_id="s1"), "session:s1"),
        (Subscribe(workspace_id="all"), "workspace:all"),
        (Subscribe(session_id="a:b c/é"), "session:a:b c/é"),
    ],
)
def test_subscription_key(message: Subscribe, key: str) -> None:
    assert subscription_key(message) == key


def test_subscription_key_requires_one_key_with_seed_message() -> None:
    assert SUBSCRIBE_HINT == "Invalid subscribe: must provide scope, workspace_id, or session_id"
    with pytest.raises(ProtocolError) as info:
        subscription_key(Subscribe())
    assert info.value.message == SUBSCRIBE_HINT
    assert str(info.value) == SUBSCRIBE_HINT


@pytest.mark.parametrize(
    "message",
    [
        Subscribe(scope="all", workspace_id="w"),
        Subscribe(scope="all", session_id="s"),
        Subscribe(workspace_id="w", session_id="s"),
        Subscribe(scope="all", workspace_id="w", session_id="s"),
        # Checked before the values themselves: two keys is the problem reported.
        Subscribe(scope="bogus", workspace_id=""),
    ],
)
def test_subscription_key_rejects_more_than_one(message: Subscribe) -> None:
    with pytest.raises(ProtocolError) as info:
        subscription_key(message)
    assert info.value.message == (
        "Invalid subscribe: provide only one of scope, workspace_id, session_id, topic"
    )


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (Subscribe(workspace_id=""), "Invalid subscribe: workspace_id must not be empty"),
        (Subscribe(session_id=""), "Invalid subscribe: session_id must not be empty"),
        (Subscribe(scope="workspace"), 'Invalid subscribe: scope must be "all"'),
        (Subscribe(scope="ALL"), 'Invalid subscribe: scope must be "all"'),
        (Subscribe(scope=""), 'Invalid subscribe: scope must be "all"'),
    ],
)
def test_subscription_key_rejects_bad_values(message: Subscribe, error: str) -> None:
    with pytest.raises(ProtocolError) as info:
        subscription_key(message)
    assert info.value.message == error


# --- unsubscription_key --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "key"),
    [
        (Unsubscribe(), None),
        (Unsubscribe(scope="all"), "all"),
        (Unsubscribe(workspace_id="w1"), "workspace:w1"),
        (Unsubscribe(session_id="s1"), "session:s1"),
    ],
)
def test_unsubscription_key(message: Unsubscribe, key: str | None) -> None:
    assert unsubscription_key(message) == key


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (
            Unsubscribe(workspace_id="w", session_id="s"),
            "Invalid unsubscribe: provide only one of scope, workspace_id, session_id, topic",
        ),
        (Unsubscribe(workspace_id=""), "Invalid unsubscribe: workspace_id must not be empty"),
        (Unsubscribe(session_id=""), "Invalid unsubscribe: session_id must not be empty"),
        (Unsubscribe(scope="none"), 'Invalid unsubscribe: scope must be "all"'),
    ],
)
def test_unsubscription_key_errors_name_the_verb(message: Unsubscribe, error: str) -> None:
    with pytest.raises(ProtocolError) as info:
        unsubscription_key(message)
    assert info.value.message == error


# --- route_keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workspace_id", "session_id", "keys"),
    [
        ("w1", "s1", ("all", "workspace:w1", "session:s1")),
        ("w1", None, ("all", "workspace:w1")),
        (None, "s1", ("all", "session:s1")),
        (None, None, ("all",)),
        ("", "", ("all",)),
        ("w1", "", ("all", "workspace:w1")),
    ],
)
def test_route_keys(workspace_id: str | None, session_id: str | None, keys: tuple[str]) -> None:
    assert route_keys(workspace_id, session_id) == keys


def test_route_keys_match_subscription_keys() -> None:
    # What a subscriber is acknowledged with is exactly what a publication is routed to.
    assert set(route_keys("w", "s")) == {
        subscription_key(Subscribe(scope="all")),
        subscription_key(Subscribe(workspace_id="w")),
        subscription_key(Subscribe(session_id="s")),
    }
    assert (ALL, workspace_key("w"), session_key("s")) == route_keys("w", "s")


# --- event_problem -------------------------------------------------------------------------


@pytest.mark.parametrize("event", [None, [], ["workspace_id", "w"], "w", 1, 1.5, True, ("w",)])
def test_event_problem_non_mapping(event: object) -> None:
    assert event_problem(event) == "event must be a JSON object"


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"session_id": "s"},
        {"workspace_id": None},
        {"workspace_id": ""},
        {"workspace_id": 1},
        {"workspace_id": True},
        {"workspace_id": ["w"]},
        {"workspace_id": {"id": "w"}},
        {"Workspace_id": "w"},
    ],
)
def test_event_problem_workspace_id(event: dict[str, object]) -> None:
    assert event_problem(event) == "workspace_id must be a non-empty string"


@pytest.mark.parametrize("session_id", [1, 0, False, ["s"], {"id": "s"}, 1.5])
def test_event_problem_session_id_not_string(session_id: object) -> None:
    event = {"workspace_id": "w", "session_id": session_id}
    assert event_problem(event) == "session_id must be a string or null"


@pytest.mark.parametrize(
    "event",
    [
        {"workspace_id": "w"},
        {"workspace_id": "w", "session_id": None},
        {"workspace_id": "w", "session_id": "s"},
        {"workspace_id": "w", "session_id": ""},
        {
            "workspace_id": "w",
            "session_id": "s",
            "type": "anything",
            "payload": {"nested": [1, None]},
            "id": 7,
        },
        types.MappingProxyType({"workspace_id": "w"}),
    ],
)
def test_event_problem_valid(event: object) -> None:
    assert event_problem(event) is None
