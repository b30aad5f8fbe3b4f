"""Fragmented messages are bounded by frame count as well as by size: `max_fragments`."""

from __future__ import annotations

import pytest
import trio

from trio_gateway import Gateway
from trio_gateway.runtime.config import Config
from trio_gateway.transport.websocket import ConnectionClosed, WebSocket

from .conftest import with_settings
from .helpers import TIMEOUT
from .raw_wire import close_of, exchange, masked_frame, server_frames, upgrade_head

TOO_MANY = (1009, "Exceeded maximum fragments: 4 frames")


def fragmented(count: int, payload: bytes = b"") -> bytes:
    """A text message in `count` frames, each carrying `payload`."""
    frames = [masked_frame(1 if i == 0 else 0, payload, fin=i == count - 1) for i in range(count)]
    return b"".join(frames)


async def test_a_message_in_max_fragments_frames_is_received_whole() -> None:
    server_socket, client_socket = trio.socket.socketpair()
    async with (
        trio.SocketStream(server_socket) as server,
        trio.SocketStream(client_socket) as client,
    ):
        ws = WebSocket(server, b"", 1 << 20, max_fragments=4)
        with trio.fail_after(TIMEOUT):
            await client.send_all(fragmented(4, b"ab") + fragmented(1, b"c"))
            assert await ws.receive() == "abababab"
            assert await ws.receive() == "c"


@pytest.mark.parametrize("payload", [b"", b"x"])
async def test_one_frame_more_closes_1009(payload: bytes) -> None:
    server_socket, client_socket = trio.socket.socketpair()
    async with (
        trio.SocketStream(server_socket) as server,
        trio.SocketStream(client_socket) as client,
    ):
        ws = WebSocket(server, b"", 1 << 20, max_fragments=4)
        with trio.fail_after(TIMEOUT):
            # A ping between fragments is answered and counts for nothing.
            await client.send_all(
                masked_frame(1, payload, fin=False)
                + masked_frame(0, payload, fin=False)
                + masked_frame(9, b"p")
                + masked_frame(0, payload, fin=False)
                + masked_frame(0, payload, fin=False)
                + masked_frame(0, payload, fin=True)
            )
            with pytest.raises(ConnectionClosed) as info:
                await ws.receive()
            received = await client.receive_some(1 << 16)
    assert (info.value.closed.code, info.value.closed.reason) == TOO_MANY
    opcodes = [opcode for opcode, _ in server_frames(received)]
    assert opcodes == [10, 8]


@pytest.fixture
def config(config: Config) -> Config:
    return with_settings(config, max_fragments=4)


async def test_the_gateway_closes_an_endless_fragmented_message(gateway: Gateway) -> None:
    response = await exchange(gateway.port, upgrade_head() + fragmented(1000, b"")[:-6])
    assert close_of(response) == TOO_MANY
