"""JSON log lines: one object per line, and every line of a gateway names its instance."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import trio

from trio_gateway import Config, open_gateway
from trio_gateway.observability.jsonlog import JsonFormatter

from .helpers import ready, tcp_client


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("trio_gateway")
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


async def test_every_line_of_two_gateways_names_its_own_instance(
    config: Config, log_lines: io.StringIO
) -> None:
    with trio.fail_after(5):
        async with (
            open_gateway(config) as first,
            open_gateway(config) as second,
            tcp_client(first.port) as a,
            tcp_client(second.port) as b,
        ):
            await ready(a)
            await ready(b)
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    connected = {
        line["client_id"]: line["instance"] for line in lines if line["event"] == "client connected"
    }
    assert sorted(connected.values()) == sorted([first.instance, second.instance])
    assert all(line.get("instance") in (first.instance, second.instance) for line in lines)
    started = [line for line in lines if line["event"] == "gateway started"]
    assert [line["broker"] for line in started] == ["memory", "memory"]
