"""Hypothesis strategies for everything a client can send: WebSocket messages and frames, HTTP
request heads and bodies. Pure data; sending is driver.py's, judging test_fuzz.py's.

Client messages come from the protocol's own registry (`CLIENT_MESSAGES`, plus the command
frame), so a new message type is fuzzed without a change here. Each field gets a plausible
value or any JSON value at all (wrong types); then the text may be cut short, nested deeply,
carry huge numbers, lone surrogates or bytes that are not UTF-8, or go out as binary frames.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

import attrs
import jwt
from hypothesis import strategies as st

import trio_gateway.protocol.presence  # noqa: F401  (registers the presence messages)
from trio_gateway.api.routes import ROUTES
from trio_gateway.protocol.messages import CLIENT_MESSAGES

from ..helpers import API_KEY
from .driver import masked_frame, text_frame

SECRET = "fuzz-secret-0123456789abcdef-0123456789"
SUBJECT = "fuzzer"


def jwt_token(sub: str = SUBJECT, **claims: Any) -> str:
    payload = {"sub": sub, "exp": time.time() + 30 * 86400, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


GRANTED = jwt_token(sub_topics=["**"], pub_topics=["**"], commands="*")
LIMITED = jwt_token(sub_topics=["room.*"], pub_topics=[])

ODD_TEXT = ["\ud800", "\udfff", "a.\udc80.b", "\x00", "\u2028", "\ufeff", "é", "😀", " "]

texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from(ODD_TEXT),
    st.text(st.sampled_from(["a", ".", "*", "\ud800", "é", "-", "_", "1"]), max_size=30),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 2**63, 2**64 + 1, -(2**63) - 1, 10**300]),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)

json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)
    ),
    max_leaves=5,
)

# Plausible values by field name: enough right answers that handlers run past validation.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "scope": st.sampled_from(["all", "ALL", ""]),
    "workspace_id": st.sampled_from(["W", "W1", "", "a.b", "\ud800"]),
    "session_id": st.sampled_from(["S", "S1", "", "s/1", "\udfff"]),
    "topic": st.sampled_from(
        ["room.1", "room.*", "chat.**", "**", "all", "", "a..b", "a" * 201, "room.\ud800"]
    ),
    "recover": st.booleans(),
    "since": st.fixed_dictionaries(
        {"offset": st.integers(min_value=-2, max_value=2**64), "epoch": texts}
    ),
    "token": st.sampled_from([API_KEY, GRANTED, LIMITED, jwt_token("other"), "x.y.z", ""]),
    "data": json_values,
    "status": st.sampled_from(["online", "idle", "dnd", "invisible", "away", ""]),
    "state": st.sampled_from(["start", "stop", "", "START"]),
}


@st.composite
def message_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON object shaped like one client message, with any field wrong or missing."""
    if draw(st.integers(0, 9)) == 0:
        # A command frame (seed 002): no `type`, recognised by `command`.
        message: dict[str, Any] = {
            "command": draw(st.one_of(st.sampled_from(["echo", "", "x" * 200]), json_values)),
            "payload": draw(json_values),
        }
        if draw(st.booleans()):
            message["id"] = draw(st.one_of(texts, json_values))
        return message
    tag = draw(st.sampled_from(sorted(CLIENT_MESSAGES)))
    message = {"type": draw(st.one_of(st.just(tag), st.just(tag), json_values))}
    shape: Any = CLIENT_MESSAGES[tag]
    for field in attrs.fields(shape):
        # Mostly a plausible value, else any JSON value or nothing.
        value = draw(
            st.one_of(PLAUSIBLE.get(field.name, json_values), json_values, st.just(_ABSENT))
        )
        if value is not _ABSENT:
            message[field.name] = value
    if draw(st.integers(0, 3)) == 0:
        message[draw(texts)] = draw(json_values)
    return message


_ABSENT = object()


def _nested(depth: int, inner: str) -> str:
    return "[" * depth + inner + "]" * depth


@st.composite
def message_texts(draw: st.DrawFn) -> str:
    """The text of one message: a message object, then perhaps mangled."""
    text = json.dumps(draw(message_objects()), ensure_ascii=draw(st.booleans()))
    mangle = draw(st.integers(0, 11))
    if mangle == 0:
        text = text[: draw(st.integers(0, max(len(text) - 1, 0)))]
    elif mangle == 1:
        depth = draw(st.sampled_from([100, 300, 1000, 5000, 20000]))
        text = text[:-1] + ',"data":' + _nested(depth, "1") + "}"
    elif mangle == 2:
        digits = draw(st.sampled_from([400, 4301, 20000]))
        text = text[:-1] + ',"offset":' + "9" * digits + "}"
    elif mangle == 3:
        text = text[:-1] + ',"n":' + draw(st.sampled_from(["1e999", "-1e999", "NaN", "-0"])) + "}"
    elif mangle == 4:
        text = draw(st.sampled_from(["null", "[]", "1", '"x"', "", "{", "{}", '{"type":null}']))
    elif mangle == 5:
        position = draw(st.integers(0, len(text)))
        text = text[:position] + draw(texts) + text[position:]
    return text


