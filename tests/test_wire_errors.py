"""What a client is told when its input is refused is our own short text, never an
exception's: real sockets against a real gateway."""

from __future__ import annotations

import json

import pytest

from trio_gateway import Gateway

from .raw_wire import close_of, exchange, masked_frame, upgrade_head

INVALID_UTF8 = "Invalid UTF-8 in a text message"


@pytest.mark.parametrize(
    "frames",
    [
        masked_frame(1, b'{"type":"ping"}\xf8\x88'),
        # A character split across fragments, its second half invalid.
        masked_frame(1, b"ok \xce", fin=False) + masked_frame(0, b"\xff", fin=True),
        # An invalid close reason is 1007 too.
        masked_frame(8, b"\x03\xe8\xc3\x28"),
    ],
)
async def test_invalid_utf8_is_1007_with_our_reason(gateway: Gateway, frames: bytes) -> None:
    response = await exchange(gateway.port, upgrade_head() + frames)
    assert close_of(response) == (1007, INVALID_UTF8)
    assert b"codec" not in response
    assert b"decode" not in response


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /api/health HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400),
        (b"GET /api/health HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n", 400),
        (b"GET /api/health HTTP/1.1\r\n\r\n", 400),
        (b"GET /api/health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 100_000 + b"\r\n\r\n", 431),
        # Whole in one read, so h11 (which bounds incomplete heads) would take it.
        (b"GET /api/health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (b"GET /api/health?" + b"q" * 17_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    ],
)
async def test_malformed_http_gets_our_text_not_the_parsers(
    gateway: Gateway, request_bytes: bytes, status: int
) -> None:
    response = await exchange(gateway.port, request_bytes)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    expected = "Request head too large" if status == 431 else "Malformed HTTP request"
    assert json.loads(body) == {"error": expected}


async def test_a_head_just_under_the_limit_is_served(gateway: Gateway) -> None:
    head = b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX: " + b"a" * 16_000
    response = await exchange(gateway.port, head + b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 ")
