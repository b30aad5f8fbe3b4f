"""The supervisor: `serve()` starts every task in order and runs the shutdown sequence.

Task tree (every task started with `nursery.start`, so "started" is observable):

    serve                 supervisor nursery
    ├── flusher.run       writes what fan-outs queued, a slice of clients at a time
    ├── readiness.run     wakes the WebSocket readers whose sockets have input
    ├── broker.run        memory: history expiry; Redis: subscriber connection -> hub.deliver
    ├── run_publisher     publish channel -> broker (offsets, history; memory: hub.deliver)
    ├── run_keepalive     ping / reap
    ├── presence.run      presence writes, diffs, graces, typing lapses; the store's own work
    └── connection nursery
        ├── run_listeners accept loop(s) -> handle_stream in the connection nursery
        ├── handle_stream one per accepted stream (HTTP, or a WebSocket's handshake)
        └── _run_session  one per registered WebSocket client (the handshake's task ends),
                          and its session's tasks (session/tasks.py): a writer while
                          frames wait, command calls (Client.tasks)

The backend client (backend/http.py: the command proxy and the connect hook) lives as long
as `serve` and is closed after every task has ended.

Graceful shutdown (`Gateway.shutdown()`, also what SIGTERM does), in hypercorn's order:
stop accepting; refuse new publications and let the publisher hand what is queued to the
broker; close idle HTTP keep-alive connections; ask every client to close with 1001 after
flushing its queue, in jittered batches over `drain_window` when there are many
(session/drain.py); give the connection nursery `drain_timeout` to finish, then cancel
what is left; with Redis, shorten this instance's presence lease to `presence_grace`.
Cancelling `serve` from outside skips the draining but still sends every client 1001.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from .._version import __version__
from ..api.app import HttpApp
from ..backend.commands import command_proxy
from ..backend.connect import ConnectHook
from ..backend.http import Backend
from ..broker import Broker, BrokerUnavailable
from ..broker.memory import MemoryBroker
from ..broker.redis import RedisBroker
from ..commands.registry import Commands
from ..commands.runner import CommandRunner
from ..commands.runner import install as install_commands
from ..fanout.broadcaster import Batch, Broadcaster, run_publisher
from ..fanout.flusher import Flusher
from ..fanout.hub import Hub
from ..observability.jsonlog import fields, instance_field
from ..observability.metrics import CLIENT, HTTP, Metrics
from ..observability.nodes import LocalNodes, Nodes, RedisNodes
from ..observability.stats import Stats
from ..presence.handlers import install as install_presence
from ..presence.redis_store import RedisStore
from ..presence.service import Presence
from ..presence.store import MemoryStore, PresenceStore
from ..session.auth import Authenticator, KeyFileError, verifier_key
from ..session.context import GatewayContext
from ..session.drain import drain
from ..session.handlers import core_handlers
from ..session.keepalive import run_keepalive
from ..session.lifecycle import Lifecycle
from ..session.ratelimit import limit_publishes
from ..session.registry import Registry
from ..transport.http import OUT_OF_DESCRIPTORS_RESPONSE, handle_stream
from ..transport.limits import ConnectionLimits
from ..transport.listener import open_listeners, run_listeners
from .config import Config, ConfigError
from .ids import IdFactory, new_client_id

log = logging.getLogger("trio_gateway.server")


@attrs.define(eq=False)
class Gateway:
    """A running gateway, as reported by `serve` through `task_status`."""

    config: Config
    broadcaster: Broadcaster
    hub: Hub
    broker: Broker
    #: This instance's id (a ULID): in /api/health, every log line, and Redis message ids.
    instance: str
    #: (host, port) of each TCP listener; empty when serving caller-supplied listeners.
    addresses: list[tuple[str, int]]
    #: Client message handlers and their middleware chain (session/registry.py).
    handlers: Registry
    #: Connect / disconnect hooks of every client (session/lifecycle.py).
    lifecycle: Lifecycle
    #: The commands clients may call, answered in-process (commands/registry.py); those
    #: without a handler go to `command_url` when it is set.
    commands: Commands
    #: The counters and their Prometheus registry (`metrics.registry`), as /metrics shows.
    metrics: Metrics
    _stop: trio.Event = attrs.field(factory=trio.Event, alias="_stop")

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    def client_count(self) -> int:
        """Authenticated WebSocket clients connected right now."""
        return len(self.hub)

    def shutdown(self) -> None:
        """Begin a graceful shutdown; `serve` returns once it has finished."""
        self._stop.set()


def _round_size(config: Config) -> int:
    # Writers run between rounds, at worst one round late: two rounds must fit in a client's
    # queue, or a burst alone would make a fast client look slow.
    return max(1, config.queue_depth // 4)


def _addresses(listeners: Sequence[trio.abc.Listener[trio.abc.Stream]]) -> list[tuple[str, int]]:
    addresses = []
    for listener in listeners:
        if isinstance(listener, trio.SocketListener):
            host, port, *_ = listener.socket.getsockname()
            addresses.append((host, port))
    return addresses


async def serve(
    config: Config,
    *,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] | None = None,
    new_id: IdFactory = new_client_id,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until `Gateway.shutdown()` completes or the caller cancels.

    Args:
        config: validated settings.
        listeners: where to accept streams; defaults to TCP on `config.host`/`config.port`
            (port 0 picks a free port, reported in `Gateway.addresses`).
        new_id: client id factory (ULIDs by default).

    Returns:
        After shutdown, with no task left running.

    Raises:
        OSError: the TCP listener could not be bound.
        BrokerUnavailable: Redis was unreachable at startup (and `redis_wait` is off).
        ConfigError: the JWT public key file cannot be read or used.
    """
    instance = new_client_id()
    instance_field.set(instance)
    authenticator = load_authenticator(config)
    if listeners is None:
        listeners = await open_listeners(config.host, config.port, reuse_port=config.reuse_port)
    broker = _broker(config, instance)
    metrics = Metrics(instance, __version__)
    flusher = Flusher(
        max_ahead=max(1, config.queue_depth // 2), on_written=metrics.publish_latency.observe
    )
    hub = Hub(flusher, on_first=broker.want, on_last=broker.unwant)
    if isinstance(broker, RedisBroker):
        broker.gaps = hub.gap
    publish_send, publish_receive = trio.open_memory_channel[Batch](config.publish_queue_depth)
    broadcaster = Broadcaster(publish_send, broker)
    backend = Backend(f"trio-gateway/{__version__}")
    commands = _commands(config, backend)
    handlers = core_handlers()
    # Outermost, so every message is counted, whatever a later middleware decides.
    handlers.use(metrics.count_message)
    handlers.use(limit_publishes)
    runner = CommandRunner(
        commands,
        timeout=config.command_timeout,
        max_inflight=config.max_inflight_commands,
        on_call=metrics.command_called,
    )
    lifecycle = Lifecycle()
    lifecycle.on_connect(metrics.connected)
    lifecycle.on_disconnect(metrics.disconnected)
    install_commands(handlers, lifecycle, runner)
    presence = Presence(config, hub, _presence_store(config, broker, instance))
    install_presence(handlers, lifecycle, presence)
    metrics.bind(hub, broker, presence)
    context = GatewayContext(
        config=config,
        hub=hub,
        new_id=new_id,
        broker=broker,
        auth=authenticator,
        broadcaster=broadcaster.tagged(CLIENT),
        handlers=handlers,
        metrics=metrics,
        lifecycle=lifecycle,
        connect_hook=(
            ConnectHook(backend, config.connect_url, config.connect_timeout)
            if config.connect_url is not None
            else None
        ),
        presence=presence,
        limits=ConnectionLimits.from_config(config),
    )
    gateway = Gateway(
        config,
        broadcaster,
        hub,
        broker,
        instance,
        _addresses(listeners),
        context.handlers,
        context.lifecycle,
        commands,
        metrics,
    )
    started_at = trio.current_time()
    stats = Stats(metrics, hub, broker, version=__version__, started_at=started_at)
    app = HttpApp(
        context,
        broadcaster.tagged(HTTP),
        __version__,
        instance,
        started_at=started_at,
        stats=stats,
        nodes=_nodes(config, broker, stats),
    )

    failure: BrokerUnavailable | None = None
    try:
        async with trio.open_nursery() as supervisor:
            await supervisor.start(flusher.run)
            await supervisor.start(context.readiness.run)
            try:
                await supervisor.start(broker.run, hub.deliver)
            except BrokerUnavailable as exc:
                failure = exc
            else:
                await supervisor.start(presence.run)
                await supervisor.start(stats.run)
                await supervisor.start(app.nodes.run)
                await _supervise(gateway, app, listeners, publish_receive, supervisor, task_status)
                with trio.move_on_after(config.close_timeout):
                    await presence.store.close()
                with trio.move_on_after(config.close_timeout):
                    await app.nodes.leave()
            supervisor.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(config.close_timeout):
            await backend.aclose()
    if failure is not None:
        for listener in listeners:
            await listener.aclose()
        raise failure
    log.info("gateway stopped")


def read_public_key(config: Config) -> tuple[Any, str] | None:
    """The JWT verification key and algorithm from `jwt_public_key`'s file, if configured.

    Raises:
        ConfigError: the file cannot be read or is not an RSA/EC public key.
    """
    if config.jwt_public_key is None:
        return None
    path = Path(config.jwt_public_key)
    try:
        return verifier_key(path.read_bytes())
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"jwt_public_key: cannot read {path}: {reason}") from None
    except KeyFileError as exc:
        raise ConfigError(f"jwt_public_key: {path}: {exc}") from None


