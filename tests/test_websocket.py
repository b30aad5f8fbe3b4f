"""websocket.WebSocket on its own: the socket read path, the parser dropped between messages,
the closing handshake and the send lock, against a client built on wsproto."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator

import attrs
import pytest
import trio
import trio.testing
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage

from trio_gateway.protocol.frames import text_frame
from trio_gateway.transport.websocket import ConnectionClosed, WebSocket, _whole_frames

from .helpers import TIMEOUT

LIMIT = 1 << 20


def client_frames(*events: Event) -> bytes:
    """What a client sends for `events`: masked frames, as wsproto's client builds them."""
    client = Connection(ConnectionType.CLIENT)
    return b"".join(client.send(event) for event in events)


def masked_frame(opcode: int, payload: bytes, *, fin: bool) -> bytes:
    """One client frame, built by hand for what wsproto's client will not build (a text
    message split inside a character). Payloads up to 125 bytes."""
    key = b"\x01\x02\x03\x04"
    masked = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 * fin | opcode, 0x80 | len(payload)]) + key + masked


def parsed_by_client(data: bytes) -> list[Event]:
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(data)
    return list(client.events())


@attrs.frozen
class Pair:
    """A WebSocket on one end of a connected socket pair (so it takes its socket fast
    paths), and the client's end."""

    ws: WebSocket
    server: trio.SocketStream
    client: trio.SocketStream


def socket_pair(trailing: bytes = b"") -> Pair:
    server_socket, client_socket = trio.socket.socketpair()
    server = trio.SocketStream(server_socket)
    return Pair(WebSocket(server, trailing, LIMIT), server, trio.SocketStream(client_socket))


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    made = socket_pair()
    async with made.server, made.client:
        yield made


