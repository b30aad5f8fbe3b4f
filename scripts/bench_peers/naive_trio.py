"""Baseline peer for scripts/bench.py: the naive trio-websocket gateway design.

Owns nothing but itself: a dict of connected clients, and a publisher that awaits
`send_message` on each matching client in turn, so one slow client stalls the whole fan-out.
That is the design the gateway is measured against, so nothing here is optimised beyond the
obvious (each event is serialised once, not once per client).

It speaks the subset of docs/PROTOCOL.md the benchmark uses: `/api/ws?token=K` -> `ready`;
`subscribe` (scope all / workspace_id / session_id) -> `subscribed`; `ping` -> `pong`; and
`POST /api/events` (one event or an array, Bearer auth) -> 202 `{"accepted": n}`. The HTTP API
is on a second port (h11 over trio.serve_tcp); the listening line on stderr names both.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from functools import partial
from urllib.parse import parse_qs, urlsplit

import h11
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket


def dumps(message: object) -> str:
    return json.dumps(message, separators=(",", ":"))


class Peer:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        # client id -> (connection, subscription keys)
        self.clients: dict[int, tuple[WebSocketConnection, set[str]]] = {}
        self.ids = itertools.count(1)


def subscription_key(message: dict[str, object]) -> str | None:
    if message.get("scope") == "all":
        return "all"
    for field, prefix in (("workspace_id", "workspace:"), ("session_id", "session:")):
        value = message.get(field)
        if isinstance(value, str) and value:
            return prefix + value
    return None


async def serve_client(peer: Peer, request: WebSocketRequest) -> None:
    url = urlsplit(request.path)
    if url.path != "/api/ws" or parse_qs(url.query).get("token") != [peer.api_key]:
        await request.reject(401)
        return
    ws = await request.accept()
    client_id = next(peer.ids)
    subscriptions: set[str] = set()
    peer.clients[client_id] = (ws, subscriptions)
    try:
        ready = {"type": "ready", "client_id": str(client_id), "heartbeat_interval": 30000}
        await ws.send_message(dumps(ready))
        while True:
            try:
                message = json.loads(await ws.get_message())
            except ValueError:
                continue
            if message.get("type") == "subscribe" and (key := subscription_key(message)):
                subscriptions.add(key)
                await ws.send_message(dumps({"type": "subscribed", "subscription": key}))
            elif message.get("type") == "ping":
                await ws.send_message('{"type":"pong"}')
    except ConnectionClosed:
        pass
    finally:
        del peer.clients[client_id]


async def publish(peer: Peer, events: list[dict[str, object]]) -> None:
    for event in events:
        keys = {"all", f"workspace:{event['workspace_id']}"}
        if event.get("session_id"):
            keys.add(f"session:{event['session_id']}")
        text = dumps({"type": "event", "event": event})
        for ws, subscriptions in list(peer.clients.values()):
            if not subscriptions.isdisjoint(keys):
                # try/except, not contextlib.suppress: it is free on 3.11, suppress() is not.
                try:  # noqa: SIM105
                    await ws.send_message(text)
                except ConnectionClosed:
                    pass


async def handle_request(peer: Peer, request: h11.Request, body: bytes) -> tuple[int, object]:
    if request.method != b"POST" or request.target != b"/api/events":
        return 404, {"error": "Not found"}
    if dict(request.headers).get(b"authorization") != f"Bearer {peer.api_key}".encode():
        return 401, {"error": "Unauthorized"}
    try:
        body_json = json.loads(body)
    except ValueError:
        return 400, {"error": "Invalid JSON"}
    events = body_json if isinstance(body_json, list) else [body_json]
    if not all(isinstance(e, dict) and isinstance(e.get("workspace_id"), str) for e in events):
        return 400, {"error": "every event needs a workspace_id"}
    await publish(peer, events)
    return 202, {"accepted": len(events)}


async def next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(65536))


async def serve_http(peer: Peer, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await next_event(conn, stream)
            if not isinstance(request, h11.Request):
                return
            body = b""
            while isinstance(part := await next_event(conn, stream), h11.Data):
                body += part.data
            status, payload = await handle_request(peer, request, body)
            data = dumps(payload).encode()
            headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError):
        pass
    finally:
        await stream.aclose()


async def main(api_key: str) -> None:
    peer = Peer(api_key)
    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(
            serve_websocket, partial(serve_client, peer), "127.0.0.1", 0, None
        )
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(serve_http, peer), 0, host="127.0.0.1")
        )
        http_port = listeners[0].socket.getsockname()[1]
        print(
            f"naive-trio listening on ws://127.0.0.1:{ws_server.port}/api/ws"
            f" (HTTP API http://127.0.0.1:{http_port}/api/)",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-key", required=True)
    trio.run(main, parser.parse_args().api_key)
