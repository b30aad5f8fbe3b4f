"""Server frames that never change, built once, and the error reply frame. Pure, no I/O."""

from __future__ import annotations

from .codec import ECHO_LIMIT, encode
from .errors import UNAUTHORIZED_CODE
from .frames import text_frame
from .messages import Error, HeartbeatAck, Ping, Pong, SessionExpired

PING_FRAME = text_frame(encode(Ping()))
PONG_FRAME = text_frame(encode(Pong()))
HEARTBEAT_ACK_FRAME = text_frame(encode(HeartbeatAck()))
SESSION_EXPIRED_FRAME = text_frame(encode(SessionExpired()))
NOT_IDENTIFIED_FRAME = text_frame(
    encode(Error("Not identified: send identify first", UNAUTHORIZED_CODE))
)
BINARY_ERROR_FRAME = text_frame(
    encode(Error("Binary frames are not supported; send JSON text frames"))
)


def error_frame(message: str, code: str | None = None) -> bytes:
    """The error reply to a client message, its text cut so an echoed input stays small."""
    return text_frame(encode(Error(message[: ECHO_LIMIT * 2], code)))
