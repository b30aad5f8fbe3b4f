"""The subscription index and the non-blocking fan-out.

Owns: which clients exist, what each is subscribed to, and delivery into each client's
bounded outbox. Must not: await, or decide how a close is carried out (connection.py does
that when a Client asks to close). It reaches a socket only through `Outbox.flush`, whose
direct write never waits.

Delivery policy (see python-trio/trio#987 on why nothing here is unbounded): a message is
serialised and framed once by the publisher and the same `bytes` frame is put into each
matching client's bounded outbox without waiting. `WouldBlock` means the client is not
keeping up: it is asked to close with 4008 and skipped from then on, so a slow consumer costs
the others nothing. `ClosedResourceError` means its connection is already going away.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs
import trio

from .outbox import Outbox
from .protocol.errors import SLOW_CONSUMER, CloseReason


@attrs.define(eq=False)
class Client:
    """One authenticated connection as the hub sees it."""

    id: str
    outbox: Outbox
    connected_at: float
    last_pong: float
    subscriptions: set[str] = attrs.field(factory=set)
    # Subscribe acks waiting for the broker to confirm their key (connection.dispatch); None
    # rather than an empty set, which every idle connection would carry.
    pending_acks: set[str] | None = None
    # Set once, by the first close request.
    close_reason: CloseReason | None = None
    flush_before_close: bool = False
    # The connection reads inside this scope; a close request cancels it.
    reader_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    def send(self, frame: bytes) -> bool:
        """Queue one frame without waiting; False if the client is closing or just closed."""
        staged = self.stage(frame)
        if staged is None:
            return False
        self.outbox.flush()
        return True

    def stage(self, frame: bytes) -> bool | None:
        """Queue one frame for a later `outbox.flush()`; None if it was not queued.

        Returns True when the outbox was empty (this client needs the flush), False when the
        frame joined frames already waiting, None when the client is closing, just closed,
        or was just found too slow (and asked to close).
        """
        if self.close_reason is not None:
            return None
        try:
            return self.outbox.stage(frame)
        except trio.WouldBlock:
            self.close(SLOW_CONSUMER)
            return None
        except trio.ClosedResourceError:
            return None

    def close(self, reason: CloseReason, *, flush: bool = False) -> None:
        """Ask the connection to close; the first reason wins. Never blocks.

        Reading stops at once and nothing more is queued; the writer ends after the frames
        already queued (with `flush`) or after the one it is writing (without).
        """
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self.flush_before_close = flush
        self.outbox.close()
        self.reader_scope.cancel()


def _ignore(key: str) -> None:
    pass


class Hub:
    """Clients by id and an index from subscription key to subscribed clients.

    `on_first(key)` runs when a key gets its first subscriber and `on_last(key)` when its last
    one leaves: that is how the broker learns which keys this instance needs (broker/).
    """

    def __init__(
        self,
        on_first: Callable[[str], None] = _ignore,
        on_last: Callable[[str], None] = _ignore,
    ) -> None:
        self.clients: dict[str, Client] = {}
        self._index: dict[str, set[Client]] = {}
        self._on_first = on_first
        self._on_last = on_last

    def __len__(self) -> int:
        return len(self.clients)

    def add(self, client: Client) -> None:
        self.clients[client.id] = client

    def remove(self, client: Client) -> None:
        """Forget the client and every subscription it held. Idempotent."""
        self.unsubscribe_all(client)
        self.clients.pop(client.id, None)

    def subscribe(self, client: Client, key: str) -> None:
        client.subscriptions.add(key)
        members = self._index.get(key)
        if members is None:
            members = self._index[key] = set()
            self._on_first(key)
        members.add(client)

    def unsubscribe(self, client: Client, key: str) -> None:
        client.subscriptions.discard(key)
        members = self._index.get(key)
        if members is not None:
            members.discard(client)
            if not members:
                del self._index[key]
                self._on_last(key)

    def unsubscribe_all(self, client: Client) -> None:
        for key in list(client.subscriptions):
            self.unsubscribe(client, key)

    def subscription_count(self) -> int:
        """Distinct keys with at least one subscriber (0 once everyone has left)."""
        return len(self._index)

    def publish_many(self, items: Iterable[tuple[bytes, Iterable[str]]]) -> int:
        """Queue each frame, in order, once for every client subscribed to any of its keys.

        Returns how many deliveries were queued. Never blocks; see the module docstring.
        Every frame is queued first, then each touched outbox is flushed: one write per
        client for the whole round, made at once when its writer is idle (outbox.py).
        """
        touched: list[Client] = []
        delivered = 0
        for frame, keys in items:
            groups = [members for key in keys if (members := self._index.get(key))]
            if not groups:
                continue
            # A client matching several keys (all + workspace + session) gets one copy.
            recipients = groups[0] if len(groups) == 1 else set().union(*groups)
            # Iterate a snapshot: a failed send may close a client, which must not resize the
            # set under our feet even though removal happens later in its connection task.
            for client in tuple(recipients):
                staged = client.stage(frame)
                if staged is not None:
                    delivered += 1
                    if staged:
                        touched.append(client)
        for client in touched:
            client.outbox.flush()
        return delivered
