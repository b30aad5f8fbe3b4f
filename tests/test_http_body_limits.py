"""Request bodies cannot be used to hold memory: credentials are checked on the head, before
any body is read, and all bodies in flight share `max_body_memory` (autojump clock,
in-memory streams into the real server)."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from trio_gateway import Config

from .conftest import with_settings
from .helpers import API_KEY, MemoryListener, serve_in_memory
from .raw_wire import read_to_close


def post_head(length: int, token: str | None = API_KEY, path: str = "/api/events") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {length}\r\n\r\n".encode()


def status_of(response: bytes | bytearray) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> object:
    return json.loads(response.partition(b"\r\n\r\n")[2])


@pytest.fixture
def config(config: Config) -> Config:
    return with_settings(config, max_body_size=1000, max_body_memory=2000)


@pytest.fixture
async def listener(nursery: trio.Nursery, config: Config) -> MemoryListener:
    _, listener = await serve_in_memory(nursery, config)
    return listener


@pytest.mark.parametrize("token", [None, "wrong-key"])
async def test_no_valid_credentials_is_401_before_the_body_and_closed(
    autojump_clock: trio.testing.MockClock, listener: MemoryListener, token: str | None
) -> None:
    stream = await listener.connect()
    started = trio.current_time()
    await stream.send_all(post_head(1000, token) + b"{")  # the body never comes
    with trio.fail_after(60):
        response = await read_to_close(stream)
    # The answer is at once, not at request_timeout; the connection is then closed.
    assert trio.current_time() - started < 5
    assert status_of(response) == 401
    assert b"connection: close" in response
    assert body_of(response) == {
        "error": "Missing API key" if token is None else "Missing or invalid API key"
    }


async def test_a_refused_request_without_a_body_keeps_its_connection(
    autojump_clock: trio.testing.MockClock, listener: MemoryListener
) -> None:
    stream = await listener.connect()
    await stream.send_all(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n")
    first = await stream.receive_some(65536)
    assert status_of(first) == 401
    assert b"connection: close" not in first
    await stream.send_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(await stream.receive_some(65536)) == 200
    await stream.aclose()


async def test_bodies_beyond_max_body_memory_get_503_with_retry_after(
    autojump_clock: trio.testing.MockClock, listener: MemoryListener
) -> None:
    body = json.dumps({"workspace_id": "W", "pad": "x" * 950}).encode()
    assert len(body) <= 1000
    # Two bodies of 1000 declared bytes, half sent: the 2000 bytes are spoken for.
    holders = [await listener.connect() for _ in range(2)]
    for holder in holders:
        await holder.send_all(post_head(len(body)) + body[:10])
    await trio.testing.wait_all_tasks_blocked()
    third = await listener.connect()
    await third.send_all(post_head(len(body)) + body)
    with trio.fail_after(60):
        refused = await read_to_close(third)
    assert status_of(refused) == 503
    assert b"retry-after: 1" in refused
    assert body_of(refused) == {"error": "Too many request bodies in flight; retry later"}
    # The held ones finish normally, and then their memory is free again.
    for holder in holders:
        await holder.send_all(body[10:])
        assert status_of(await holder.receive_some(65536)) == 202
    fourth = await listener.connect()
    await fourth.send_all(post_head(len(body)) + body)
    assert status_of(await fourth.receive_some(65536)) == 202
    for stream in [*holders, fourth]:
        await stream.aclose()


async def test_a_chunked_body_is_counted_as_it_arrives(
    autojump_clock: trio.testing.MockClock, listener: MemoryListener
) -> None:
    holders = [await listener.connect() for _ in range(2)]
    await holders[0].send_all(post_head(1000) + b"[")
    await holders[1].send_all(post_head(500) + b"[")  # 1500 of 2000 held
    await trio.testing.wait_all_tasks_blocked()
    chunked = await listener.connect()
    head = (
        b"POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (300, b" " * 300)
    await chunked.send_all(head + chunk)
    await trio.testing.wait_all_tasks_blocked()
    await chunked.send_all(chunk)  # 600 in all: over the 500 left, within max_body_size
    with trio.fail_after(60):
        refused = await read_to_close(chunked)
    assert status_of(refused) == 503
    for holder in holders:
        await holder.aclose()


def test_max_body_memory_must_hold_one_whole_body() -> None:
    with pytest.raises(ValueError, match="max_body_memory: must be at least max_body_size"):
        Config(max_body_size=2000, max_body_memory=1000)
