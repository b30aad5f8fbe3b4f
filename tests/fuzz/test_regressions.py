"""Inputs the fuzz targets found harming the gateway, each replayed as a plain test on a real
socket: the answer a client sees, and that nothing was logged as a failure."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import trio

from trio_gateway import Config, Gateway

from ..helpers import API_KEY, TIMEOUT, ready, receive_json, request, serve_in_memory, tcp_client
from .driver import Driver, LogRecords, gateway_log_records, masked_frame

UPGRADE = (
    b"upgrade: websocket\r\nconnection: Upgrade\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
)


@pytest.fixture
def records() -> Iterator[LogRecords]:
    with gateway_log_records() as handler:
        yield handler


async def exchange(gateway: Gateway, request: bytes) -> bytes:
    """Everything the gateway answers to `request` before it closes the connection."""
    with trio.fail_after(TIMEOUT):
        async with await trio.open_tcp_stream("127.0.0.1", gateway.port) as stream:
            await stream.send_all(request)
            await stream.send_eof()
            received = b""
            while chunk := await stream.receive_some():
                received += chunk
    return received


def status_and_body(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_a_refused_head_upgrade_is_answered_without_a_body(
    gateway: Gateway, records: LogRecords
) -> None:
    # Found: HEAD with Upgrade on a path that serves none raised in h11 (a body on a HEAD
    # answer) and was logged "http connection failed" with a traceback.
    response = await exchange(gateway, b"HEAD /admin HTTP/1.1\r\nhost: g\r\n" + UPGRADE + b"\r\n")
    assert status_and_body(response) == (404, b"")
    assert b"content-length: 21\r\n" in response  # what a GET would have carried
    assert not records.records


async def test_a_head_request_with_both_lengths_is_refused_without_a_body(
    gateway: Gateway, records: LogRecords
) -> None:
    # Found (make fuzz, after the merge of the head checks): the 400 for Content-Length beside
    # Transfer-Encoding wrote a body on a HEAD answer, which h11 refuses: a traceback.
    request = b"HEAD /admin HTTP/1.0\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\n\r\n[1]"
    assert status_and_body(await exchange(gateway, request)) == (400, b"")
    assert not records.records


async def test_malformed_http_gets_our_words_not_the_parsers(
    gateway: Gateway, records: LogRecords
) -> None:
    # Found: the 400 quoted h11's exception text: `illegal header line: bytearray(b': ')`.
    response = await exchange(gateway, b"GET /admin HTTP/1.1\r\n: \r\n\r\n")
    status, body = status_and_body(response)
    assert (status, json.loads(body)) == (400, {"error": "Malformed HTTP request"})
    assert not records.records


async def test_an_unsupported_transfer_encoding_is_a_documented_501(
    gateway: Gateway, records: LogRecords
) -> None:
    # Found: an undocumented 501 quoting h11's words.
    request = b"POST /api/events HTTP/1.1\r\nhost: g\r\ntransfer-encoding: gzip\r\n\r\nxx"
    status, body = status_and_body(await exchange(gateway, request))
    assert (status, json.loads(body)) == (
        501,
        {"error": "Transfer-Encoding not supported: send Content-Length or chunked"},
    )
    assert not records.records


async def test_a_close_behind_a_ping_and_a_message_is_answered(
    nursery: trio.Nursery, records: LogRecords
) -> None:
    # Found: the writer took the stream for the message's error reply while the reader was
    # answering the ping; the peer's close then came, the writer stopped, and the reader,
    # waiting for the stream to answer the close, was cancelled: no close frame went out.
    gateway, listener = await serve_in_memory(nursery, Config(api_keys=(API_KEY,), port=0))
    frames = masked_frame(0x1, b"") + masked_frame(0x9, b"a") + masked_frame(0x8, b"")
    with trio.fail_after(TIMEOUT):
        outcome = await Driver(listener, records).websocket(f"/api/ws?token={API_KEY}", frames)
    assert outcome.received.endswith(b"\x8a\x01a\x88\x00")  # the pong, then our close
    assert outcome.close == (1005, "")  # a close without a code, as the client's was
    assert not outcome.logged
    assert gateway.client_count() == 0


async def test_a_publish_nested_too_deeply_is_an_error_reply(
    gateway: Gateway, records: LogRecords
) -> None:
    # Found: data nested a few hundred deep parses, but serialising it again ran out of
    # stack (the converter takes several frames a level): 1011.
    data = "[" * 400 + "]" * 400
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await ws.send_message('{"type":"publish","topic":"room.1","data":' + data + "}")
            assert await receive_json(ws) == {
                "type": "error",
                "message": "Invalid publish: payload is nested too deeply",
            }
            assert await request(ws, type="ping") == {"type": "pong"}
        body = ('{"topic":"room.1","data":' + data + "}").encode()
        request_bytes = b"POST /api/publish HTTP/1.1\r\nhost: g\r\nauthorization: Bearer "
        request_bytes += API_KEY.encode() + b"\r\ncontent-length: %d\r\n\r\n" % len(body)
        status, answer = status_and_body(await exchange(gateway, request_bytes + body))
    assert (status, json.loads(answer)) == (400, {"error": "payload is nested too deeply"})
    assert not records.records
