"""Raw-socket helpers for tests that send what no well-behaved client library would: hand-built
handshakes and frames, and reading everything the server says until it closes."""

from __future__ import annotations

import struct

import trio

from .helpers import API_KEY, TIMEOUT

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
_MASK = b"\x01\x02\x03\x04"


def upgrade_head(
    *, token: str | None = API_KEY, path: str = "/api/ws", extra: bytes = b"", key: bytes = KEY
) -> bytes:
    """An RFC 6455 opening handshake, with `extra` header lines (each ending in CRLF)."""
    query = f"?token={token}" if token is not None else ""
    return (
        f"GET {path}{query} HTTP/1.1\r\nHost: gateway.test\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n".encode()
        + (b"Sec-WebSocket-Key: " + key + b"\r\n" if key else b"")
        + extra
        + b"\r\n"
    )


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One client frame with any payload, valid or not."""
    length = len(payload)
    first = bytes([0x80 * fin | opcode])
    if length < 126:
        head = first + bytes([0x80 | length])
    elif length < 1 << 16:
        head = first + bytes([0x80 | 126]) + struct.pack(">H", length)
    else:
        head = first + bytes([0x80 | 127]) + struct.pack(">Q", length)
    masked = bytes(byte ^ _MASK[i % 4] for i, byte in enumerate(payload))
    return head + _MASK + masked


async def exchange(port: int, data: bytes) -> bytes:
    """Send `data`, then return everything the server sends until it closes."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            return await read_to_close(stream)


async def read_to_close(stream: trio.abc.ReceiveStream) -> bytes:
    received = bytearray()
    try:
        while chunk := await stream.receive_some(65536):
            received += chunk
    except trio.BrokenResourceError:
        pass  # a reset after the server's last bytes
    return bytes(received)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of every whole unmasked server frame in `data`."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if length == 126:
            length = struct.unpack(">H", data[at : at + 2])[0]
            at += 2
        elif length == 127:
            length = struct.unpack(">Q", data[at : at + 8])[0]
            at += 8
        frames.append((opcode, data[at : at + length]))
        at += length
    return frames


def close_of(data: bytes) -> tuple[int, str]:
    """The (code, reason) of the close frame in what the server sent after its 101."""
    _, _, after = data.partition(b"\r\n\r\n")
    (payload,) = [payload for opcode, payload in server_frames(after) if opcode == 8]
    return struct.unpack(">H", payload[:2])[0], payload[2:].decode()
