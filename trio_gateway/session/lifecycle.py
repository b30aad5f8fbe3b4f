"""Connection lifecycle hooks: what features run when a client is registered and when it is gone.

A hook is a synchronous callable taking the `Client`. It must not block: a feature that needs
I/O (presence in Redis, a backend call) hands the work to a task of its own. Hooks run:

- `connected`: once the client is in the hub, with `ready` queued and its id, identity and
  connect time set, before its first message is read. A hook that refuses the client asks it
  to close (`client.close(reason)`; without `flush=True` the queued `ready` is dropped); the
  hooks after it still run. A hook that raises closes
  the connection with 1011 and the hooks after it do not run.
- `stopped`: once the client has stopped reading (a close was requested, or the peer left),
  before the writer's last grace: where a feature stops the work it started beside the
  reader (command calls). Failures are logged; the others still run.
- `disconnected`: once for every client that reached `connected` (even one whose connect
  hooks failed: a disconnect hook must accept a client its connect hook never saw), after the
  client has left the hub (its subscriptions are gone) and its close reason is set, before
  the close frame is sent, in the reverse order of registration. A failing disconnect hook
  is logged and the others still run, so one feature cannot leak another's state.

Echo peers (diagnostics) never reach the hub and run no hooks. Must not: know any feature.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs

from ..observability.jsonlog import fields

if TYPE_CHECKING:
    from ..fanout.hub import Client

log = logging.getLogger("trio_gateway.lifecycle")

Hook = Callable[["Client"], None]


@attrs.define
class Lifecycle:
    """The hooks of every connection of one gateway."""

    _on_connect: list[Hook] = attrs.field(factory=list, alias="_on_connect")
    _on_disconnect: list[Hook] = attrs.field(factory=list, alias="_on_disconnect")
    _on_stop: list[Hook] = attrs.field(factory=list, alias="_on_stop")

    def on_connect(self, hook: Hook) -> Hook:
        """Run `hook` for every client registered from now on; usable as a decorator."""
        self._on_connect.append(hook)
        return hook

    def on_disconnect(self, hook: Hook) -> Hook:
        """Run `hook` for every registered client once it is gone; usable as a decorator."""
        self._on_disconnect.append(hook)
        return hook

    def on_stop(self, hook: Hook) -> Hook:
        """Run `hook` for every registered client once it stops reading; a decorator too."""
        self._on_stop.append(hook)
        return hook

    def connected(self, client: Client) -> None:
        """Run the connect hooks; an exception propagates (the connection closes 1011)."""
        for hook in self._on_connect:
            hook(client)

    def stopped(self, client: Client) -> None:
        """Run the stop hooks; never raises on a hook's failure."""
        _run_all(self._on_stop, client, "stop")

    def disconnected(self, client: Client) -> None:
        """Run the disconnect hooks, latest first; never raises on a hook's failure."""
        _run_all(reversed(self._on_disconnect), client, "disconnect")


def _run_all(hooks: Iterable[Hook], client: Client, stage: str) -> None:
    for hook in hooks:
        try:
            hook(client)
        except Exception:
            log.exception(f"{stage} hook failed", extra=fields(client_id=client.id))
