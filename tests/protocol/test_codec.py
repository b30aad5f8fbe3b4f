"""Sync tests of the sans-IO codec: text in, typed message or `Error` reply out."""

from __future__ import annotations

import enum
import json

import attrs
import pytest

from trio_gateway.protocol.codec import ECHO_LIMIT, decode, encode, encode_event
from trio_gateway.protocol.jsontext import dumps, loads
from trio_gateway.protocol.messages import (
    Error,
    EventMessage,
    Ping,
    Pong,
    Ready,
    RemoteUpdate,
    ServerMessage,
    SessionUpdate,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)

# --- decode: every client message type ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"subscribe","scope":"all"}', Subscribe(scope="all")),
        ('{"type":"subscribe","workspace_id":"w1"}', Subscribe(workspace_id="w1")),
        ('{"type":"subscribe","session_id":"s1"}', Subscribe(session_id="s1")),
        ('{"type":"subscribe"}', Subscribe()),
        ('{"type":"unsubscribe"}', Unsubscribe()),
        ('{"type":"unsubscribe","scope":"all"}', Unsubscribe(scope="all")),
        ('{"type":"unsubscribe","workspace_id":"w1"}', Unsubscribe(workspace_id="w1")),
        ('{"type":"unsubscribe","session_id":"s1"}', Unsubscribe(session_id="s1")),
        ('{"type":"pong"}', Pong()),
        ('{"type":"ping"}', Ping()),
        # Whitespace and key order do not matter; the tag need not come first.
        ('  { "session_id" : "s1" ,\n "type" : "subscribe" }  ', Subscribe(session_id="s1")),
        # An explicit null is the same as leaving the key out.
        ('{"type":"subscribe","workspace_id":null}', Subscribe()),
    ],
)
def test_decode_client_messages(text: str, expected: object) -> None:
    result = decode(text)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"pong","extra":1,"nested":{"a":[1,2]}}', Pong()),
        ('{"type":"ping","id":"abc"}', Ping()),
        ('{"type":"subscribe","scope":"all","token":"x","workspace":7}', Subscribe(scope="all")),
        ('{"type":"unsubscribe","room":["a"]}', Unsubscribe()),
    ],
)
def test_decode_ignores_unknown_fields(text: str, expected: object) -> None:
    assert decode(text) == expected


# --- decode: malformed input becomes an Error reply ----------------------------------------


@pytest.mark.parametrize(
    "text", ["", "   ", "{", "not json", '{"type":"ping"', "{'type':'ping'}", '{"type":}', "\x00"]
)
def test_decode_invalid_json(text: str) -> None:
    assert decode(text) == Error("Invalid JSON")


@pytest.mark.parametrize(
    "text", ["[]", '[{"type":"ping"}]', "1", "-2.5", '"ping"', "null", "true", "false"]
)
def test_decode_non_object_json(text: str) -> None:
    assert decode(text) == Error("Invalid message: expected a JSON object")


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        '{"scope":"all"}',
        '{"type":null}',
        '{"type":1}',
        '{"type":true}',
        '{"type":["ping"]}',
        '{"type":{"name":"ping"}}',
        '{"Type":"ping"}',
    ],
)
def test_decode_missing_or_non_string_type(text: str) -> None:
    assert decode(text) == Error("Missing message type")


@pytest.mark.parametrize("tag", ["hello", "PING", "subscribed", "event", " ping"])
def test_decode_unknown_type(tag: str) -> None:
    assert decode(json.dumps({"type": tag})) == Error(f"Unknown message type: {tag}")


def test_decode_unknown_type_is_truncated_to_echo_limit() -> None:
    tag = "x" * ECHO_LIMIT + "y" * 5000
    assert decode(json.dumps({"type": tag})) == Error("Unknown message type: " + "x" * ECHO_LIMIT)


def test_decode_unknown_type_exactly_at_echo_limit_is_kept_whole() -> None:
    tag = "z" * ECHO_LIMIT
    assert decode(json.dumps({"type": tag})) == Error(f"Unknown message type: {tag}")