async def read_available(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    with trio.move_on_after(0.2):
        while chunk := await stream.receive_some(1 << 16):
            data += chunk
    return data


# --- _whole_frames: when the parser can be dropped -------------------------------------------


def test_whole_frames_at_every_length_encoding() -> None:
    for size in (0, 125, 126, 65535, 65536):
        assert _whole_frames(client_frames(TextMessage(data="x" * size)))
    assert _whole_frames(client_frames(Ping(payload=b"p"), TextMessage(data="a"), Pong()))


def test_whole_frames_refuses_anything_a_parser_would_still_hold() -> None:
    whole = client_frames(TextMessage(data="x" * 300))
    for cut in (1, 2, 3, 7, len(whole) - 1):
        assert not _whole_frames(whole[:cut])
    fragment = client_frames(TextMessage(data="ab", message_finished=False))
    assert not _whole_frames(fragment)
    client = Connection(ConnectionType.CLIENT)
    client.send(TextMessage(data="ab", message_finished=False))
    continuation = client.send(TextMessage(data="cd"))
    assert not _whole_frames(continuation)


# --- receiving --------------------------------------------------------------------------------


async def idle_reader(ws: WebSocket, nursery: trio.Nursery) -> list[str | bytes]:
    """Start a task receiving every message into the returned list; wait until it is idle."""
    received: list[str | bytes] = []

    async def reader() -> None:
        while True:
            received.append(await ws.receive())

    nursery.start_soon(reader)
    await trio.testing.wait_all_tasks_blocked()
    return received


async def test_an_idle_connection_holds_no_frame_parser(pair: Pair) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            received = await idle_reader(pair.ws, nursery)
            await pair.client.send_all(client_frames(TextMessage(data="one")))
            await trio.testing.wait_all_tasks_blocked()
            assert pair.ws._parser is None
            frames = client_frames(TextMessage(data="two"), BytesMessage(data=b"3"))
            await pair.client.send_all(frames)
            await trio.testing.wait_all_tasks_blocked()
            assert pair.ws._parser is None
            # Half a message keeps the parser until the rest arrives.
            half = client_frames(TextMessage(data="four"))
            await pair.client.send_all(half[:4])
            await trio.testing.wait_all_tasks_blocked()
            assert pair.ws._parser is not None
            await pair.client.send_all(half[4:])
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert received == ["one", "two", b"3", "four"]


async def test_messages_split_anywhere_across_reads_are_reassembled(pair: Pair) -> None:
    text = "é" * 100 + "ü"
    encoded = text.encode()
    # A text message in three fragments, with a two-byte character split between the first
    # two, and each frame written in two pieces.
    wire = [
        masked_frame(0x1, encoded[:51], fin=False),
        masked_frame(0x0, encoded[51:150], fin=False),
        masked_frame(0x0, encoded[150:], fin=True),
        masked_frame(0x2, b"\x00\xff", fin=False),
        masked_frame(0x0, b"\x01", fin=True),
    ]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            received = await idle_reader(pair.ws, nursery)
            for frame in wire:
                for piece in (frame[:3], frame[3:]):
                    await pair.client.send_all(piece)
                    await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert received == [text, b"\x00\xff\x01"]


async def test_trailing_bytes_from_the_handshake_come_first() -> None:
    made = socket_pair(client_frames(TextMessage(data="early")))
    async with made.server, made.client:
        with trio.fail_after(TIMEOUT):
            assert await made.ws.receive() == "early"
            await made.client.send_all(client_frames(TextMessage(data="later")))
            assert await made.ws.receive() == "later"


async def test_a_cancelled_receive_leaves_the_socket_usable(pair: Pair) -> None:
    with trio.move_on_after(0.01):
        await pair.ws.receive()
    with trio.fail_after(TIMEOUT):
        await pair.client.send_all(client_frames(TextMessage(data="after")))
        assert await pair.ws.receive() == "after"


async def test_pings_are_answered_with_their_payload(pair: Pair) -> None:
    with trio.fail_after(TIMEOUT):
        await pair.client.send_all(client_frames(Ping(payload=b"abc"), TextMessage(data="x")))
        assert await pair.ws.receive() == "x"
        events = parsed_by_client(await read_available(pair.client))
    assert events == [Pong(payload=b"abc")]


# --- closing ---------------------------------------------------------------------------------


async def test_the_peers_close_is_answered_and_ends_the_connection(pair: Pair) -> None:
    ws = pair.ws
    with trio.fail_after(TIMEOUT):
        await pair.client.send_all(client_frames(CloseConnection(code=4000, reason="bye")))
        with pytest.raises(ConnectionClosed) as info:
            await ws.receive()
        assert (info.value.closed.code, info.value.closed.reason) == (4000, "bye")
        assert parsed_by_client(await read_available(pair.client)) == [
            CloseConnection(code=4000, reason="bye")
        ]
        with pytest.raises(ConnectionClosed):
            await ws.send_frames(text_frame("too late"))
        sink = Sink()
        ws.lend_fd(sink)
        assert sink.fd == -1
        # Our close was the answer: no second one.
        await ws.send_close(1000, "")
        assert await read_available(pair.client) == b""


async def test_our_close_goes_out_once_and_nothing_follows_it(pair: Pair) -> None:
    ws = pair.ws
    with trio.fail_after(TIMEOUT):
        await ws.send_close(1001, "going away")
        await ws.send_close(1000, "again")
        sink = Sink()
        ws.lend_fd(sink)
        assert sink.fd == -1
        with pytest.raises(ConnectionClosed):
            await ws.send_frames(text_frame("late"))
        # Closing: a ping arriving now gets no pong, and receive reports our close.
        await pair.client.send_all(client_frames(Ping(payload=b"p")))
        with pytest.raises(ConnectionClosed) as info:
            await ws.receive()
        assert info.value.closed.code == 1001
        assert parsed_by_client(await read_available(pair.client)) == [
            CloseConnection(code=1001, reason="going away")
        ]


async def test_the_peers_close_answering_ours_completes_the_handshake(pair: Pair) -> None:
    ws = pair.ws
    with trio.fail_after(TIMEOUT):
        both = client_frames(TextMessage(data="a"), CloseConnection(code=1000, reason=""))
        await pair.client.send_all(both)
        assert await ws.receive() == "a"
        # Our close crosses the peer's, which is already received but not yet read.
        await ws.send_close(1001, "going away")
        with pytest.raises(ConnectionClosed) as info:
            await ws.receive()
        assert info.value.closed.code == 1001
        assert parsed_by_client(await read_available(pair.client)) == [
            CloseConnection(code=1001, reason="going away")
        ]


async def test_a_protocol_error_fails_the_connection_with_1002(pair: Pair) -> None:
    with trio.fail_after(TIMEOUT):
        await pair.client.send_all(text_frame("unmasked, as no client may send"))
        with pytest.raises(ConnectionClosed) as info:
            await pair.ws.receive()
        assert info.value.closed.code == 1002
        (event,) = parsed_by_client(await read_available(pair.client))
    assert event == CloseConnection(code=1002, reason="Protocol error")


def masked_text_frame(payload: bytes) -> bytes:
    """A client text frame carrying `payload` as it is, valid UTF-8 or not."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


async def test_invalid_utf8_closes_1007_without_python_text(pair: Pair) -> None:
    with trio.fail_after(TIMEOUT):
        await pair.client.send_all(masked_text_frame(b"ok \xf8\x88\x80"))
        with pytest.raises(ConnectionClosed) as info:
            await pair.ws.receive()
        (event,) = parsed_by_client(await read_available(pair.client))
    assert info.value.closed.code == 1007
    assert event == CloseConnection(code=1007, reason="Invalid UTF-8 in a text message")


async def test_the_peer_leaving_is_1006(pair: Pair) -> None:
    with trio.fail_after(TIMEOUT):
        await pair.client.aclose()
        with pytest.raises(ConnectionClosed) as info:
            await pair.ws.receive()
    assert info.value.closed.code == 1006


async def test_a_connection_reset_is_1006() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with (
        listeners[0],
        await trio.open_tcp_stream("127.0.0.1", port) as client,
        await listeners[0].accept() as server,
    ):
        assert isinstance(server, trio.SocketStream)
        ws = WebSocket(server, b"", LIMIT)
        client.socket.setsockopt(
            trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        client.socket.close()
        with trio.fail_after(TIMEOUT), pytest.raises(ConnectionClosed) as info:
            await ws.receive()
    assert info.value.closed.code == 1006


async def test_the_socket_closed_under_a_waiting_reader_is_1006(pair: Pair) -> None:
    codes: list[int] = []

    async def reader() -> None:
        try:
            await pair.ws.receive()
        except ConnectionClosed as exc:
            codes.append(exc.closed.code)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await pair.server.aclose()
    assert codes == [1006]


# --- the send lock ----------------------------------------------------------------------------


async def test_a_pong_waits_for_a_data_frame_being_written_and_follows_it_whole() -> None:
    # Lockstep streams: a write completes only as the peer reads it, so the data frame is
    # still being written when the ping arrives.
    client, server = trio.testing.lockstep_stream_pair()
    ws = WebSocket(server, b"", LIMIT)
    big = text_frame("x" * 100_000)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.send_frames, big)
            await trio.testing.wait_all_tasks_blocked()
            assert ws.incomplete
            nursery.start_soon(ws.receive)
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(client_frames(Ping(payload=b"p")))
            await trio.testing.wait_all_tasks_blocked()
            wire = b""
            while len(wire) < len(big) + 3:
                wire += await client.receive_some(1 << 16)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert parsed_by_client(wire) == [TextMessage(data="x" * 100_000), Pong(payload=b"p")]
    assert not ws.incomplete
    assert not ws._writing


async def test_writes_wait_their_turn_behind_a_frame_being_written() -> None:
    client, server = trio.testing.lockstep_stream_pair()
    ws = WebSocket(server, b"", LIMIT)
    first, second = text_frame("1" * 70_000), text_frame("2" * 10)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.send_frames, first)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ws.send_frames, second)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ws.send_close, 1001, "going away")
            await trio.testing.wait_all_tasks_blocked()
            wire = b""
            while not wire.endswith(b"going away"):
                wire += await client.receive_some(1 << 16)
    assert parsed_by_client(wire) == [
        TextMessage(data="1" * 70_000),
        TextMessage(data="2" * 10),
        CloseConnection(code=1001, reason="going away"),
    ]
    assert not ws._writing


class Sink:
    """What a connection keeps its writable descriptor in (an outbox, in the server)."""

    fd = 1234


async def test_the_lent_descriptor_is_withheld_while_a_write_is_under_way_and_once_closing(
    pair: Pair,
) -> None:
    ws = pair.ws
    sink = Sink()
    ws.lend_fd(sink)
    assert sink.fd == pair.server.socket.fileno()
    # A frame larger than the socket takes at once: the write waits, holding the send lock.
    pair.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = text_frame("x" * (1 << 20))
    seen = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.send_frames, big)
        await trio.testing.wait_all_tasks_blocked()
        seen.append(sink.fd)
        received = 0
        while received < len(big):
            received += len(await pair.client.receive_some(1 << 16))
    assert seen == [-1]
    assert sink.fd == pair.server.socket.fileno()
    # Withdrawn: the sink is told there is no descriptor, and later changes leave it alone.
    ws.lend_fd(None)
    assert sink.fd == -1
    other = Sink()
    ws.lend_fd(other)
    with trio.fail_after(TIMEOUT):
        await ws.send_close(1000, "")
    assert other.fd == -1
    assert sink.fd == -1


async def test_after_a_direct_write_stopped_inside_a_frame_a_pong_waits_for_the_rest(
    pair: Pair, nursery: trio.Nursery
) -> None:
    # The fan-out writes to the lent descriptor and tells the connection when the socket
    # took only part of a frame; until its writer sends the rest, a ping's pong must wait,
    # or it would land inside the frame.
    ws = pair.ws
    sink = Sink()
    ws.lend_fd(sink)
    pair.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = text_frame("x" * (1 << 20))
    sent = os.write(sink.fd, big)
    assert 0 < sent < len(big)
    ws.wrote_partly()
    assert sink.fd == -1
    await idle_reader(ws, nursery)
    await pair.client.send_all(client_frames(Ping(payload=b"p")))
    await trio.testing.wait_all_tasks_blocked()
    received = b""

    async def read_all() -> None:
        nonlocal received
        while len(received) < len(big) + 3:
            received += await pair.client.receive_some(1 << 16)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as readers:
            readers.start_soon(read_all)
            await ws.send_frames(big[sent:])
    assert parsed_by_client(received) == [TextMessage(data="x" * (1 << 20)), Pong(payload=b"p")]
    assert sink.fd == pair.server.socket.fileno()
