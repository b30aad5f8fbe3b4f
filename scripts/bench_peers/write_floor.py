"""Reference peer for scripts/bench.py: the write floor, i.e. what no Python server beats.

Owns nothing but itself. Not a server anyone should run: one selector loop, hand-rolled
HTTP and WebSocket parsing just good enough for the load generator, no keepalive, no limits,
and a client whose socket buffer is full simply misses the event (the load generator would
report it lost). What it is for: a fan-out here is a prebuilt frame and one `send()` per
subscriber in a plain loop, nothing else, so its publish -> receive latency in scenario L is
what the kernel and this machine cost at that moment. Measured in the same run as the
gateway, it tells how much of the gateway's latency is the gateway's own.

Protocol subset (docs/PROTOCOL.md), one port: `/api/ws?token=K` -> `ready`; `subscribe`
(scope all / workspace_id / session_id) -> `subscribed`; `ping` -> `pong`; `POST /api/events`
(one event or an array, Bearer auth) -> 202 `{"accepted": n}`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import selectors
import socket
import sys
from functools import partial

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
dumps = partial(json.dumps, separators=(",", ":"))


def text_frame(text: str) -> bytes:
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


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
        self.selector = selectors.DefaultSelector()
        self.buffers: dict[socket.socket, bytes] = {}
        self.websockets: set[socket.socket] = set()
        self.subscribers: dict[str, set[socket.socket]] = {}
        self.ids = itertools.count(1)

    def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ)
        while True:
            for key, _ in self.selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is listener:
                    self.accept(listener)
                else:
                    self.readable(sock)

    def accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffers[sock] = b""
            self.selector.register(sock, selectors.EVENT_READ)

    def close(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        self.buffers.pop(sock, None)
        self.websockets.discard(sock)
        for members in self.subscribers.values():
            members.discard(sock)
        sock.close()

    def readable(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close(sock)
            return
        buffer = self.buffers[sock] + data
        handle = self.frames if sock in self.websockets else self.requests
        rest = handle(sock, buffer)
        if sock in self.buffers:  # not closed meanwhile
            self.buffers[sock] = rest

    def requests(self, sock: socket.socket, buffer: bytes) -> bytes:
        """Handle every complete HTTP request in `buffer`; returns what is left."""
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = buffer[:end].decode("latin-1").split("\r\n")
            headers = dict(
                (name.strip().lower(), value.strip())
                for name, _, value in (line.partition(":") for line in head[1:])
            )
            method, target, _ = head[0].split(" ", 2)
            length = int(headers.get("content-length", "0"))
            if len(buffer) < end + 4 + length:
                return buffer
            body, buffer = buffer[end + 4 : end + 4 + length], buffer[end + 4 + length :]
            if method == "GET" and target.startswith("/api/ws"):
                self.upgrade(sock, target, headers)
                return self.frames(sock, buffer) if sock in self.websockets else b""
            if method == "POST" and target == "/api/events":
                self.post_events(sock, headers, body)
            else:
                self.respond(sock, 404, {"error": "not found"})
        return buffer

    def respond(self, sock: socket.socket, status: int, body: object) -> None:
        payload = dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\n\r\n"
        )
        sock.send(head.encode() + payload)

    def upgrade(self, sock: socket.socket, target: str, headers: dict[str, str]) -> None:
        if target != f"/api/ws?token={self.api_key}":
            self.respond(sock, 401, {"error": "unauthorized"})
            return
        key = headers["sec-websocket-key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        sock.send(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-accept: " + accept + b"\r\n\r\n"
        )
        self.websockets.add(sock)
        ready = {"type": "ready", "client_id": str(next(self.ids)), "heartbeat_interval": 30000}
        sock.send(text_frame(dumps(ready)))

    def frames(self, sock: socket.socket, buffer: bytes) -> bytes:
        """Handle every complete (masked) client frame in `buffer`; returns what is left."""
        while len(buffer) >= 6:
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            at = 2
            if length == 126:
                length, at = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                length, at = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < at + 4 + length:
                return buffer
            mask = buffer[at : at + 4]
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buffer[at + 4 : at + 4 + length]))
            buffer = buffer[at + 4 + length :]
            if opcode == 8:
                self.close(sock)
                return b""
            if opcode == 1:
                self.message(sock, payload)
        return buffer

    def message(self, sock: socket.socket, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if message.get("type") == "subscribe" and (key := subscription_key(message)):
            self.subscribers.setdefault(key, set()).add(sock)
            sock.send(text_frame(dumps({"type": "subscribed", "subscription": key})))
        elif message.get("type") == "ping":
            sock.send(text_frame('{"type":"pong"}'))

    def post_events(self, sock: socket.socket, headers: dict[str, str], body: bytes) -> None:
        if headers.get("authorization") != f"Bearer {self.api_key}":
            self.respond(sock, 401, {"error": "unauthorized"})
            return
        try:
            parsed = json.loads(body)
        except ValueError:
            self.respond(sock, 400, {"error": "Invalid JSON"})
            return
        events = parsed if isinstance(parsed, list) else [parsed]
        for event in events:
            keys = ["all", f"workspace:{event['workspace_id']}"]
            if event.get("session_id"):
                keys.append(f"session:{event['session_id']}")
            groups = [members for key in keys if (members := self.subscribers.get(key))]
            recipients = set().union(*groups) if len(groups) > 1 else next(iter(groups), ())
            frame = text_frame(dumps({"type": "event", "event": event}))
            for recipient in recipients:
                # try/except, not contextlib.suppress: it is free on 3.11, suppress() is not.
                try:  # noqa: SIM105
                    recipient.send(frame)
                except OSError:
                    pass
        self.respond(sock, 202, {"accepted": len(events)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    print(
        f"write-floor listening on ws://127.0.0.1:{port}/api/ws"
        f" (HTTP API http://127.0.0.1:{port}/api/)",
        file=sys.stderr,
        flush=True,
    )
    Peer(args.api_key).serve(listener)


if __name__ == "__main__":
    main()
