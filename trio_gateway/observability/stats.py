"""This instance's statistics as one JSON object (`GET /api/stats`, the nodes' heartbeats).

Owns what the statistics say and the rates: a sampler task keeps the message totals every
`SAMPLE_INTERVAL` seconds for the last `RATE_WINDOW` seconds, and a rate is the change from
the oldest sample in that window to now. Reads `Metrics` and the hub; counts nothing itself.
Must not: do I/O (nodes.py shares the snapshots between instances).
"""

from __future__ import annotations

import heapq
import os
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

import trio

from .metrics import SLOW_CONSUMER_CODE

if TYPE_CHECKING:
    from ..broker import Broker
    from ..fanout.hub import Hub
    from .metrics import Metrics

#: Seconds between two samples of the totals the rates come from.
SAMPLE_INTERVAL = 5.0
#: Seconds the rates look back ("over the last minute").
RATE_WINDOW = 60.0
#: Keys listed by subscribers by default, and at most (`?top=N`).
TOP_KEYS, MAX_TOP_KEYS = 10, 100
# Keys every connection holds for its user and session without subscribing: listing them as
# "top keys" would only show the busiest user.
_PERSONAL_PREFIXES = ("user:", "login:")


class _Sample(NamedTuple):
    at: float
    received: int
    delivered: int
    published: int


class Stats:
    """The statistics of one running gateway."""

    def __init__(
        self, metrics: Metrics, hub: Hub, broker: Broker, *, version: str, started_at: float
    ) -> None:
        self._metrics = metrics
        self._hub = hub
        self._broker = broker
        self._version = version
        self._started_at = started_at
        self._started_wall = time.time()
        self._samples: deque[_Sample] = deque()
        #: Set once graceful shutdown begins (the server does): /api/ready answers 503.
        self.draining = False

    def _sample(self) -> _Sample:
        metrics, hub = self._metrics, self._hub
        return _Sample(
            trio.current_time(),
            sum(metrics.received.values()),
            hub.deliveries,
            sum(metrics.published.values()),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the samples the rates need, until cancelled."""
        samples = self._samples
        task_status.started()
        while True:
            samples.append(self._sample())
            while samples and samples[0].at < samples[-1].at - RATE_WINDOW:
                samples.popleft()
            await trio.sleep(SAMPLE_INTERVAL)

    def rates(self) -> dict[str, float]:
        """Per second, from the oldest sample within the window (or the start) to now."""
        now = self._sample()
        oldest = self._samples[0] if self._samples else now
        span = now.at - oldest.at
        if span <= 0:
            return {"window": 0.0, "messages_in": 0.0, "messages_out": 0.0, "publications": 0.0}
        return {
            "window": round(span, 3),
            "messages_in": round((now.received - oldest.received) / span, 3),
            "messages_out": round((now.delivered - oldest.delivered) / span, 3),
            "publications": round((now.published - oldest.published) / span, 3),
        }

    def top_keys(self, count: int) -> list[dict[str, Any]]:
        """The `count` keys with the most subscribers here, most first."""
        sizes = (
            (len(members), key)
            for key, members in self._hub.key_members()
            if not key.startswith(_PERSONAL_PREFIXES)
        )
        return [{"key": key, "subscribers": size} for size, key in heapq.nlargest(count, sizes)]

    def snapshot(self, top: int = TOP_KEYS) -> dict[str, Any]:
        """Everything `GET /api/stats` says of this instance."""
        metrics, hub, broker = self._metrics, self._hub, self._broker
        clients = hub.clients.values()
        return {
            "instance": metrics.instance,
            "version": self._version,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": round(self._started_wall, 3),
            "uptime": round(trio.current_time() - self._started_at, 3),
            "draining": self.draining,
            "broker": {"kind": broker.kind, "ok": broker.ok, "reconnects": broker.reconnects},
            "connections": len(hub),
            "users": len({c.identity.user_id for c in clients if c.identity.user_id is not None}),
            "subscriptions": {
                "keys": hub.subscription_count(),
                "total": sum(len(client.subscriptions) for client in clients),
                "patterns": len(hub.patterns),
                "pattern_shapes": hub.patterns.shape_count(),
            },
            "top_keys": self.top_keys(top),
            "rates": self.rates(),
            "totals": {
                "connects": metrics.connects,
                "messages_in": sum(metrics.received.values()),
                "deliveries": hub.deliveries,
                "publications": sum(metrics.published.values()),
                "bytes_written": metrics.bytes_written(),
            },
            "drops": {
                "slow_consumer": metrics.disconnects[SLOW_CONSUMER_CODE],
                "not_queued": hub.recipients - hub.deliveries,
            },
        }
