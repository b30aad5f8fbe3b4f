"""The broker seam: how publications get from any instance to every instance's hub.

Owns the `Broker` interface and its errors. The hub never sees which broker it has: it calls
`want`/`unwant` when a key gains its first or loses its last local subscriber, and the broker
calls back `deliver` with the publications this instance's clients may match.

Two implementations: `memory.MemoryBroker` (one process, the default) and
`redis.RedisBroker` (instances share Redis pub/sub).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from ..fanout.publication import Assigned, Delivery, OffsetFrame, Position, Publication
from ..protocol.messages import Since

#: Hands publications, in order, to the local hub (Hub.deliver); awaiting it is the
#: backpressure that keeps a broker from getting ahead of the clients' sockets.
Deliver = Callable[[Sequence[Delivery]], Awaitable[None]]


class BrokerUnavailable(Exception):
    """The broker cannot take publications right now (Redis unreachable); nothing was sent."""


class PublishOutcomeUnknown(BrokerUnavailable):
    """A publish was sent but not confirmed (Redis hung or dropped the connection after the
    request went out): it may or may not have been published. Retry it with the same
    idempotency keys, which makes the retry safe.

    A BrokerUnavailable, so that callers that only know "not confirmed" still handle it.
    """


class Broker(Protocol):
    #: "memory" or "redis", as /api/health reports it.
    kind: str
    #: Times the connection to the broker came back after being lost (the metrics).
    reconnects: int

    @property
    def ok(self) -> bool:
        """Publications would reach every instance right now."""
        ...

    def want(self, key: str) -> None:
        """`key` got its first local subscriber: this instance must now receive it."""
        ...

    def unwant(self, key: str) -> None:
        """`key` lost its last local subscriber: this instance may stop receiving it."""
        ...

    def when_live(self, key: str, callback: Callable[[], None]) -> None:
        """Call `callback` once publications for the wanted `key` reach this instance.

        At once when they already do, or when the broker is down (the key goes live when it is
        back; /api/health says it is not yet). Otherwise later, but always before the first
        publication for `key` is delivered. Never raises.
        """
        ...

    async def publish(self, publications: Sequence[Publication]) -> list[Assigned]:
        """Assign offsets and send publications, in order, to every instance; all or nothing.

        A publication whose idempotency key was published within `idempotency_ttl` is not
        sent again: its entry says duplicate, with the first one's offsets.

        Returns:
            Each publication's offsets, aligned with its keys.
        Raises:
            PublishOutcomeUnknown: sent, but not confirmed; they may have been published.
            BrokerUnavailable: none of them was sent.
        """
        ...

    async def fetch(self, key: str, since: Since | None, *, state: bool) -> Position:
        """`key`'s epoch and latest offset; with `since` (offset, epoch), also what came after
        it, or `recovered=False` when history cannot say; with `state`, the retained state.

        Raises:
            BrokerUnavailable: the broker cannot answer now.
        """
        ...

    async def state(self, key: str) -> str | None:
        """The retained state message of `key` (session.state), if any.

        Raises:
            BrokerUnavailable: the broker cannot answer now.
        """
        ...

    async def run(
        self, deliver: Deliver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The broker's background work; reports started once publications can flow.

        Raises:
            BrokerUnavailable: could not connect at startup (and not told to wait).
        """
        ...


def history_window(
    since: Since,
    epoch: str,
    offset: int,
    entries: Sequence[tuple[int, float, bytes]],
    horizon: float,
) -> tuple[OffsetFrame, ...] | None:
    """What a client that got everything up to `since` missed, or None if history cannot say.

    `entries` are a key's retained (offset, publish time, frame), oldest first and contiguous;
    entries published before `horizon` have expired. None when the epoch changed, the offset
    is ahead of the key (a different history), or a missed message is gone or expired.
    """
    if since.epoch != epoch or since.offset > offset:
        return None
    missed = [(n, at, frame) for n, at, frame in entries if n > since.offset]
    if len(missed) != offset - since.offset:
        return None
    if missed and missed[0][1] < horizon:
        return None
    return tuple(OffsetFrame(n, frame) for n, _, frame in missed)
