"""The Redis envelope and names (pure)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import unframe
from trio_gateway.broker.envelope import Envelope, channel, decode, history_name, log_name
from trio_gateway.fanout.publication import Extra


def envelope(header: object, body: str = '{"type":"event","event":{}}') -> bytes:
    return json.dumps(header).encode() + b"\n" + body.encode()


def test_names_are_the_prefix_and_the_subscription_key() -> None:
    assert channel("trio-gateway:", "workspace:w1") == "trio-gateway:workspace:w1"
    assert channel("app1:", "chat.room.1") == "app1:chat.room.1"
    assert log_name("p:", "all") == "p:log:all"
    assert history_name("p:", "session:s") == "p:hist:session:s"


def test_an_event_envelope_becomes_a_frame_with_its_offsets() -> None:
    data = envelope(["i:1:1", ["all", "workspace:w"], [7, 3], 1700000000000, "", "", "", ""])
    decoded = decode(data)
    assert decoded == Envelope(
        "i:1:1", ("all", "workspace:w"), (7, 3), 1700000000000, None, '{"type":"event","event":{}}'
    )
    plain, frame, keys, offsets, topic, extra = decoded.delivery()
    assert extra is None
    assert json.loads(unframe(plain)) == {"type": "event", "event": {}}
    assert json.loads(unframe(frame)) == {
        "type": "event",
        "event": {},
        "offsets": {"all": 7, "workspace:w": 3},
    }
    assert (keys, offsets, topic) == (("all", "workspace:w"), (7, 3), None)
    assert decoded.offset_of("workspace:w") == 3


def test_a_topic_envelope_has_a_single_offset() -> None:
    body = '{"type":"message","topic":"chat.1","data":[1,"\\n"]}'
    decoded = decode(envelope(["i:2:1", ["chat.1"], [42], 1, "chat.1", "", "u1", ""], body))
    assert decoded.extra == Extra(exclude_user="u1")
    _, frame, *_ = decoded.delivery()
    assert json.loads(unframe(frame)) == {
        "type": "message",
        "topic": "chat.1",
        "data": [1, "\n"],
        "offset": 42,
    }


@pytest.mark.parametrize(
    "data",
    [
        b"no header at all",
        b"not json\n{}",
        b'{"id":"x"}\n{}',
        b'["id", ["all"], [1], 1, "", "", ""]\n{}',
        b'[1, ["all"], [1], 1, "", "", "", ""]\n{}',
        b'["id", ["all"], [1, 2], 1, "", "", "", ""]\n{}',
        b'["id", [], [], 1, "", "", "", ""]\n{}',
        b'["id", ["all"], [true], 1, "", "", "", ""]\n{}',
        b'["id", ["all"], [1], "1", "", "", "", ""]\n{}',
        b'["id", ["all"], [1], 1, null, "", "", ""]\n{}',
        b'["id", ["all"], [1], 1, "", "", 5, ""]\n{}',
        b'["id", ["all"], [1], 1, "", "", "", ""]\n\xff\xfe',
        b'["id", ["all"], [1], 1, "", "", "", ""]\n[1]',
    ],
)
def test_anything_else_on_a_gateway_channel_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every refusal is a ValueError subclass
        decode(data)
