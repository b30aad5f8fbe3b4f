"""What one gateway counts, and its Prometheus exposition (through prometheus-client).

Owns `Metrics`: plain counters that the boundaries bump once per event (a connect, a close, a
refused handshake, a message read, a batch the broker took, a command call, a resume), the
two latency histograms, and the collector that reads the live state at scrape time
(connections, subscriptions, presence members, broker state, the hub's delivery totals,
bytes written) and turns everything into metric families of the gateway's own registry. The
fan-out keeps its totals itself (hub.py, per publication; outbox.py and websocket.py, per
write); nothing here runs per recipient.

Must not: decide what is logged, touch a socket, or be imported by the fan-out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..protocol.messages import Error

if TYPE_CHECKING:
    from ..broker import Broker
    from ..fanout.hub import Client, Hub
    from ..presence.service import Presence
    from ..session.context import GatewayContext
    from ..session.registry import Message, Next

PREFIX = "trio_gateway_"
#: Publication sources (`trio_gateway_publications_total{source}`).
HTTP, INPROCESS, CLIENT, BROKER = "http", "inprocess", "client", "broker"
#: The type counted for a client message that did not decode.
INVALID = "invalid"
#: Close code of a slow consumer (protocol/errors.py SLOW_CONSUMER).
SLOW_CONSUMER_CODE = 4008
# Seconds; from well under a loopback write up to a stalled flusher.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_COMMAND_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The counters of one gateway; `bind` gives it the live state it reads at scrape."""

    def __init__(self, instance: str, version: str) -> None:
        self.instance = instance
        self.version = version
        self.connects = 0
        #: Registered clients gone, by close code.
        self.disconnects: Counter[int] = Counter()
        #: Upgrades answered with an error status, and accepted WebSockets closed before
        #: registering (4001, 1013), by reason.
        self.refused: Counter[str] = Counter()
        #: Client messages read, by type (`invalid` for what did not decode).
        self.received: Counter[str] = Counter()
        #: Publications the broker took here, by source; `broker`: what the broker brought
        #: to this instance's hub (every instance's, this one's included).
        self.published: Counter[str] = Counter()
        #: Command calls, by outcome (`ok` or the error code answered).
        self.commands: Counter[str] = Counter()
        self.history_fetches = 0
        #: Resumes (subscribe with `since`), by whether every missed message was sent.
        self.recoveries: Counter[bool] = Counter()
        #: Bytes written by connections that have ended (live ones are read at scrape).
        self.closed_bytes = 0
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.publish_latency = Histogram(
            PREFIX + "publish_write_seconds",
            "Seconds from a broker round reaching this instance's hub until every client it "
            "gave frames to was handed them (written, or woken to write)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.command_latency = Histogram(
            PREFIX + "command_duration_seconds",
            "Seconds from a command call's start to its answer",
            buckets=_COMMAND_BUCKETS,
            registry=self.registry,
        )
        self._hub: Hub | None = None
        self._broker: Broker | None = None
        self._presence: Presence | None = None

    def bind(self, hub: Hub, broker: Broker, presence: Presence | None) -> None:
        """Read these at scrape time; registers the collector of this gateway's families."""
        self._hub, self._broker, self._presence = hub, broker, presence
        self.registry.register(_Collector(self))

    def disconnected(self, client: Client) -> None:
        """A lifecycle disconnect hook: count the close and keep the bytes it wrote."""
        if client.close_reason is not None:
            self.disconnects[client.close_reason.code] += 1
        self.closed_bytes += _bytes_written(client)

    def connected(self, client: Client) -> None:
        """A lifecycle connect hook."""
        self.connects += 1

    async def count_message(
        self, client: Client, context: GatewayContext, message: Message, call_next: Next
    ) -> None:
        """Middleware: every client message, by type, before its handler runs."""
        self.received[INVALID if isinstance(message, Error) else message.TAG] += 1
        await call_next(client, context, message)

    def command_called(self, outcome: str, seconds: float | None) -> None:
        """The command runner's observer."""
        self.commands[outcome] += 1
        if seconds is not None:
            self.command_latency.observe(seconds)

    def fetched(self, resumed: bool | None) -> None:
        """A subscribe asked the broker where its key stands; `resumed`: whether a resume
        (`since`) got everything it missed, None when it was no resume."""
        self.history_fetches += 1
        if resumed is not None:
            self.recoveries[resumed] += 1

    def bytes_written(self) -> int:
        """Bytes written to WebSocket clients so far, ended connections included."""
        hub = self._hub
        live = sum(map(_bytes_written, hub.clients.values())) if hub is not None else 0
        return self.closed_bytes + live

    def exposition(self) -> tuple[bytes, str]:
        """The registry in the text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _bytes_written(client: Client) -> int:
    return client.outbox.written


class _Collector:
    """Turns `Metrics` and the live state into families, once per scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        hub, broker, presence = metrics._hub, metrics._broker, metrics._presence
        assert hub is not None
        assert broker is not None
        info = GaugeMetricFamily(
            PREFIX + "info", "This instance: its id and version", labels=["instance", "version"]
        )
        info.add_metric([metrics.instance, metrics.version], 1)
        yield info
        connections = GaugeMetricFamily(
            PREFIX + "connections",
            "Authenticated clients connected now, by transport",
            labels=["transport"],
        )
        connections.add_metric(["websocket"], len(hub))
        yield connections
        yield _counter("connects", "Clients registered (authenticated)", metrics.connects)
        yield _labelled(
            "disconnects",
            "Registered clients gone, by close code",
            "code",
            {str(code): count for code, count in metrics.disconnects.items()},
        )
        yield _counter(
            "slow_consumer_closes",
            "Clients closed 4008 because their queue overflowed",
            metrics.disconnects[SLOW_CONSUMER_CODE],
        )
        yield _labelled(
            "handshakes_refused",
            "WebSocket upgrades refused, and accepted ones closed before registering, by reason",
            "reason",
            metrics.refused,
        )
        yield _gauge(
            "subscription_keys",
            "Distinct keys with a subscriber here (each user's own key included)",
            hub.subscription_count(),
        )
        yield _gauge(
            "subscriptions",
            "Subscriptions clients hold (one per client and key)",
            sum(len(client.subscriptions) for client in hub.clients.values()),
        )
        yield _gauge(
            "patterns", "Distinct wildcard patterns with a subscriber here", len(hub.patterns)
        )
        yield _gauge(
            "pattern_shapes",
            "Distinct pattern shapes held here: a topic publication costs one lookup per shape",
            hub.patterns.shape_count(),
        )
        yield _labelled(
            "messages_received",
            "Client messages read, by type ('invalid': not a valid message)",
            "type",
            metrics.received,
        )
        yield _labelled(
            "publications",
            "Publications taken by the broker here, by source; 'broker': publications the "
            "broker brought to this instance (every instance's)",
            "source",
            {**metrics.published, BROKER: hub.brought},
        )
        yield _counter("deliveries", "Frames queued for clients by the fan-out", hub.deliveries)
        yield _counter(
            "deliveries_dropped",
            "Frames not queued because the client was closing or too slow",
            hub.recipients - hub.deliveries,
        )
        yield _counter(
            "bytes_written", "Bytes written to WebSocket clients", metrics.bytes_written()
        )
        yield _gauge("broker_up", f"1 while the {broker.kind} broker is reachable", int(broker.ok))
        yield _counter(
            "broker_reconnects", "Times the broker connection came back", broker.reconnects
        )
        yield _labelled(
            "command_calls",
            "Command calls, by outcome (ok, or the error code)",
            "outcome",
            metrics.commands,
        )
        members = presence.tracker.local_members if presence is not None else 0
        yield _gauge(
            "presence_members", "(topic, user) pairs present through this instance", members
        )
        yield _counter(
            "history_fetches",
            "Subscribes that asked the broker for a key's position or history",
            metrics.history_fetches,
        )
        yield _labelled(
            "recoveries",
            "Resumes (subscribe with since), by whether every missed message was sent",
            "recovered",
            {str(recovered).lower(): count for recovered, count in metrics.recoveries.items()},
        )


def _counter(name: str, help: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, help, value=value)


def _gauge(name: str, help: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help, value=value)


def _labelled(
    name: str, help: str, label: str, values: Counter[str] | dict[str, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, help, labels=[label])
    for value, count in sorted(values.items()):
        family.add_metric([value], count)
    return family
