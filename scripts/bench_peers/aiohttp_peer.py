"""Baseline peer for scripts/bench.py: the same protocol subset on aiohttp.

Owns nothing but itself. Written the way an experienced aiohttp user would: one application
with `/api/ws` and `POST /api/events` on one port, each event serialised once and sent to
every matching client with `await ws.send_str(...)` (aiohttp writes straight to the transport
and only waits when a client's write buffer passes its high-water mark), and aiohttp's own
per-connection `heartbeat` for keepalive. The listen backlog is raised from aiohttp's default
of 128 to 4096 (what the gateway gets from trio) so the connect storm measures the server,
not SYN retransmits.

Protocol subset (docs/PROTOCOL.md): `/api/ws?token=K` -> `ready`; `subscribe` (scope all /
workspace_id / session_id) -> `subscribed`; `ping` -> `pong`; `POST /api/events` (one event or
an array, Bearer auth) -> 202 `{"accepted": n}`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
from functools import partial

from aiohttp import WSMsgType, web

CLIENTS = web.AppKey("clients", dict)
API_KEY = web.AppKey("api_key", str)
HEARTBEAT = web.AppKey("heartbeat", float)
IDS = web.AppKey("ids", itertools.count)

dumps = partial(json.dumps, separators=(",", ":"))


def subscription_key(message: dict[str, object]) -> str | None:
    if message.get("scope") == "all":
        return "all"
    for field, prefix in (("workspace_id", "workspace:"), ("session_id", "session:")):
        value = message.get(field)
        if isinstance(value, str) and value:
            return prefix + value
    return None


async def websocket(request: web.Request) -> web.StreamResponse:
    app = request.app
    if request.query.get("token") != app[API_KEY]:
        raise web.HTTPUnauthorized()
    ws = web.WebSocketResponse(heartbeat=app[HEARTBEAT], max_msg_size=65536)
    await ws.prepare(request)
    subscriptions: set[str] = set()
    app[CLIENTS][ws] = subscriptions
    try:
        client_id = str(next(app[IDS]))
        await ws.send_str(
            dumps({"type": "ready", "client_id": client_id, "heartbeat_interval": 30000})
        )
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                continue
            try:
                message = json.loads(frame.data)
            except ValueError:
                continue
            if message.get("type") == "subscribe" and (key := subscription_key(message)):
                subscriptions.add(key)
                await ws.send_str(dumps({"type": "subscribed", "subscription": key}))
            elif message.get("type") == "ping":
                await ws.send_str('{"type":"pong"}')
    finally:
        del app[CLIENTS][ws]
    return ws


async def post_events(request: web.Request) -> web.Response:
    app = request.app
    if request.headers.get("Authorization") != f"Bearer {app[API_KEY]}":
        raise web.HTTPUnauthorized()
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "Invalid JSON"}, status=400)
    events = body if isinstance(body, list) else [body]
    if not all(isinstance(e, dict) and isinstance(e.get("workspace_id"), str) for e in events):
        return web.json_response({"error": "every event needs a workspace_id"}, status=400)
    for event in events:
        keys = {"all", f"workspace:{event['workspace_id']}"}
        if event.get("session_id"):
            keys.add(f"session:{event['session_id']}")
        text = dumps({"type": "event", "event": event})
        for ws, subscriptions in list(app[CLIENTS].items()):
            if not subscriptions.isdisjoint(keys) and not ws.closed:
                # try/except, not contextlib.suppress: it is free on 3.11, suppress() is not.
                try:  # noqa: SIM105
                    await ws.send_str(text)
                except ConnectionError:
                    pass
    return web.json_response({"accepted": len(events)}, status=202)


async def main(api_key: str, heartbeat: float) -> None:
    app = web.Application()
    app[CLIENTS] = {}
    app[API_KEY] = api_key
    app[HEARTBEAT] = heartbeat
    app[IDS] = itertools.count(1)
    app.router.add_get("/api/ws", websocket)
    app.router.add_post("/api/events", post_events)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    print(
        f"aiohttp-peer listening on ws://127.0.0.1:{port}/api/ws"
        f" (HTTP API http://127.0.0.1:{port}/api/)",
        file=sys.stderr,
        flush=True,
    )
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-key", required=True)
    parser.add_argument(
        "--heartbeat", type=float, default=30.0, help="seconds between WebSocket pings"
    )
    args = parser.parse_args()
    asyncio.run(main(args.api_key, args.heartbeat))
