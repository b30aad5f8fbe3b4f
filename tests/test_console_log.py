"""Console log lines, as a person at a terminal reads them (`--log-format console`)."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
import trio

from trio_gateway import Config, open_gateway
from trio_gateway.observability.jsonlog import ConsoleFormatter, fields

from .helpers import ready, tcp_client

log = logging.getLogger("trio_gateway.test_console_log")


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ConsoleFormatter())
    logger = logging.getLogger("trio_gateway")
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


async def test_a_gateway_event_is_one_line_with_its_fields_and_instance(
    config: Config, console: io.StringIO
) -> None:
    with trio.fail_after(5):
        async with open_gateway(config) as gateway, tcp_client(gateway.port) as ws:
            await ready(ws)
    connected = next(line for line in console.getvalue().splitlines() if "connected" in line)
    expected = (
        r"\d\d:\d\d:\d\d\.\d{3} INFO  trio_gateway\.connection client connected "
        r"client_id=\S+ user_id=null echo=false remote=127\.0\.0\.1:\d+ "
        rf"instance=…{gateway.instance[-6:]}"
    )
    assert re.fullmatch(expected, connected)


def test_values_with_spaces_are_quoted_and_a_traceback_follows(console: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handler failed", extra=fields(reason="went away", code=1011))
    first, *rest = console.getvalue().splitlines()
    assert first.endswith(
        ' ERROR trio_gateway.test_console_log handler failed reason="went away" code=1011'
    )
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"
