"""The work a session runs beside its reader: its writer while it writes, and command calls.

An idle connection is what most connections are most of the time, and a nursery of its own
(with a cancel scope and a task set) would be most of what it costs. So the session has no
nursery: its tasks are started in the one its connection task was started in (the server's
connection nursery, which owns every connection task), and `SessionTasks` keeps them the
session's all the same. Each runs in a cancel scope of its own that `cancel` cancels, the
session waits for all of them (`wait`) before it closes the stream, and a failure in one is
logged and closes its connection 1011 instead of reaching the shared nursery.

Must not know what the tasks do (session/io.py's writer, commands/runner.py's calls).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..fanout.hub import Client
from ..observability.jsonlog import fields
from ..protocol.errors import INTERNAL_ERROR

log = logging.getLogger("trio_gateway.connection")


class SessionTasks:
    """Starts tasks for one session in `nursery` and keeps track of them until they end.

    `writer` is the session's writer and what it is called with: `start_writer` (what an
    outbox calls when frames cannot be written at once) runs it as one of these tasks.
    """

    __slots__ = ("_client", "_done", "_nursery", "_scopes", "_writer")

    def __init__(self, nursery: trio.Nursery, client: Client, writer: tuple[Any, ...]) -> None:
        self._nursery = nursery
        self._client = client
        self._writer = writer
        # Made with the first task and when the session waits while tasks still run: most
        # sessions are idle most of the time, and an empty set is 216 bytes.
        self._scopes: set[trio.CancelScope] | None = None
        self._done: trio.Event | None = None

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `fn(*args)` as one of the session's tasks."""
        scope = trio.CancelScope()
        if self._scopes is None:
            self._scopes = set()
        self._scopes.add(scope)
        self._nursery.start_soon(self._run, scope, fn, args)

    def start_writer(self) -> None:
        """Run the session's writer as one of its tasks."""
        self.start_soon(*self._writer)

    async def _run(
        self, scope: trio.CancelScope, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        try:
            with scope:
                await fn(*args)
        except Exception:
            log.exception("session task failed", extra=fields(client_id=self._client.id))
            self._client.close(INTERNAL_ERROR)
        finally:
            assert self._scopes is not None
            self._scopes.discard(scope)
            if not self._scopes:
                self._scopes = None
                if self._done is not None:
                    self._done.set()

    def cancel(self) -> None:
        """Cancel every task still running; `wait` still has to follow."""
        for scope in self._scopes or ():
            scope.cancel()

    async def wait(self) -> None:
        """Return once every task has ended."""
        if not self._scopes:
            return
        if self._done is None or self._done.is_set():
            self._done = trio.Event()
        await self._done.wait()
