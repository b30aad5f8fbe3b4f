"""Baseline peer for scripts/bench.py: the same protocol subset on the `websockets` library.

Owns nothing but itself. Written the way an experienced websockets user would: its asyncio
server for `/api/ws`, each event serialised once and handed to `websockets.broadcast()` for
the matching connections (it writes without awaiting and skips a connection whose buffer is
full), and the library's own keepalive (`ping_interval`). websockets serves only the
handshake's GET, so `POST /api/events` is on a second port, an aiohttp application in the
same event loop; the listening line on stderr names both. Backlog 4096, like the gateway's.

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
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

dumps = partial(json.dumps, separators=(",", ":"))


def subscription_key(message: dict[str, object]) -> str | None:
    if message.get("scope") == "all":
        return "all"
    for field, prefix in (("workspace_id", "workspace:"), ("session_id", "session:")):
        value = message.get(field)
        if isinstance(value, str) and value:
            return prefix + value
    return None


class Peer:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.clients: dict[ServerConnection, set[str]] = {}
        self.ids = itertools.count(1)

    def check(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        token = parse_qs(url.query).get("token", [""])[0]
        if url.path != "/api/ws" or token != self.api_key:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
        return None

    async def websocket(self, connection: ServerConnection) -> None:
        subscriptions: set[str] = set()
        self.clients[connection] = subscriptions
        try:
            ready = {"type": "ready", "client_id": str(next(self.ids)), "heartbeat_interval": 30000}
            await connection.send(dumps(ready))
            async for frame in connection:
                if not isinstance(frame, str):
                    continue
                try:
                    message = json.loads(frame)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                if message.get("type") == "subscribe" and (key := subscription_key(message)):
                    subscriptions.add(key)
                    await connection.send(dumps({"type": "subscribed", "subscription": key}))
                elif message.get("type") == "ping":
                    await connection.send('{"type":"pong"}')
        finally:
            del self.clients[connection]

    async def post_events(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
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
            matching = [c for c, subs in self.clients.items() if not subs.isdisjoint(keys)]
            broadcast(matching, text)
        return web.json_response({"accepted": len(events)}, status=202)


async def main(api_key: str, heartbeat: float) -> None:
    peer = Peer(api_key)
    app = web.Application()
    app.router.add_post("/api/events", peer.post_events)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = runner.addresses[0][1]
    async with serve(
        peer.websocket,
        "127.0.0.1",
        0,
        process_request=peer.check,
        ping_interval=heartbeat,
        max_size=65536,
        compression=None,
        backlog=4096,
    ) as server:
        ws_port = next(iter(server.sockets)).getsockname()[1]
        print(
            f"websockets-peer listening on ws://127.0.0.1:{ws_port}/api/ws"
            f" (HTTP API http://127.0.0.1:{http_port}/api/)",
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