def load_authenticator(config: Config) -> Authenticator:
    """The credential checker `config` describes; reads the JWT public key file.

    Raises:
        ConfigError: the key file cannot be read or is not an RSA/EC public key.
    """
    public_key = read_public_key(config)
    if config.auth_cookie is not None and not config.allowed_origins:
        log.warning(
            "tokens are accepted from a cookie but any Origin may connect: set allowed_origins "
            "to stop cross-site WebSocket hijacking",
            extra=fields(auth_cookie=config.auth_cookie),
        )
    return Authenticator(
        api_keys=config.api_keys,
        jwt_secret=config.jwt_secret,
        jwt_public_key=public_key,
        jwt_audience=config.jwt_audience,
        jwt_issuer=config.jwt_issuer,
        jwt_require_exp=not config.jwt_optional_exp,
    )


def _commands(config: Config, backend: Backend) -> Commands:
    commands = Commands()
    if config.command_url is not None:
        commands.set_fallback(command_proxy(backend, config.command_url))
    return commands


def _presence_store(config: Config, broker: Broker, instance: str) -> PresenceStore:
    # Without presence topics nothing is ever shared, so Redis is spared the presence channel.
    if isinstance(broker, RedisBroker) and config.presence_topics:
        return RedisStore(config, broker, instance)
    return MemoryStore(status_ttl=config.presence_ttl)


