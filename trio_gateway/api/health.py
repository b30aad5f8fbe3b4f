"""Public endpoints about the server itself: health, and the WebSocket path asked without
an upgrade."""

from __future__ import annotations

import trio

from .app import HttpApp, HttpError, Request


async def health(app: HttpApp, request: Request) -> tuple[int, object]:
    # Liveness: 200 while the process serves, whatever the broker; /api/ready is the answer
    # that turns 503 for a broker outage or a drain.
    broker = app.context.broker
    return 200, {
        "status": "ok" if broker.ok else "degraded",
        "instance": app.instance,
        "ws_clients": len(app.context.hub),
        "uptime": round(trio.current_time() - app.started_at, 3),
        "version": app.version,
        "broker": {"kind": broker.kind, "ok": broker.ok},
    }


async def websocket_without_upgrade(app: HttpApp, request: Request) -> tuple[int, object]:
    raise HttpError(
        426,
        "This endpoint speaks WebSocket: send an Upgrade request",
        headers=[(b"upgrade", b"websocket"), (b"connection", b"Upgrade")],
    )
