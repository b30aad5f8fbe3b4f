"""The client library's errors, and how a lone failure leaves a nursery bare.

Must not: import the rest of the client (every other module may import this one).
"""

from __future__ import annotations

from collections.abc import (
    Iterator,
)
from contextlib import contextmanager
from typing import NoReturn

import attrs
import trio_websocket


class ClientError(Exception):
    """Base class of every error this module raises on purpose."""


class Unauthorized(ClientError):
    """The gateway rejected the token: WebSocket close 4001, or HTTP 401."""


class ConnectFailed(ClientError):
    """The gateway could not be reached, or it ended the first connection before `ready`."""


class Disconnected(ClientError):
    """The client is no longer connected and will not reconnect.

    Raised by `subscribe`/`unsubscribe` after the connection ended with `reconnect=False`, or
    after the client was closed. `code` is the WebSocket close code, None when the connection
    ended without one (network failure, timeout).
    """

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"{code} {reason}" if code is not None else reason)
        self.code = code
        self.reason = reason


class SubscriptionError(ClientError):
    """The server answered a subscribe or unsubscribe with an `error` message."""


@attrs.frozen
class _Closed:
    """How one connection attempt ended: close code (None without a close frame) and why."""

    code: int | None
    reason: str

    def __str__(self) -> str:
        return f"code {self.code} {self.reason!r}" if self.code is not None else self.reason


def _closed_by(exc: trio_websocket.ConnectionClosed) -> _Closed:
    if exc.reason is None:
        return _Closed(None, "connection closed")
    return _Closed(exc.reason.code, exc.reason.reason or exc.reason.name)


@contextmanager
def _unwrap_single() -> Iterator[None]:
    """Let a lone exception out of a nursery bare instead of in a one-member group.

    Our nurseries are an implementation detail: a caller should catch `Unauthorized`, not
    `except* Unauthorized`. Groups of several exceptions pass through untouched.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        failure = group.exceptions[0]
    else:
        return
    _reraise(failure)


def _reraise(exc: BaseException) -> NoReturn:
    """Raise `exc` keeping its own `__context__` (not the group it was unwrapped from)."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context
