"""A Trio client for the gateway: subscriptions that survive drops, with nothing missed and
nothing doubled where the server keeps history; publishing over HTTP is client/http.py.

The library, by module: gateway.py (`open_client`, `GatewayClient`: the connection's life,
its reader, reconnecting), connection.py (one connection's writer and reply slots),
positions.py (what each subscription has seen; pure), wire.py (subscribe fields and keys,
frame decoding; pure), urls.py (URL splitting; pure), errors.py.

Must not: use the server's runtime (fanout, session, transport, runtime, broker) or be
imported by it. The server never depends on its clients; the two share only protocol/ and
common/.
"""

from __future__ import annotations

from ..common.backoff import backoff_delay
from .errors import ClientError, ConnectFailed, Disconnected, SubscriptionError, Unauthorized
from .gateway import GatewayClient, open_client
from .positions import Position, Subscribed
from .urls import websocket_url

__all__ = [
    "ClientError",
    "ConnectFailed",
    "Disconnected",
    "GatewayClient",
    "Position",
    "Subscribed",
    "SubscriptionError",
    "Unauthorized",
    "backoff_delay",
    "open_client",
    "websocket_url",
]
