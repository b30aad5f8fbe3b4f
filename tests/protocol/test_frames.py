"""Pre-built server frames must parse, byte for byte, as what wsproto would have sent."""

from __future__ import annotations

import pytest
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, TextMessage
from wsproto.frame_protocol import FrameProtocol

from trio_gateway.protocol.frames import binary_frame, text_frame


def received_by_client(data: bytes) -> list[TextMessage | BytesMessage]:
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(data)
    return [event for event in client.events() if isinstance(event, TextMessage | BytesMessage)]


def wsproto_server_frame(message: TextMessage | BytesMessage) -> bytes:
    # What wsproto itself emits for the same message on an open server connection.
    return Connection(ConnectionType.SERVER).send(message)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_text_frame_matches_wsproto_at_every_length_boundary(size: int) -> None:
    text = "x" * size
    assert text_frame(text) == wsproto_server_frame(TextMessage(data=text))
    (event,) = received_by_client(text_frame(text))
    assert isinstance(event, TextMessage)
    assert event.data == text
    assert event.message_finished


@pytest.mark.parametrize("size", [0, 125, 126, 65536])
def test_binary_frame_matches_wsproto(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert binary_frame(data) == wsproto_server_frame(BytesMessage(data=data))


def test_non_ascii_text_is_utf8_and_length_counts_bytes() -> None:
    text = "héllo ✓ 🎉"
    frame = text_frame(text)
    assert frame[1] == len(text.encode("utf-8"))
    (event,) = received_by_client(frame)
    assert event.data == text


def test_concatenated_frames_parse_as_separate_messages_in_order() -> None:
    frames = b"".join(text_frame(f'{{"n":{n}}}') for n in range(50))
    events = received_by_client(frames)
    assert [event.data for event in events] == [f'{{"n":{n}}}' for n in range(50)]


def test_frame_protocol_is_what_we_think() -> None:
    # Guard: an unmasked server frame is exactly what FrameProtocol(client=False) builds.
    assert FrameProtocol(client=False, extensions=[]).send_data("ab", fin=True) == text_frame("ab")
