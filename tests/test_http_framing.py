"""Request framing that could be read two ways is refused (RFC 9112 6.1, request
smuggling): raw sockets, and no second response ever comes."""

from __future__ import annotations

import json

import pytest

from trio_gateway import Gateway

from .raw_wire import exchange

SMUGGLED = b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
HEAD = b"POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        # CL.TE: a front reading Content-Length forwards it all; chunked reading ends at 0.
        HEAD
        + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % (5 + len(SMUGGLED))
        + b"0\r\n\r\n"
        + SMUGGLED,
        # TE.CL: chunked says the body holds the second request, Content-Length says not.
        HEAD
        + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
    ],
    ids=["CL.TE", "TE.CL"],
)
async def test_both_lengths_are_refused_and_nothing_else_is_served(
    gateway: Gateway, request_bytes: bytes
) -> None:
    response = await exchange(gateway.port, request_bytes)
    assert response.count(b"HTTP/1.1 ") == 1
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in head
    assert json.loads(body) == {"error": "Request has both Content-Length and Transfer-Encoding"}
