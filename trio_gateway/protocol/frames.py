"""Server-to-client WebSocket frames built once, as bytes (RFC 6455 §5.2). Pure, no I/O.

A frame from the server is never masked, and this server negotiates no extensions, so the
frame for a message is the same bytes for every recipient: the fan-out builds it once and
each connection's writer sends it as is. Only whole, unfragmented data frames are built here,
and the keepalive's empty ping (queued like data, so it never tears a frame); the other
control frames (pong, close) are wsproto's, in transport/websocket.py.
"""

from __future__ import annotations

import struct

FIN = 0x80
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_PING = 0x9
# Payload lengths up to 125 fit in the second byte; up to 2**16 - 1 take a 16-bit extension,
# anything longer a 64-bit one.
_SHORT_LIMIT = 125
_MEDIUM_LIMIT = 0xFFFF


def _frame(opcode: int, payload: bytes) -> bytes:
    length = len(payload)
    if length <= _SHORT_LIMIT:
        header = struct.pack("!BB", FIN | opcode, length)
    elif length <= _MEDIUM_LIMIT:
        header = struct.pack("!BBH", FIN | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", FIN | opcode, 127, length)
    return header + payload


def text_frame(text: str) -> bytes:
    """One final, unmasked text frame carrying `text` as UTF-8."""
    return _frame(OPCODE_TEXT, text.encode("utf-8"))


def utf8_text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying `payload`, which is already valid UTF-8."""
    return _frame(OPCODE_TEXT, payload)


def binary_frame(data: bytes) -> bytes:
    """One final, unmasked binary frame carrying `data`."""
    return _frame(OPCODE_BINARY, data)


#: A WebSocket-level ping with no payload: every RFC 6455 client (every browser) answers it
#: with a pong frame, without application code.
WS_PING_FRAME = _frame(OPCODE_PING, b"")