def _nodes(config: Config, broker: Broker, stats: Stats) -> Nodes:
    if isinstance(broker, RedisBroker):
        return RedisNodes(stats, broker, config.redis_prefix, config.node_ttl)
    return LocalNodes(stats)


def _broker(config: Config, instance: str) -> Broker:
    if config.redis_url is None:
        return MemoryBroker(config, _round_size(config))
    return RedisBroker(config, instance)


async def _supervise(
    gateway: Gateway,
    app: HttpApp,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    publish_receive: trio.MemoryReceiveChannel[Batch],
    supervisor: trio.Nursery,
    task_status: trio.TaskStatus[Gateway],
) -> None:
    config, hub, context = gateway.config, gateway.hub, app.context
    publisher_scope = trio.CancelScope()
    publisher_done = trio.Event()

    async def publisher(task_status: trio.TaskStatus[None]) -> None:
        try:
            with publisher_scope:
                await run_publisher(
                    publish_receive,
                    gateway.broker,
                    _round_size(config),
                    published=gateway.metrics.published,
                    task_status=task_status,
                )
        finally:
            publisher_done.set()

    await supervisor.start(publisher)
    await supervisor.start(run_keepalive, hub, config)
    async with trio.open_nursery() as connection_nursery:
        listener_scope = trio.CancelScope()

        async def listen(task_status: trio.TaskStatus[None]) -> None:
            with listener_scope:
                await run_listeners(
                    listeners,
                    partial(handle_stream, app),
                    connection_nursery,
                    overflow=OUT_OF_DESCRIPTORS_RESPONSE,
                    refused=_count_refusal(gateway.metrics),
                    task_status=task_status,
                )

        await connection_nursery.start(listen)
        log.info(
            "gateway started",
            extra=fields(
                addresses=[f"{h}:{p}" for h, p in gateway.addresses],
                broker=gateway.broker.kind,
            ),
        )
        task_status.started(gateway)
        await gateway._stop.wait()

        log.info("gateway shutting down")
        app.stats.draining = True
        listener_scope.cancel()
        connection_nursery.cancel_scope.deadline = trio.current_time() + config.drain_timeout
        gateway.broadcaster.close()
        with trio.move_on_after(config.drain_timeout):
            await publisher_done.wait()
        publisher_scope.cancel()
        context.shutting_down.set()
        app.begin_shutdown()
        # The last batch gets close_timeout before the deadline to flush and close.
        room = connection_nursery.cancel_scope.deadline - trio.current_time()
        window = max(0.0, min(config.drain_window, room - config.close_timeout))
        await drain(tuple(hub.clients.values()), window, random.Random())


def _count_refusal(metrics: Metrics) -> Callable[[str], None]:
    def refused(reason: str) -> None:
        metrics.refused[reason] += 1

    return refused


@asynccontextmanager
async def open_gateway(
    config: Config,
    *,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] | None = None,
    new_id: IdFactory = new_client_id,
) -> AsyncIterator[Gateway]:
    """`serve` as an async context manager: leaving the block shuts down gracefully.

    Raises:
        OSError, BrokerUnavailable: as `serve`, on entering, not wrapped in a group.
    """
    failure: OSError | BrokerUnavailable | None = None
    async with trio.open_nursery() as gateway_nursery:
        try:
            gateway: Gateway = await gateway_nursery.start(
                partial(serve, config, listeners=listeners, new_id=new_id)
            )
        except (OSError, BrokerUnavailable) as exc:
            failure = exc
        else:
            try:
                yield gateway
            finally:
                gateway.shutdown()
    if failure is not None:
        raise failure