class Frame(NamedTuple):
    data: bytes
    #: Complete and well-formed, so that a message after it is read as a message of its own.
    complete: bool = True
    #: The close code this frame asks the gateway to echo (1005: a close without one).
    close_code: int | None = None


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    """One client frame's bytes, or several that make one message, or garbage."""
    kind = draw(st.integers(0, 19))
    if kind <= 11:
        return Frame(text_frame(draw(message_texts())))
    if kind == 12:
        # Text that is not UTF-8 at all.
        return Frame(masked_frame(0x1, draw(st.binary(max_size=40)) + b"\xff"), complete=False)
    if kind == 13:
        return Frame(masked_frame(0x2, draw(message_texts()).encode("utf-8", "surrogatepass")))
    if kind == 14:
        # A message in fragments, perhaps with a control frame between them.
        payload = draw(message_texts()).encode("utf-8", "surrogatepass")
        cut = draw(st.integers(0, len(payload)))
        between = masked_frame(0x9, b"p") if draw(st.booleans()) else b""
        first = masked_frame(0x1, payload[:cut], fin=False) + between
        return Frame(first + masked_frame(0x0, payload[cut:]))
    if kind == 15:
        # A close frame with any code and reason, or none.
        code = draw(st.one_of(st.none(), st.integers(0, 65535)))
        payload = b"" if code is None else code.to_bytes(2, "big") + draw(st.binary(max_size=6))
        return Frame(masked_frame(0x8, payload), False, 1005 if code is None else code)
    if kind == 16:
        frame = text_frame(draw(message_texts()))
        return Frame(frame[: draw(st.integers(0, max(len(frame) - 1, 0)))], complete=False)
    if kind == 17:
        # Reserved bits, reserved opcodes, an unfinished control frame.
        opcode = draw(st.integers(0, 15))
        fin, rsv = draw(st.booleans()), draw(st.integers(0, 7))
        payload = draw(st.binary(max_size=130))
        return Frame(masked_frame(opcode, payload, fin=fin, rsv=rsv), complete=False)
    if kind == 18:
        # A header claiming more than the message limit (or far more than anyone sends).
        length = draw(st.sampled_from([65537, 2**20, 2**63 - 1]))
        head = bytes([0x81, 0xFF]) + length.to_bytes(8, "big") + b"\x00" * 4
        return Frame(head, complete=False)
    # Not a close frame's first byte: a close with a code would be echoed (kind 15 covers it).
    garbage = st.binary(min_size=1, max_size=64).filter(lambda data: data[0] & 0x0F != 0x8)
    return Frame(draw(garbage), complete=False)


#: Where a WebSocket example connects: the API key, a JWT, a narrow JWT, or no token (hello).
targets = st.sampled_from(
    [
        f"/api/ws?token={API_KEY}",
        f"/api/ws?token={GRANTED}",
        f"/api/ws?token={LIMITED}",
        "/api/ws",
        f"/api/echo?token={API_KEY}",
    ]
)


class WebSocketCase(NamedTuple):
    target: str
    #: Everything sent after the upgrade.
    data: bytes
    #: Every frame complete: a message sent after `data` is read as one.
    complete: bool
    #: Close codes the client's close frames carried (which the gateway echoes).
    close_codes: frozenset[int]


@st.composite
def websocket_inputs(draw: st.DrawFn) -> WebSocketCase:
    target = draw(targets)
    chosen = draw(st.lists(frames(), min_size=1, max_size=4))
    data = b"".join(frame.data for frame in chosen)
    if target == "/api/ws" and draw(st.booleans()):
        token = draw(PLAUSIBLE["token"])
        data = text_frame(json.dumps({"type": "identify", "token": token})) + data
    return WebSocketCase(
        target,
        data,
        all(frame.complete for frame in chosen),
        frozenset(frame.close_code for frame in chosen if frame.close_code is not None),
    )


# --- HTTP --------------------------------------------------------------------------------------

methods = st.one_of(
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"]),
    st.binary(min_size=1, max_size=8),
)


def _filled(path: str, fill: str) -> str:
    return path.replace("{user_id}", fill).replace("{session_id}", fill).replace("{topic}", fill)


