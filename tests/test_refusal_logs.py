"""Every refusal is one log line with the reason the client was given, and accept failures at
the descriptor limit are rate-limited in the log."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from trio_gateway import Config, Gateway
from trio_gateway.transport.listener import ACCEPT_FAILURE_LOG_INTERVAL, run_listeners

from .conftest import with_settings
from .raw_wire import exchange, masked_frame, upgrade_head
from .test_logs import Lines, capture


@pytest.fixture
def lines() -> Iterator[Lines]:
    yield from capture(logging.INFO)


class ExhaustedListener(trio.abc.Listener[trio.abc.Stream]):
    """Every accept fails as at the descriptor limit."""

    def __init__(self) -> None:
        self.failures = 0

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        self.failures += 1
        raise OSError(errno.EMFILE, "Too many open files")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def never_called(stream: trio.abc.Stream) -> None:
    raise AssertionError("nothing is ever accepted")


async def test_accept_failures_are_one_line_per_interval_with_a_count(
    autojump_clock: trio.testing.MockClock, lines: Lines
) -> None:
    listener = ExhaustedListener()
    async with trio.open_nursery() as connection_nursery:
        with trio.move_on_after(2.5 * ACCEPT_FAILURE_LOG_INTERVAL):
            await run_listeners([listener], never_called, connection_nursery)
    logged = lines.events("accept failed, backing off")
    # At 0, 10 and 20 s, each but the first counting the failures since the one before.
    assert len(logged) == 3
    # A failure every 0.1 s (the backoff): about 99 left out between two lines.
    assert logged[0]["suppressed"] == 0
    assert all(abs(line["suppressed"] - 99) <= 1 for line in logged[1:])
    since_last = listener.failures - sum(line["suppressed"] + 1 for line in logged)
    assert 0 < since_last <= 51
    assert all(line["level"] == "error" for line in logged)
    assert logged[0]["error"] == "[Errno 24] Too many open files"


@pytest.fixture
def config(config: Config) -> Config:
    return with_settings(config, request_timeout=0.5)


@pytest.mark.parametrize(
    ("sent", "status", "error"),
    [
        (b"GET /api/health HTTP/1.1\r\nHost: x\r\n", 408, "Request head not received in time"),
        (b"NONSENSE\r\n\r\n", 400, "Malformed HTTP request"),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000,
            431,
            "Request head too large",
        ),
        (
            b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
            401,
            "Missing API key",
        ),
        (
            b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
            "Request has both Content-Length and Transfer-Encoding",
        ),
    ],
)
async def test_each_refused_request_is_one_line_with_its_error(
    gateway: Gateway, lines: Lines, sent: bytes, status: int, error: str
) -> None:
    response = await exchange(gateway.port, sent)
    assert response.startswith(b"HTTP/1.1 %d " % status)
    (line,) = lines.events("http request")
    assert (line["status"], line["error"]) == (status, error)


async def test_a_refused_upgrade_is_one_line_with_its_error(gateway: Gateway, lines: Lines) -> None:
    await exchange(gateway.port, upgrade_head(key=b"x"))
    (line,) = lines.events("websocket upgrade refused")
    assert (line["status"], line["error"]) == (
        400,
        "WebSocket handshake needs one Sec-WebSocket-Key: 16 bytes in base64",
    )


async def test_a_successful_request_has_no_error(gateway: Gateway, lines: Lines) -> None:
    await exchange(
        gateway.port, b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    (line,) = lines.events("http request")
    assert line["status"] == 200
    assert "error" not in line


async def test_a_connection_closed_before_identify_is_one_line(
    gateway: Gateway, lines: Lines
) -> None:
    await exchange(gateway.port, upgrade_head(token=None) + masked_frame(1, b"\xff"))
    (line,) = lines.events("websocket closed before identify")
    assert (line["code"], line["reason"]) == (1007, "Invalid UTF-8 in a text message")
