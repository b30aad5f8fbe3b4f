"""The supervisor: `serve()` starts every task in order and runs the shutdown sequence.

Task tree (every task started with `nursery.start`, so "started" is observable):

    serve                 supervisor nursery
    ├── run_broadcast     publish channel -> hub
    ├── run_keepalive     ping / reap
    └── connection nursery
        ├── run_listeners accept loop(s) -> handle_stream in the connection nursery
        └── handle_stream one per accepted stream (HTTP, or one WebSocket client)

Graceful shutdown (`Gateway.shutdown()`, also what SIGTERM does), in hypercorn's order:
stop accepting; refuse new publications and let the broadcast task fan out what is queued;
ask every client to close with 1001 after flushing its queue; close idle HTTP keep-alive
connections; give the connection nursery `drain_timeout` to finish, then cancel what is left.
Cancelling `serve` from outside skips the draining but still sends every client 1001.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio

from . import __version__
from .broadcaster import Batch, Broadcaster, run_broadcast
from .config import Config
from .connection import GatewayContext
from .http_api import HttpApp, handle_stream
from .hub import Hub
from .ids import IdFactory, new_client_id
from .jsonlog import fields
from .keepalive import run_keepalive
from .listener import open_listeners, run_listeners
from .protocol.errors import SHUTTING_DOWN

log = logging.getLogger("trio_gateway.server")


@attrs.define(eq=False)
class Gateway:
    """A running gateway, as reported by `serve` through `task_status`."""

    config: Config
    broadcaster: Broadcaster
    hub: Hub
    #: (host, port) of each TCP listener; empty when serving caller-supplied listeners.
    addresses: list[tuple[str, int]]
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
    """
    if listeners is None:
        listeners = await open_listeners(config.host, config.port, reuse_port=config.reuse_port)
    hub = Hub()
    context = GatewayContext(config=config, hub=hub, new_id=new_id)
    publish_send, publish_receive = trio.open_memory_channel[Batch](config.publish_queue_depth)
    broadcaster = Broadcaster(publish_send)
    gateway = Gateway(config, broadcaster, hub, _addresses(listeners))
    app = HttpApp(context, broadcaster, __version__, started_at=trio.current_time())

    async with trio.open_nursery() as supervisor:
        broadcast_scope = trio.CancelScope()
        broadcast_done = trio.Event()

        async def broadcast(task_status: trio.TaskStatus[None]) -> None:
            try:
                with broadcast_scope:
                    await run_broadcast(
                        publish_receive, hub, _round_size(config), task_status=task_status
                    )
            finally:
                broadcast_done.set()

        await supervisor.start(broadcast)
        await supervisor.start(run_keepalive, hub, config)
        async with trio.open_nursery() as connection_nursery:
            listener_scope = trio.CancelScope()

            async def listen(task_status: trio.TaskStatus[None]) -> None:
                with listener_scope:
                    await run_listeners(
                        listeners,
                        partial(handle_stream, app),
                        connection_nursery,
                        task_status=task_status,
                    )

            await connection_nursery.start(listen)
            log.info(
                "gateway started",
                extra=fields(addresses=[f"{h}:{p}" for h, p in gateway.addresses]),
            )
            task_status.started(gateway)
            await gateway._stop.wait()

            log.info("gateway shutting down")
            listener_scope.cancel()
            connection_nursery.cancel_scope.deadline = trio.current_time() + config.drain_timeout
            broadcaster.close()
            with trio.move_on_after(config.drain_timeout):
                await broadcast_done.wait()
            broadcast_scope.cancel()
            context.shutting_down.set()
            for client in tuple(hub.clients.values()):
                client.close(SHUTTING_DOWN, flush=True)
            app.begin_shutdown()
        supervisor.cancel_scope.cancel()
    log.info("gateway stopped")


@asynccontextmanager
async def open_gateway(
    config: Config,
    *,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] | None = None,
    new_id: IdFactory = new_client_id,
) -> AsyncIterator[Gateway]:
    """`serve` as an async context manager: leaving the block shuts down gracefully."""
    async with trio.open_nursery() as gateway_nursery:
        gateway: Gateway = await gateway_nursery.start(
            partial(serve, config, listeners=listeners, new_id=new_id)
        )
        try:
            yield gateway
        finally:
            gateway.shutdown()