@st.composite
def http_targets(draw: st.DrawFn) -> bytes:
    path = draw(st.sampled_from([*sorted(ROUTES), "/api/ws", "/api/echo", "/", "*", "/nope"]))
    fill = draw(st.sampled_from(["u1", "room.1", "%ff", "%ED%A0%80", "a%2Fb", "..", "", "é"]))
    target = _filled(path, fill).encode("utf-8")
    if draw(st.booleans()):
        target += b"?" + draw(st.sampled_from([b"token=" + API_KEY.encode(), b"scope=cluster"]))
    if draw(st.integers(0, 7)) == 0:
        target += draw(st.binary(max_size=10))
    return target


# JSON bodies shaped like what the publishing endpoints take, each field right or wrong.
BODY_FIELDS = [
    "workspace_id",
    "session_id",
    "kind",
    "topic",
    "data",
    "lifecycle",
    "summary",
    "stats",
    "remote_env_id",
    "status",
    "public_ip",
    "events",
    "exclude_user_id",
]


@st.composite
def http_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 7))
    if kind <= 3:
        fields = draw(st.lists(st.sampled_from(BODY_FIELDS), max_size=5, unique=True))
        body: Any = {
            name: draw(
                st.one_of(st.sampled_from(["W", "S", "room.1", "ended", "ready"]), json_values)
            )
            for name in fields
        }
        if kind == 3:
            body = draw(st.lists(st.just(body), max_size=3))
        return json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if kind == 4:
        return _nested(draw(st.sampled_from([1000, 100000])), "1").encode()
    if kind == 5:
        return b'{"workspace_id":"W","n":' + b"9" * 5000 + b"}"
    if kind == 6:
        return draw(st.sampled_from([b"", b"null", b"[]", b"NaN", b'{"a":1e999}', b"\xff\xfe"]))
    return draw(st.binary(max_size=64))


HEADER_VALUES: dict[bytes, st.SearchStrategy[bytes]] = {
    b"host": st.sampled_from([b"gateway.fuzz", b"", b"\xff"]),
    b"authorization": st.sampled_from(
        [
            b"Bearer " + API_KEY.encode(),
            b"Bearer " + GRANTED.encode(),
            b"Bearer",
            b"Basic eDp5",
            b"Bearer \xed\xa0\x80",
            b"bearer  " + API_KEY.encode() + b" ",
        ]
    ),
    b"content-type": st.sampled_from([b"application/json", b"text/plain", b"\x00"]),
    b"content-length": st.sampled_from([b"0", b"5", b"-1", b"99999999999", b"1, 2", b"x"]),
    b"transfer-encoding": st.sampled_from([b"chunked", b"gzip", b"chunked, chunked"]),
    b"connection": st.sampled_from([b"close", b"keep-alive", b"Upgrade", b"upgrade, close"]),
    b"upgrade": st.sampled_from([b"websocket", b"WebSocket", b"h2c", b""]),
    b"sec-websocket-key": st.sampled_from([b"dGhlIHNhbXBsZSBub25jZQ==", b"", b"short", b"\xff"]),
    b"sec-websocket-version": st.sampled_from([b"13", b"8", b"", b"13, 8"]),
    b"origin": st.sampled_from([b"https://example.com", b"null", b"\xff"]),
    b"cookie": st.sampled_from([b"a=b", b"gw_token=x", b'"; =;', b"\xff"]),
    b"if-none-match": st.sampled_from([b'"x"', b"*", b""]),
}


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    """One request (sometimes two, pipelined), perhaps cut short or with bytes flipped."""
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTP"]))
    line = draw(methods) + b" " + draw(http_targets()) + b" " + version
    names = draw(st.lists(st.sampled_from(sorted(HEADER_VALUES)), max_size=6))
    headers = [(name, draw(HEADER_VALUES[name])) for name in names]
    if draw(st.integers(0, 9)) == 0:
        headers.append((draw(st.binary(max_size=10)), draw(st.binary(max_size=20))))
    body = draw(http_bodies())
    if b"content-length" not in names and b"transfer-encoding" not in names and body:
        headers.append((b"content-length", str(len(body)).encode()))
    if b"transfer-encoding" in names and draw(st.booleans()):
        body = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    head = line + b"\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    request = head + b"\r\n" + body
    mangle = draw(st.integers(0, 9))
    if mangle == 0:
        request = request[: draw(st.integers(0, len(request)))]
    elif mangle == 1:
        position = draw(st.integers(0, len(request)))
        request = request[:position] + draw(st.binary(min_size=1, max_size=8)) + request[position:]
    elif mangle == 2:
        request += request
    elif mangle == 3:
        request = head.replace(b"\r\n", b"\n") + b"\n" + body
    return request
