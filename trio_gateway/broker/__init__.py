"""The broker seam: how publications get from any instance to every instance's hub.

Owns the `Broker` interface and its errors. The hub never sees which broker it has: it calls
`want`/`unwant` when a key gains its first or loses its last local subscriber, and the broker
calls back `deliver` with the publications this instance's clients may match.

Two implementations: `memory.MemoryBroker` (one process, the default) and
`redis.RedisBroker` (instances share Redis pub/sub).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import trio

from ..publication import Publication

#: Hands (frame, keys) pairs, in order, to the local hub (Hub.publish_many).
Deliver = Callable[[Iterable[tuple[bytes, Iterable[str]]]], object]


class BrokerUnavailable(Exception):
    """The broker cannot take publications right now (Redis unreachable); nothing was sent."""


class Broker(Protocol):
    #: "memory" or "redis", as /api/health reports it.
    kind: str

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

    async def publish(self, publications: Sequence[Publication]) -> None:
        """Send publications, in order, to every instance; all or nothing.

        Raises:
            BrokerUnavailable: none of them was sent.
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
