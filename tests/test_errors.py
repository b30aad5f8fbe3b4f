"""Every error the gateway answers with, every close code for bad input, and auth.

Each error test ends by proving the connection survived: a subscribe right after the error
is acknowledged. Real sockets, real clock, hard `fail_after` bounds.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio_websocket

from trio_gateway import Config, Gateway, open_gateway, serve

from .conftest import with_settings
from .helpers import API_KEY, TIMEOUT, ready, receive_json, send_json, subscribe, tcp_client

SUBSCRIBE_HINT = "Invalid subscribe: must provide scope, workspace_id, or session_id"
BINARY_ERROR = "Binary frames are not supported; send JSON text frames"


# --- local helpers --------------------------------------------------------------------------


async def expect_error(
    ws: trio_websocket.WebSocketConnection, frame: str | bytes, message: str
) -> None:
    """Send `frame`, expect exactly this error reply, then prove the connection still works."""
    await ws.send_message(frame)
    assert await receive_json(ws) == {"type": "error", "message": message}
    assert await subscribe(ws, workspace_id="still-open") == "workspace:still-open"


async def closed_without_frames(ws: trio_websocket.WebSocketConnection) -> tuple[int, str | None]:
    with pytest.raises(trio_websocket.ConnectionClosed) as info:
        await ws.get_message()
    reason = info.value.reason
    assert reason is not None
    return reason.code, reason.reason


def sized_subscribe(size: int) -> str:
    """A valid subscribe frame exactly `size` characters long (ASCII, so also bytes), padded
    with a field subscribe ignores (an id that long would be refused)."""
    head, tail = '{"type":"subscribe","workspace_id":"w","pad":"', '"}'
    text = head + "p" * (size - len(head) - len(tail)) + tail
    assert len(text) == size
    return text


# --- malformed frames -------------------------------------------------------------------------


@pytest.mark.parametrize("frame", ["{not json", "", "[1,", "{'type': 'ping'}", "pong"])
async def test_invalid_json(gateway: Gateway, frame: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await expect_error(ws, frame, "Invalid JSON")


@pytest.mark.parametrize(
    "frame", ["[]", '[{"type":"ping"}]', "42", "-1.5", '"ping"', "null", "true"]
)
async def test_whole_message_must_be_an_object(gateway: Gateway, frame: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await expect_error(ws, frame, "Invalid message: expected a JSON object")


@pytest.mark.parametrize(
    "message",
    [{}, {"type": 5}, {"type": None}, {"type": ["subscribe"]}, {"type": {}}, {"scope": "all"}],
)
async def test_missing_or_non_string_type(gateway: Gateway, message: dict[str, Any]) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await expect_error(ws, json.dumps(message), "Missing message type")


@pytest.mark.parametrize("name", ["frobnicate", "SUBSCRIBE", "event", "ready", ""])
async def test_unknown_message_type(gateway: Gateway, name: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await expect_error(ws, json.dumps({"type": name}), f"Unknown message type: {name}")


async def test_unknown_type_echo_is_truncated(gateway: Gateway) -> None:
    name = "x" * 10_000
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await send_json(ws, {"type": name})
            reply = await receive_json(ws)
            assert reply["type"] == "error"
            assert reply["message"] == "Unknown message type: " + "x" * 100
            assert await subscribe(ws, scope="all") == "all"


async def test_binary_frame_is_refused(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await expect_error(ws, b'{"type":"subscribe","scope":"all"}', BINARY_ERROR)
            await expect_error(ws, b"\x00\xff", BINARY_ERROR)


# --- subscribe / unsubscribe validation --------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"type": "subscribe"},
        {"type": "subscribe", "workspace_id": None},
        {"type": "subscribe", "room": "news"},
    ],
)
async def test_subscribe_without_a_key(gateway: Gateway, message: dict[str, Any]) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await expect_error(ws, json.dumps(message), SUBSCRIBE_HINT)


@pytest.mark.parametrize("verb", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize(
    "keys",
    [
        {"scope": "all", "workspace_id": "W"},
        {"workspace_id": "W", "session_id": "S"},
        {"scope": "all", "session_id": "S"},
        {"scope": "all", "workspace_id": "W", "session_id": "S"},
    ],
)
async def test_several_keys_are_refused(gateway: Gateway, verb: str, keys: dict[str, str]) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await expect_error(
                ws,
                json.dumps({"type": verb, **keys}),
                f"Invalid {verb}: provide only one of scope, workspace_id, session_id, topic",
            )


@pytest.mark.parametrize("verb", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize("scope", ["workspace", "ALL", "", "*"])
async def test_scope_must_be_all(gateway: Gateway, verb: str, scope: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await expect_error(
                ws,
                json.dumps({"type": verb, "scope": scope}),
                f'Invalid {verb}: scope must be "all"',
            )


@pytest.mark.parametrize("verb", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize("field", ["workspace_id", "session_id"])
async def test_empty_id_is_refused(gateway: Gateway, verb: str, field: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await expect_error(
                ws,
                json.dumps({"type": verb, field: ""}),
                f"Invalid {verb}: {field} must not be empty",
            )


@pytest.mark.parametrize("verb", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize("field", ["scope", "workspace_id", "session_id"])
@pytest.mark.parametrize("value", [5, 0, 1.5, True, False, ["W"], {"id": "W"}])
async def test_wrong_type_is_refused_not_coerced(
    gateway: Gateway, verb: str, field: str, value: object
) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await expect_error(
                ws,
                json.dumps({"type": verb, field: value}),
                f"Invalid {verb}: {field} must be a string",
            )


async def test_refused_subscribe_subscribes_to_nothing(gateway: Gateway) -> None:
    refused = [
        {"type": "subscribe", "scope": "all", "workspace_id": "W"},
        {"type": "subscribe", "workspace_id": 5},
        {"type": "subscribe", "scope": "everything"},
        {"type": "subscribe", "session_id": ""},
    ]
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            for message in refused:
                await send_json(ws, message)
                assert (await receive_json(ws))["type"] == "error"
            await subscribe(ws, workspace_id="MARK")
            gateway.broadcaster.broadcast_event({"workspace_id": "W", "session_id": "S", "n": 1})
            gateway.broadcaster.broadcast_event({"workspace_id": "5", "n": 2})
            gateway.broadcaster.broadcast_event({"workspace_id": "MARK", "n": 3})
            assert (await receive_json(ws))["event"]["n"] == 3


async def test_unknown_fields_are_ignored(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await send_json(ws, {"type": "subscribe", "workspace_id": "W", "extra": [1, 2]})
            assert await receive_json(ws) == {"type": "subscribed", "subscription": "workspace:W"}
            await send_json(ws, {"type": "ping", "id": 7})
            assert await receive_json(ws) == {"type": "pong"}


# --- too many subscriptions -------------------------------------------------------------------


async def test_too_many_subscriptions(nursery: trio.Nursery, config: Config) -> None:
    with trio.fail_after(TIMEOUT):
        gw: Gateway = await nursery.start(serve, with_settings(config, max_subscriptions=3))
        async with tcp_client(gw.port) as ws:
            await ready(ws)
            await subscribe(ws, scope="all")
            await subscribe(ws, workspace_id="W1")
            await subscribe(ws, session_id="S1")
            too_many = "Too many subscriptions: at most 3 per connection"
            for extra in ({"workspace_id": "W2"}, {"session_id": "S2"}):
                await send_json(ws, {"type": "subscribe", **extra})
                assert await receive_json(ws) == {
                    "type": "error",
                    "message": too_many,
                    "code": "too_many",
                }
            # Re-subscribing to a held key is not a new subscription.
            assert await subscribe(ws, workspace_id="W1") == "workspace:W1"
            # Dropping one makes room for another.
            await send_json(ws, {"type": "unsubscribe", "session_id": "S1"})
            assert await receive_json(ws) == {"type": "unsubscribed", "subscription": "session:S1"}
            assert await subscribe(ws, workspace_id="W2") == "workspace:W2"
            # The refused S2 subscription was not taken: with "all" dropped, an S2 event must
            # not arrive ahead of the W2 marker.
            await send_json(ws, {"type": "unsubscribe", "scope": "all"})
            assert await receive_json(ws) == {"type": "unsubscribed", "subscription": "all"}
            gw.broadcaster.broadcast_event({"workspace_id": "S2-owner", "session_id": "S2"})
            gw.broadcaster.broadcast_event({"workspace_id": "W2", "n": "marker"})
            assert (await receive_json(ws))["event"]["n"] == "marker"


# --- message size limits ----------------------------------------------------------------------


async def test_oversize_text_message_closes_1009(gateway: Gateway) -> None:
    limit = 64 * 1024
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await ws.send_message(sized_subscribe(limit + 1))
            code, reason = await closed_without_frames(ws)
        assert code == 1009
        assert reason == f"Exceeded maximum message size: {limit} bytes"


async def test_message_exactly_at_default_limit_is_accepted(gateway: Gateway) -> None:
    limit = 64 * 1024
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            frame = sized_subscribe(limit)
            await ws.send_message(frame)
            ack = await receive_json(ws)
            assert ack == {
                "type": "subscribed",
                "subscription": "workspace:" + json.loads(frame)["workspace_id"],
            }
            assert await subscribe(ws, scope="all") == "all"


async def test_custom_max_message_size(nursery: trio.Nursery, config: Config) -> None:
    with trio.fail_after(TIMEOUT):
        gw: Gateway = await nursery.start(serve, with_settings(config, max_message_size=1024))
        async with tcp_client(gw.port) as ws:
            await ready(ws)
            await ws.send_message(sized_subscribe(1024))
            assert (await receive_json(ws))["type"] == "subscribed"
        async with tcp_client(gw.port) as ws:
            await ready(ws)
            await ws.send_message(sized_subscribe(1025))
            assert await closed_without_frames(ws) == (
                1009,
                "Exceeded maximum message size: 1024 bytes",
            )


async def test_oversize_binary_message_closes_1009(nursery: trio.Nursery, config: Config) -> None:
    with trio.fail_after(TIMEOUT):
        gw: Gateway = await nursery.start(serve, with_settings(config, max_message_size=1024))
        async with tcp_client(gw.port) as ws:
            await ready(ws)
            await ws.send_message(b"\x00" * 1025)
            code, _ = await closed_without_frames(ws)
            assert code == 1009


async def test_size_limit_counts_utf8_bytes_not_characters(
    nursery: trio.Nursery, config: Config
) -> None:
    """`max_message_size` is documented in bytes (config.py, docs/PROTOCOL.md)."""
    with trio.fail_after(TIMEOUT):
        gw: Gateway = await nursery.start(serve, with_settings(config, max_message_size=1024))
        # 600 characters, 1200 UTF-8 bytes: over the limit.
        frame = json.dumps({"type": "subscribe", "workspace_id": "é" * 560}, ensure_ascii=False)
        assert len(frame) <= 1024 < len(frame.encode())
        async with tcp_client(gw.port) as ws:
            await ready(ws)
            await ws.send_message(frame)
            code, _ = await closed_without_frames(ws)
            assert code == 1009


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token", ["wrong-key", "", "TEST-KEY", API_KEY + "x", "%20" + API_KEY, API_KEY[:-1]]
)
async def test_bad_query_token_closes_4001(gateway: Gateway, token: str | None) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, token=token) as ws:
            assert await closed_without_frames(ws) == (4001, "Unauthorized")
        assert gateway.client_count() == 0


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER"])
async def test_bearer_header_is_accepted(gateway: Gateway, scheme: bytes) -> None:
    headers = [(b"authorization", scheme + b" " + API_KEY.encode())]
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, token=None, extra_headers=headers) as ws:
            await ready(ws)
            assert await subscribe(ws, scope="all") == "all"
            assert gateway.client_count() == 1


async def test_bad_bearer_token_closes_4001(gateway: Gateway) -> None:
    headers = [(b"authorization", b"Bearer wrong-key")]
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, token=None, extra_headers=headers) as ws:
            assert await closed_without_frames(ws) == (4001, "Unauthorized")


@pytest.mark.parametrize("value", [b"Bearer", b"Basic " + API_KEY.encode(), API_KEY.encode(), b""])
async def test_a_header_without_a_bearer_token_is_no_credential(
    config: Config, value: bytes
) -> None:
    # No token at all: the identify handshake, which ends in 4001 when it times out.
    quick = with_settings(config, identify_timeout=0.2)
    headers = [(b"authorization", value)]
    with trio.fail_after(TIMEOUT):
        async with (
            open_gateway(quick) as gateway,
            tcp_client(gateway.port, token=None, extra_headers=headers) as ws,
        ):
            assert (await receive_json(ws))["type"] == "hello"
            assert await closed_without_frames(ws) == (4001, "Unauthorized")


async def test_query_token_wins_over_header(gateway: Gateway) -> None:
    good = [(b"authorization", b"Bearer " + API_KEY.encode())]
    bad = [(b"authorization", b"Bearer wrong-key")]
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, token="wrong-key", extra_headers=good) as ws:
            assert await closed_without_frames(ws) == (4001, "Unauthorized")
        async with tcp_client(gateway.port, token=API_KEY, extra_headers=bad) as ws:
            await ready(ws)


@pytest.mark.parametrize("path", ["/nope", "/api/ws/", "/api", "/"])
async def test_wrong_path_is_404_at_handshake(gateway: Gateway, path: str) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with tcp_client(gateway.port, path=path):
                pass
        assert info.value.status_code == 404
        assert info.value.body is not None
        assert json.loads(info.value.body) == {"error": "Not found"}
        assert gateway.client_count() == 0


# --- newer messages: malformed fields --------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "reply"),
    [
        ({"type": "identify", "token": API_KEY}, "Already identified"),
        ({"type": "refresh"}, "Invalid refresh: token is required"),
        ({"type": "refresh", "token": 5}, "Invalid refresh: token must be a string"),
        ({"type": "refresh", "token": "garbage"}, "Refresh refused: invalid credentials"),
        ({"type": "publish", "topic": "a..b", "data": 1}, "Invalid publish: topic segments"),
        ({"type": "publish", "topic": 5, "data": 1}, "Invalid publish: topic must be a string"),
        ({"type": "publish", "topic": "a"}, "Invalid publish: data is required"),
        ({"type": "sync"}, "Invalid sync: session_id is required"),
        ({"type": "sync", "session_id": ""}, "Invalid sync: session_id must be a non-empty"),
        ({"type": "subscribe", "topic": "t", "since": 5}, "Invalid subscribe: since must be"),
        ({"type": "subscribe", "topic": "t", "recover": "yes"}, "Invalid subscribe: recover must"),
        ({"type": "subscribe", "topic": "t", "since": {"offset": -1, "epoch": "e"}}, "offset"),
        ({"type": "subscribe", "topic": "t", "since": {"offset": 1, "epoch": ""}}, "epoch"),
    ],
)
async def test_malformed_fields_of_newer_messages(
    gateway: Gateway, message: dict[str, Any], reply: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await send_json(ws, message)
            answer = await receive_json(ws)
            assert answer["type"] == "error"
            assert reply in answer["message"]
            # Still serving, nothing subscribed.
            await send_json(ws, {"type": "ping"})
            assert await receive_json(ws) == {"type": "pong"}
