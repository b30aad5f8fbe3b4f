"""SIGTERM and SIGINT for the daemon: the first drains gracefully, a second stops at once.

Owns what a shutdown signal means. Must not open the signal receiver itself: the caller opens
it with `trio.open_signal_receiver(*SHUTDOWN_SIGNALS)` before `serve` starts, so a signal that
arrives while the gateway is still binding waits in the receiver (and is acted on as soon as
the watcher runs) instead of surfacing as a KeyboardInterrupt halfway through start-up.

A second signal raises `ForcedShutdown` out of the watcher. Trio then cancels its siblings,
`serve` among them, which skips the rest of the drain but still sends every client 1001
within `close_timeout`; the caller exits with `ForcedShutdown.exit_status`.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator

import trio

from ..observability.jsonlog import fields
from .server import Gateway

log = logging.getLogger("trio_gateway.signals")

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ForcedShutdown(Exception):
    """A second shutdown signal arrived while the gateway was draining."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} during graceful shutdown")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """128 + the signal number: the shell's convention for "ended by this signal"."""
        return 128 + self.signum


async def watch_signals(
    gateway: Gateway,
    signals: AsyncIterator[int],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Turn shutdown signals from `signals` into a graceful, then a forced, shutdown.

    Args:
        gateway: the running gateway; the first signal calls its `shutdown()`.
        signals: an open `trio.open_signal_receiver(*SHUTDOWN_SIGNALS)`.

    Returns:
        Never: it runs until cancelled (the caller cancels it once `serve` has returned).

    Raises:
        ForcedShutdown: on the second signal.
    """
    task_status.started()
    draining = False
    async for signum in signals:
        name = signal.Signals(signum).name
        if draining:
            log.warning("second signal, stopping without draining", extra=fields(signal=name))
            raise ForcedShutdown(signum)
        draining = True
        log.info(
            "shutdown requested, draining",
            extra=fields(signal=name, drain_timeout=gateway.config.drain_timeout),
        )
        gateway.shutdown()
