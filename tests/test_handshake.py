"""The opening handshake is checked as RFC 6455 4.2.1 says, on a raw socket: exactly one
Sec-WebSocket-Key of 16 base64 bytes (else 400), Sec-WebSocket-Version 13 (else 426 naming
it)."""

from __future__ import annotations

import json

import pytest

from trio_gateway import Gateway

from .raw_wire import KEY, exchange, upgrade_head

KEY_PROBLEM = "WebSocket handshake needs one Sec-WebSocket-Key: 16 bytes in base64"


def status_headers_body(response: bytes) -> tuple[int, dict[bytes, bytes], object]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, json.loads(body) if body else None


async def test_a_valid_key_is_accepted(gateway: Gateway) -> None:
    response = await exchange(gateway.port, upgrade_head(token="wrong"))
    assert response.startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize(
    ("key", "extra"),
    [
        (b"x", b""),
        (b"", b""),  # none at all
        (b"dGhlIHNhbXBsZSBub25jZQ", b""),  # unpadded
        (b"dGhlIHNhbXBsZSBub25jZSE=", b""),  # 17 bytes
        (b"dGhlIHNhbXBsZSBub25j", b""),  # 15 bytes
        (b"dGhlIHNhbXBsZSBub25jZQ==!", b""),  # not base64
        (KEY, b"Sec-WebSocket-Key: " + KEY + b"\r\n"),  # two of them
    ],
)
async def test_a_bad_or_repeated_key_is_400(gateway: Gateway, key: bytes, extra: bytes) -> None:
    response = await exchange(gateway.port, upgrade_head(key=key, extra=extra))
    status, headers, body = status_headers_body(response)
    assert status == 400
    assert body == {"error": KEY_PROBLEM}
    assert headers[b"connection"] == b"close"


@pytest.mark.parametrize(
    "version_lines",
    [b"", b"Sec-WebSocket-Version: 8\r\n", b"Sec-WebSocket-Version: 13\r\n"],
)
async def test_another_version_is_426_naming_13(gateway: Gateway, version_lines: bytes) -> None:
    # upgrade_head says 13 itself: drop that line and put these instead (none, 8, 13 twice).
    head = upgrade_head().replace(b"Sec-WebSocket-Version: 13\r\n", b"", 1)
    if version_lines == b"Sec-WebSocket-Version: 13\r\n":
        version_lines += version_lines
    head = head.replace(b"\r\n\r\n", b"\r\n" + version_lines + b"\r\n", 1)
    status, headers, body = status_headers_body(await exchange(gateway.port, head))
    assert status == 426
    assert headers[b"sec-websocket-version"] == b"13"
    assert body == {"error": "WebSocket handshake needs Sec-WebSocket-Version: 13"}
