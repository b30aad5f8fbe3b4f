"""The connect hook's 2xx answer -> Identity, without sockets: every field's malformed form."""

from __future__ import annotations

from typing import Any

import pytest

from trio_gateway.backend.connect import BadHookAnswer, identity_from_answer
from trio_gateway.session.auth import Identity


def test_a_full_answer_and_a_minimal_one() -> None:
    assert identity_from_answer(
        {
            "user_id": "alice",
            "session_id": "S1",
            "info": {"name": "Alice"},
            "expires_at": 1767225600,
            "sub_topics": ["chat.**"],
            "pub_topics": ["chat.room.*"],
            "commands": "*",
            "subscriptions": ["all", "workspace:W", "session:S1", "chat.*", "all"],
        }
    ) == Identity(
        "alice",
        1767225600.0,
        ("chat.**",),
        ("chat.room.*",),
        ("*",),
        "S1",
        {"name": "Alice"},
        ("all", "workspace:W", "session:S1", "chat.*"),
    )
    # Absent grants grant nothing, as for a JWT.
    assert identity_from_answer({"user_id": "bob"}) == Identity("bob", None, (), (), ())


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ([], "the answer must be a JSON object"),
        (None, "the answer must be a JSON object"),
        ({}, "user_id is required"),
        ({"user_id": ""}, "user_id must be a non-empty string"),
        ({"user_id": 7}, "user_id must be a non-empty string"),
        ({"user_id": "a\ud800"}, "user_id must be a non-empty string"),
        ({"user_id": "a", "session_id": 1}, "session_id must be a non-empty string"),
        ({"user_id": "a", "info": "x"}, "info must be an object"),
        ({"user_id": "a", "expires_at": "soon"}, "expires_at must be a number"),
        ({"user_id": "a", "expires_at": True}, "expires_at must be a number"),
        ({"user_id": "a", "commands": "all"}, "commands must be a list"),
        ({"user_id": "a", "commands": [""]}, "commands must be a list"),
        ({"user_id": "a", "sub_topics": "chat"}, "sub_topics must be a list of strings"),
        ({"user_id": "a", "pub_topics": ["a..b"]}, "pub_topics must be topic patterns"),
        ({"user_id": "a", "subscriptions": ["user:a"]}, "subscriptions must be"),
        ({"user_id": "a", "subscriptions": ["workspace:"]}, "subscriptions must be"),
        ({"user_id": "a", "subscriptions": [3]}, "subscriptions must be a list of strings"),
    ],
)
def test_a_malformed_answer_names_the_field(answer: Any, problem: str) -> None:
    with pytest.raises(BadHookAnswer, match=problem):
        identity_from_answer(answer)