@pytest.mark.parametrize("verb", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize("field", ["scope", "workspace_id", "session_id"])
@pytest.mark.parametrize("value", [1, 0, 1.5, True, False, [], ["a"], {}, {"id": "a"}])
def test_decode_is_strict_no_coercion_to_string(verb: str, field: str, value: object) -> None:
    text = json.dumps({"type": verb, field: value})
    assert decode(text) == Error(f"Invalid {verb}: {field} must be a string")


def test_decode_seed_example_of_strict_typing() -> None:
    assert decode('{"type":"subscribe","workspace_id":1}') == Error(
        "Invalid subscribe: workspace_id must be a string"
    )


def test_decode_error_replies_encode_cleanly() -> None:
    # A lone surrogate in the tag is echoed back and must still be sendable as UTF-8.
    reply = decode('{"type":"\\ud800"}')
    assert reply == Error("Unknown message type: \ud800")
    assert isinstance(reply, Error)
    wire = encode(reply)
    assert wire == '{"type":"error","message":"Unknown message type: \\ud800"}'
    wire.encode("utf-8")


def test_decode_deeply_nested_json_does_not_raise() -> None:
    # Within the 64 KiB message limit. json.loads raises RecursionError (not ValueError) on
    # deep nesting; decode promises never to raise on client input.
    depth = 20_000
    assert decode("[" * depth + "]" * depth) == Error("Invalid JSON")
    assert decode("[" * depth) == Error("Invalid JSON")
    inside_object = '{"type":"ping","x":' + "[" * depth + "]" * depth + "}"
    assert decode(inside_object) == Error("Invalid JSON")


# --- encode --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (Subscribed("all"), '{"type":"subscribed","subscription":"all"}'),
        (Subscribed("workspace:w1"), '{"type":"subscribed","subscription":"workspace:w1"}'),
        (Unsubscribed("session:s1"), '{"type":"unsubscribed","subscription":"session:s1"}'),
        (Ping(), '{"type":"ping"}'),
        (Pong(), '{"type":"pong"}'),
        (Error("Invalid JSON"), '{"type":"error","message":"Invalid JSON"}'),
        (
            Ready("01HZX", 30000),
            '{"type":"ready","client_id":"01HZX","heartbeat_interval":30000}',
        ),
        (
            EventMessage({"workspace_id": "w1", "session_id": None, "data": {"n": [1, 2.5]}}),
            '{"type":"event","event":{"workspace_id":"w1","session_id":null,"data":{"n":[1,2.5]}}}',
        ),
        (
            SessionUpdate("s1", "ended"),
            '{"type":"session.update","session_id":"s1","lifecycle":"ended"}',
        ),
        (
            SessionUpdate("s1", "ended", "did things", {"total_messages": 3}),
            '{"type":"session.update","session_id":"s1","lifecycle":"ended",'
            '"summary":"did things","stats":{"total_messages":3}}',
        ),
        (
            RemoteUpdate("r1", "ready"),
            '{"type":"remote.update","remote_env_id":"r1","status":"ready"}',
        ),
        (
            RemoteUpdate("r1", "ready", "10.0.0.1"),
            '{"type":"remote.update","remote_env_id":"r1","status":"ready","public_ip":"10.0.0.1"}',
        ),
    ],
)
def test_encode_exact_wire_text(message: ServerMessage, wire: str) -> None:
    assert encode(message) == wire


@pytest.mark.parametrize(
    "message",
    [
        Subscribed("all"),
        Ping(),
        Ready("id", 1),
        EventMessage({"type": "inner", "workspace_id": "w"}),
        SessionUpdate("s", "l", "x", {}),
        RemoteUpdate("r", "s", "ip"),
    ],
)
def test_encode_puts_type_first(message: ServerMessage) -> None:
    wire = encode(message)
    assert wire.startswith('{"type":"' + message.TAG + '"')
    assert next(iter(json.loads(wire))) == "type"
    assert json.loads(wire)["type"] == message.TAG


def test_encode_session_update_optional_fields() -> None:
    assert json.loads(encode(SessionUpdate("s", "active"))) == {
        "type": "session.update",
        "session_id": "s",
        "lifecycle": "active",
    }
    assert json.loads(encode(SessionUpdate("s", "active", summary="sum"))) == {
        "type": "session.update",
        "session_id": "s",
        "lifecycle": "active",
        "summary": "sum",
    }
    assert json.loads(encode(SessionUpdate("s", "active", stats={"duration_ms": 5}))) == {
        "type": "session.update",
        "session_id": "s",
        "lifecycle": "active",
        "stats": {"duration_ms": 5},
    }


