"""What every connection of one gateway shares: built once by runtime/server.py.

Owns the seams features plug into: `handlers` (client message type -> handler, with the
middleware chain) and `lifecycle` (connect/disconnect hooks), and the features' services the
HTTP API reads (`presence`, `metrics`). Must not hold per-connection
state; that is the `Client`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from ..backend.connect import ConnectHook
from ..broker import Broker
from ..fanout.broadcaster import Broadcaster
from ..fanout.hub import Hub
from ..runtime.config import Config
from ..runtime.ids import IdFactory
from ..transport.limits import ConnectionLimits
from ..transport.readiness import Readiness
from .auth import Authenticator
from .lifecycle import Lifecycle
from .registry import Registry

if TYPE_CHECKING:
    from ..observability.metrics import Metrics
    from ..presence.service import Presence


@attrs.define
class GatewayContext:
    """The shared state and seams of one running gateway."""

    config: Config
    hub: Hub
    new_id: IdFactory
    broker: Broker
    auth: Authenticator
    broadcaster: Broadcaster
    handlers: Registry
    #: The counters (observability/metrics.py) that handlers bump.
    metrics: Metrics
    lifecycle: Lifecycle = attrs.field(factory=Lifecycle)
    #: Asks the backend who an opaque token is (`connect_url`); None when not configured.
    connect_hook: ConnectHook | None = None
    #: Presence and typing (presence/): the HTTP queries read it.
    presence: Presence | None = None
    #: The connection caps (transport/limits.py) the upgrade checks; none by default.
    limits: ConnectionLimits = attrs.field(factory=lambda: ConnectionLimits(0, 2**31, 0))
    # Set when graceful shutdown begins: handshakes still in flight close 1001 at once and the
    # HTTP side stops keeping connections alive.
    shutting_down: trio.Event = attrs.field(factory=trio.Event)
    #: Where WebSocket readers wait for input (its task is started by the server).
    readiness: Readiness = attrs.field(factory=Readiness)
