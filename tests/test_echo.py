"""The diagnostics echo endpoint: off by default, and when on, the real reader/writer path."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from trio_gateway import Config, Gateway, serve

from .conftest import with_settings
from .helpers import TIMEOUT, closed_with, tcp_client


async def test_echo_is_not_served_by_default(gateway: Gateway) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with tcp_client(gateway.port, path="/api/echo"):
            pass
    assert info.value.status_code == 404


async def start_echo_gateway(nursery: trio.Nursery, config: Config, **changes: object) -> Gateway:
    gateway: Gateway = await nursery.start(
        serve, with_settings(config, enable_echo=True, **changes)
    )
    return gateway


async def test_echo_returns_text_and_binary_in_order_without_greeting(
    nursery: trio.Nursery, config: Config
) -> None:
    gateway = await start_echo_gateway(nursery, config)
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, path="/api/echo") as ws:
            messages: list[str | bytes] = ["not json", b"\x00\x01\xff", "é" * 1000, b"", ""]
            for message in messages:
                await ws.send_message(message)
            for message in messages:
                assert await ws.get_message() == message
            # An echo peer is diagnostics, not a client: not counted, not broadcast to.
            assert gateway.client_count() == 0


async def test_echo_needs_a_token_and_keeps_the_size_limit(
    nursery: trio.Nursery, config: Config
) -> None:
    gateway = await start_echo_gateway(nursery, config, max_message_size=1000)
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, token="wrong", path="/api/echo") as ws:
            assert (await closed_with(ws)).code == 4001
        async with tcp_client(gateway.port, path="/api/echo") as ws:
            await ws.send_message("x" * 1000)
            assert await ws.get_message() == "x" * 1000
            await ws.send_message("x" * 1001)
            assert (await closed_with(ws)).code == 1009
