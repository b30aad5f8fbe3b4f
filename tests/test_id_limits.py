"""Ids and topics have the same length limits over HTTP as over the socket: 200 characters
(protocol/routing.py MAX_ID_LENGTH, protocol/topics.py MAX_TOPIC_LENGTH), else 400 or an
error reply."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
import trio

from trio_gateway import Gateway
from trio_gateway.client.http import http_request
from trio_gateway.protocol.routing import MAX_ID_LENGTH
from trio_gateway.protocol.topics import MAX_TOPIC_LENGTH

from .helpers import API_KEY, TIMEOUT, post, ready, receive_json, send_json, tcp_client

LONG = "i" * (MAX_ID_LENGTH + 1)
LONGEST = "i" * MAX_ID_LENGTH
TOO_LONG = f"must be at most {MAX_ID_LENGTH} characters"


def bodies(value: str) -> list[tuple[str, object]]:
    """Every id-taking endpoint's body with `value` in one id field."""
    return [
        ("/api/events", {"workspace_id": value}),
        ("/api/events", {"workspace_id": "W", "session_id": value}),
        ("/api/session-updates", {"session_id": value, "workspace_id": "W", "lifecycle": "x"}),
        ("/api/session-updates", {"session_id": "S", "workspace_id": value, "lifecycle": "x"}),
        ("/api/remote-updates", {"remote_env_id": value, "workspace_id": "W", "status": "x"}),
        ("/api/session-deleted", {"session_id": value, "workspace_id": "W"}),
        ("/api/publish", {"topic": "t", "data": 1, "exclude_user_id": value}),
        ("/api/publish", {"topic": "t", "data": 1, "exclude_client_id": value}),
        (f"/api/users/{value}/messages", {"data": 1}),
        ("/api/users/U/messages", {"data": 1, "exclude_client_id": value}),
        (f"/api/users/{value}/disconnect", {}),
        (f"/api/sessions/{value}/expire", {}),
    ]


@pytest.mark.parametrize(("path", "body"), bodies(LONG))
async def test_an_id_over_the_limit_is_400(gateway: Gateway, path: str, body: object) -> None:
    with trio.fail_after(TIMEOUT):
        status, answer = await post(gateway.port, path, body)
    assert status == 400
    assert TOO_LONG in answer["error"]


@pytest.mark.parametrize(("path", "body"), bodies(LONGEST))
async def test_an_id_at_the_limit_is_published(gateway: Gateway, path: str, body: object) -> None:
    with trio.fail_after(TIMEOUT):
        status, _ = await post(gateway.port, path, body)
    assert status == 202


async def test_a_megabyte_workspace_id_is_refused(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        status, answer = await post(gateway.port, "/api/events", {"workspace_id": "w" * 1_000_000})
    assert (status, answer) == (
        400,
        {"error": f"workspace_id and session_id {TOO_LONG}"},
    )


async def get(gateway: Gateway, path: str) -> tuple[int, Any]:
    with trio.fail_after(TIMEOUT):
        status, _, raw = await http_request(
            "GET",
            f"http://127.0.0.1:{gateway.port}{path}",
            headers={"authorization": f"Bearer {API_KEY}"},
        )
    return status, json.loads(raw)


async def test_presence_paths_are_limited_too(gateway: Gateway) -> None:
    assert await get(gateway, f"/api/users/{quote(LONG)}/presence") == (
        400,
        {"error": f"user_id {TOO_LONG}"},
    )
    long_topic = "t" * (MAX_TOPIC_LENGTH + 1)
    assert await get(gateway, f"/api/presence/{long_topic}") == (
        400,
        {"error": f"topic must be at most {MAX_TOPIC_LENGTH} characters"},
    )


@pytest.mark.parametrize("name", ["workspace_id", "session_id"])
async def test_the_socket_applies_the_same_limit(gateway: Gateway, name: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await send_json(ws, {"type": "subscribe", name: LONG})
            reply = await receive_json(ws)
    assert reply == {"type": "error", "message": f"Invalid subscribe: {name} {TOO_LONG}"}