def test_encode_session_update_keeps_empty_but_present_fields() -> None:
    # Only None is omitted: an empty summary or empty stats object is real data.
    assert encode(SessionUpdate("s", "active", "", {})) == (
        '{"type":"session.update","session_id":"s","lifecycle":"active","summary":"","stats":{}}'
    )


def test_encode_remote_update_omits_public_ip_when_none() -> None:
    assert "public_ip" not in json.loads(encode(RemoteUpdate("r", "stopped", None)))
    assert json.loads(encode(RemoteUpdate("r", "running", "")))["public_ip"] == ""


def test_encode_event_payload_passes_through_untouched() -> None:
    event = {"workspace_id": "w", "summary": None, "stats": None, "public_ip": None, "n": 0}
    assert json.loads(encode(EventMessage(event))) == {"type": "event", "event": event}


def test_encode_escapes_non_ascii() -> None:
    wire = encode(Error("café ☕ 日本 🎉"))
    assert wire == '{"type":"error","message":"caf\\u00e9 \\u2615 \\u65e5\\u672c \\ud83c\\udf89"}'
    assert wire.isascii()
    assert json.loads(wire)["message"] == "café ☕ 日本 🎉"


@pytest.mark.parametrize("lone", [chr(0xD800), chr(0xDFFF), "a" + chr(0xDC00) + "b"])
def test_encode_lone_surrogates_become_ascii_escapes(lone: str) -> None:
    wire = encode(EventMessage({"workspace_id": "w", "text": lone}))
    assert wire.isascii()
    assert wire.encode("utf-8")  # would raise UnicodeEncodeError if the surrogate leaked
    assert json.loads(wire)["event"]["text"] == lone


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_dumps_rejects_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        dumps({"x": value})
    with pytest.raises(ValueError, match="Out of range float"):
        encode(EventMessage({"workspace_id": "w", "x": value}))


def test_dumps_is_compact() -> None:
    assert dumps({"a": [1, {"b": None}], "c": "d"}) == '{"a":[1,{"b":null}],"c":"d"}'


class _Colour(enum.Enum):
    RED = "red"


@attrs.define
class _Point:
    x: int = 1


@pytest.mark.parametrize(
    "event",
    [
        {"workspace_id": "w", "n": [1, 2.5, {"a": None, "b": True}], "s": "caf\u00e9"},
        {"workspace_id": "w", "lone": chr(0xD800), 1: "int key", None: "null key"},
        {"workspace_id": "w", "tuple": (1, 2)},
        # Only the converter makes JSON of these: the same text either way.
        {"workspace_id": "w", "colour": _Colour.RED, "point": _Point()},
    ],
)
def test_encode_event_is_encode_of_the_event_message(event: dict[object, object]) -> None:
    assert encode_event(event) == encode(EventMessage(dict(event)))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": {1, 2}}])
def test_encode_event_refuses_what_encode_refuses(bad: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)) as fast:
        encode_event(bad)
    with pytest.raises((ValueError, TypeError)) as slow:
        encode(EventMessage(bad))
    assert type(fast.value) is type(slow.value)


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": [1, "\xc3\xa9"]}',
        '{"a": 1}'.encode("utf-16"),
        b"\xef\xbb\xbf[1]",
        "[1, 2]",
        ' {"deep": [[[]]]} ',
    ],
)
def test_loads_reads_what_json_loads_reads(text: str | bytes) -> None:
    assert loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["\ufeff[1]", "[1] x", b"\xff\xfe\x00", "", b""])
def test_loads_refuses_what_json_loads_refuses(text: str | bytes) -> None:
    with pytest.raises(ValueError) as expected:  # noqa: PT011 - the type is what is compared
        json.loads(text)
    with pytest.raises(type(expected.value)):
        loads(text)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}'])
def test_loads_refuses_non_finite_numbers(text: str) -> None:
    with pytest.raises(ValueError, match="is not valid JSON"):
        loads(text)
