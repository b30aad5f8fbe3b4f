"""Inbound rate limits of one connection: a token bucket over every frame it sends, and a
second one over its publishes and command calls.

Theory of operation
-------------------
Each bucket is a GCRA ("generic cell rate algorithm"), the one-number form of a token
bucket: it keeps only the theoretical arrival time `tat` of the next frame at the sustained
rate. A frame at `now` is admitted while `tat - now` is within `(burst - 1) / rate`, and each
admitted frame pushes `tat` on by `1 / rate`. So `burst` frames pass in one instant, the next
one is refused, and one more passes every `1 / rate` seconds after that. One float per bucket,
no task and no timer: an idle connection's limits cost a few dozen bytes.

- Frames (`client_rate`, `client_burst`): every frame the peer sends, control frames
  included, is shown to the bucket by the WebSocket layer before it is acted on
  (transport/websocket.py's `gate`; `Client.admit` once the client is registered, the
  bucket itself during the identify handshake). Over the budget, the reader gets
  `FrameRefused`: the client is sent an error reply (code `rate_limited`) and closed 4008
  `Rate limited` (session/io.py, session/connection.py). Nothing more of what it sent is
  read, so a flood costs the server the frames of one burst.
- Publishes and commands (`client_publish_rate`, `client_publish_burst`): a middleware in
  the registry's chain. Over the budget the message is refused (the error reply, or the
  command error event, with code `rate_limited`); the connection stays.

A rate of 0 turns a bucket off. Echo peers (diagnostics) get no frame bucket: a conformance
run sends thousands of frames a second. Must not: close connections itself, or know any
message beyond the two it meters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ..protocol.commands import Command, error_answer_frame
from ..protocol.errors import RATE_LIMITED_CODE, ProtocolError
from ..protocol.messages import Publish
from ..protocol.replies import error_frame

if TYPE_CHECKING:
    from ..fanout.hub import Client
    from ..runtime.config import Config
    from .context import GatewayContext
    from .registry import Message, Next

# Seconds of slack when comparing virtual or monotonic times that went through float sums:
# without it, a frame exactly 1 / rate after a refusal could be refused by a rounding error.
_SLACK = 1e-9
# The key of a connection's publish bucket in `Client.state`.
_PUBLISH_BUCKET = "ratelimit.publish"


class TokenBucket:
    """`rate` frames a second sustained, `burst` at once (GCRA; see the module docstring)."""

    __slots__ = ("_interval", "_tat", "_tolerance")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval + _SLACK
        self._tat = now

    def admit(self, now: float) -> bool:
        """Take one token at `now`; False when the bucket is empty (nothing is taken)."""
        tat = self._tat if self._tat > now else now
        if tat - now > self._tolerance:
            return False
        self._tat = tat + self._interval
        return True


def frame_bucket(config: Config, now: float) -> TokenBucket | None:
    """A new connection's frame bucket; None when `client_rate` is 0 (no limit)."""
    if not config.client_rate:
        return None
    return TokenBucket(config.client_rate, config.client_burst, now)


def frames_refused_frame(config: Config) -> bytes:
    """The error reply a client gets before it is closed 4008 for sending too fast."""
    return error_frame(
        f"Rate limited: more than {config.client_rate:g} frames a second "
        f"(bursts of {config.client_burst})",
        RATE_LIMITED_CODE,
    )


async def limit_publishes(
    client: Client, context: GatewayContext, message: Message, call_next: Next
) -> None:
    """Middleware: a publish or command call over the connection's budget is refused."""
    config = context.config
    if isinstance(message, Publish | Command) and config.client_publish_rate:
        now = trio.current_time()
        if not _publish_bucket(client, config, now).admit(now):
            context.metrics.rate_limited["publish"] += 1
            text = (
                f"Rate limited: more than {config.client_publish_rate:g} publishes and "
                f"commands a second (bursts of {config.client_publish_burst})"
            )
            if isinstance(message, Command):
                client.send(error_answer_frame(message.name, text, RATE_LIMITED_CODE, message.id))
                return
            raise ProtocolError(text, RATE_LIMITED_CODE)
    await call_next(client, context, message)


def _publish_bucket(client: Client, config: Config, now: float) -> TokenBucket:
    bucket = client.state.get(_PUBLISH_BUCKET)
    if bucket is None:
        bucket = client.state[_PUBLISH_BUCKET] = TokenBucket(
            config.client_publish_rate, config.client_publish_burst, now
        )
    assert isinstance(bucket, TokenBucket)
    return bucket
