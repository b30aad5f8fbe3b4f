"""Close codes the server sends and the typed protocol error.

Owns the meaning of every close code and of the `code` of error replies; must not decide
*when* to close (that is session/).
"""

from __future__ import annotations

import enum

import attrs


class CloseCode(enum.IntEnum):
    """Every WebSocket close code the server sends (docs/PROTOCOL.md lists the same)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    PROTOCOL_ERROR = 1002  # framing violation (sent as wsproto reports it)
    INVALID_PAYLOAD = 1007  # text message that is not UTF-8 (likewise)
    POLICY_VIOLATION = 1008  # keepalive pong overdue
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # the connect hook could not answer; retry with backoff
    UNAUTHORIZED = 4001
    SESSION_EXPIRED = 4002
    SLOW_CONSUMER = 4008
    # The same code: both mean "this client sends or reads at a pace the server refuses";
    # the reason text tells them apart.
    RATE_LIMITED = 4008


@attrs.frozen
class CloseReason:
    code: int
    reason: str


SHUTTING_DOWN = CloseReason(CloseCode.GOING_AWAY, "Server shutting down")
UNAUTHORIZED = CloseReason(CloseCode.UNAUTHORIZED, "Unauthorized")
SESSION_EXPIRED = CloseReason(CloseCode.SESSION_EXPIRED, "Session expired")
SLOW_CONSUMER = CloseReason(CloseCode.SLOW_CONSUMER, "Slow consumer")
RATE_LIMITED = CloseReason(CloseCode.RATE_LIMITED, "Rate limited")
PONG_TIMEOUT = CloseReason(CloseCode.POLICY_VIOLATION, "Pong timeout")
INTERNAL_ERROR = CloseReason(CloseCode.INTERNAL_ERROR, "Internal error")
TRY_AGAIN_LATER = CloseReason(CloseCode.TRY_AGAIN_LATER, "Try again later")
# A connection bound to a session (connect hook `subscriptions`) when that session is deleted.
SESSION_DELETED = CloseReason(CloseCode.NORMAL, "Session deleted")


# The reasons of the closes wsproto decides: fixed texts, because the description wsproto gives
# for invalid UTF-8 carries Python's own UnicodeDecodeError text.
_FRAMING_REASONS: dict[int, str] = {
    CloseCode.PROTOCOL_ERROR: "Protocol error",
    CloseCode.INVALID_PAYLOAD: "Invalid UTF-8 in a text message",
}


def framing_failure(code: int) -> CloseReason:
    """The close for a frame-level violation wsproto found (1002, 1007)."""
    return CloseReason(code, _FRAMING_REASONS.get(code, "Protocol error"))


def message_too_big(limit: int) -> CloseReason:
    """The 1009 close for a client message over `limit` bytes (trio-websocket's wording)."""
    return CloseReason(CloseCode.MESSAGE_TOO_BIG, f"Exceeded maximum message size: {limit} bytes")


def too_many_fragments(limit: int) -> CloseReason:
    """The 1009 close for a message sent in more than `limit` frames."""
    return CloseReason(CloseCode.MESSAGE_TOO_BIG, f"Exceeded maximum fragments: {limit} frames")


# Error reply codes: machine-readable reasons on `{"type":"error"}` replies.
FORBIDDEN = "forbidden"
UNAVAILABLE = "unavailable"
# A publish sent to the broker and not confirmed: it may have been published.
OUTCOME_UNKNOWN = "outcome_unknown"
UNAUTHORIZED_CODE = "unauthorized"
RATE_LIMITED_CODE = "rate_limited"
# A cap on what a client may hold (subscriptions, patterns, pattern shapes) is reached; the
# connection stays open.
TOO_MANY = "too_many"


class ProtocolError(Exception):
    """A client message that cannot be acted on; `message` is the text of the error reply.

    The connection stays open: the client gets `{"type":"error","message":...}`.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: A machine-readable reason ("forbidden", "too_many"), sent as `code` when set.
        self.code = code
