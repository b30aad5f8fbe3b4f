"""Upgrades cannot hold a connection: a head that never ends gets 408 at exactly
`request_timeout`, and an upgrade that announces a body is refused at once (autojump clock,
in-memory streams into the real server)."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from trio_gateway import Config

from .conftest import with_settings
from .helpers import serve_in_memory
from .raw_wire import read_to_close, upgrade_head


@pytest.fixture
def config(config: Config) -> Config:
    return with_settings(config, request_timeout=10.0)


async def test_an_unfinished_upgrade_head_gets_408_at_request_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, config)
    stream = await listener.connect()
    started = trio.current_time()
    await stream.send_all(upgrade_head()[:-2])  # never the blank line that ends the head
    response = await stream.receive_some(65536)
    assert trio.current_time() - started == 10.0
    assert response.startswith(b"HTTP/1.1 408 ")
    assert await read_to_close(stream) == b""


@pytest.mark.parametrize(
    "announce",
    [b"Content-Length: 10\r\n", b"Transfer-Encoding: chunked\r\n"],
    ids=["content-length", "chunked"],
)
async def test_an_upgrade_announcing_a_body_is_refused_at_once(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    config: Config,
    announce: bytes,
) -> None:
    _, listener = await serve_in_memory(nursery, config)
    stream = await listener.connect()
    started = trio.current_time()
    await stream.send_all(upgrade_head(extra=announce))
    with trio.fail_after(60):  # virtual seconds
        response = await stream.receive_some(65536)
    assert trio.current_time() == started
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body) == {"error": "WebSocket handshake must not have a body"}


async def test_an_empty_body_announced_is_still_an_upgrade(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    _, listener = await serve_in_memory(nursery, config)
    stream = await listener.connect()
    await stream.send_all(upgrade_head(extra=b"Content-Length: 0\r\n"))
    assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 101 ")
    await stream.aclose()
