"""The Redis envelope and channel names (pure), and URL redaction for logs."""

from __future__ import annotations

import pytest

from trio_gateway.broker.envelope import Envelope, channel, decode, encode
from trio_gateway.broker.redis import redacted


def test_channel_is_the_prefix_and_the_subscription_key() -> None:
    assert channel("trio-gateway:", "workspace:w1") == "trio-gateway:workspace:w1"
    assert channel("app1:", "all") == "app1:all"


def test_envelope_round_trips_and_keeps_the_message_bytes_untouched() -> None:
    text = '{"type":"event","event":{"workspace_id":"w","note":"line\\nbreak ü"}}'
    data = encode("inst:7", ("all", "workspace:w"), text)
    assert decode(data) == Envelope("inst:7", ("all", "workspace:w"), text.encode())


def test_keys_with_any_characters_survive() -> None:
    keys = ("workspace:a b\nc", 'session:"quoted"', "workspace:ü")
    assert decode(encode("i:1", keys, "{}")).keys == keys


@pytest.mark.parametrize(
    "data",
    [
        b"no header at all",
        b"not json\n{}",
        b'{"id":"x"}\n{}',
        b'["id"]\n{}',
        b'[1, []]\n{}',
        b'["id", "all"]\n{}',
        b'["id", [1]]\n{}',
        b'["id", ["all"]]\n\xff\xfe',
    ],
)
def test_anything_else_on_a_gateway_channel_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every refusal is a ValueError subclass
        decode(data)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://user:p@ss@redis.example:6380/1", "rediss://user:***@redis.example:6380/1"),
    ],
)
def test_redacted_hides_the_password(url: str, shown: str) -> None:
    assert redacted(url) == shown
