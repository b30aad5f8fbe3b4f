"""What an idle subscribed connection holds in the gateway, by allocation site (tracemalloc).

    .venv/bin/python scripts/idle_memory.py [--connections 5000] [--top 25] [--frames 1]

Owns nothing but the measurement. The gateway runs in this process with tracemalloc on; a
child process (this script with --clients) opens the connections on raw blocking sockets,
each upgraded, `ready` read, subscribed to `all` and the ack read, then holds them. Between a
snapshot taken after a warm-up and one with every connection held, the growth is grouped by
allocation site and divided by the number of connections. tracemalloc counts Python
allocations only: the kernel's socket buffers and the allocator's slack are outside it, so
the total is below the RSS growth scripts/bench.py reports for scenario C.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "idle-memory-key"
SUBSCRIBE = b'{"type":"subscribe","scope":"all"}'


def masked(payload: bytes) -> bytes:
    """A client text frame (masked with a zero key: masking is required, not its value)."""
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def read_frame(sock: socket.socket, buffer: bytearray) -> bytes:
    """One unfragmented server frame's payload (the server never masks)."""
    while True:
        if len(buffer) >= 2:
            length, start = buffer[1] & 0x7F, 2
            if length == 126 and len(buffer) >= 4:
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            if length < 126 and len(buffer) >= start + length:
                payload = bytes(buffer[start : start + length])
                del buffer[: start + length]
                return payload
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        buffer += chunk


def open_idle(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/ws?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.decode(errors="replace"))
    buffer = bytearray(rest)
    while b'"ready"' not in read_frame(sock, buffer):
        pass
    sock.sendall(masked(SUBSCRIBE))
    while b'"subscribed"' not in read_frame(sock, buffer):
        pass
    return sock


def clients(port: int, count: int) -> None:
    """Child process: open `count` idle connections, say so, hold them until stdin closes."""
    held = [open_idle(port) for _ in range(count)]
    print(len(held), flush=True)
    sys.stdin.read()


async def measure(args: argparse.Namespace) -> None:
    from inprocess import measuring_config

    from trio_gateway import open_gateway

    # No keepalive cycle during the hold, and no cap refusing most of the clients.
    config = measuring_config(TOKEN)
    async with open_gateway(config) as gateway:
        command = [sys.executable, __file__, "--clients", "--port", str(gateway.port)]

        async def run_clients(count: int) -> trio.Process:
            process = await trio.lowlevel.open_process(
                [*command, "--connections", str(count)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert process.stdout is not None
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                if not chunk:
                    raise RuntimeError("the client process ended early")
                reply += chunk
            return process

        warm = await run_clients(20)
        assert warm.stdin is not None
        await warm.stdin.aclose()
        await warm.wait()
        await trio.sleep(1.0)
        before = tracemalloc.take_snapshot()
        held = await run_clients(args.connections)
        await trio.sleep(1.0)
        after = tracemalloc.take_snapshot()
        assert held.stdin is not None
        await held.stdin.aclose()
        await held.wait()
        report(before, after, args)
        gateway.shutdown()


def report(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, args: argparse.Namespace
) -> None:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(ignore), after.filter_traces(ignore)
    grouping = "traceback" if args.frames > 1 else "lineno"
    stats = after.compare_to(before, grouping)
    total = sum(stat.size_diff for stat in stats)
    n = args.connections
    print(f"{n:,} idle subscribed connections: {total / n:,.0f} bytes a connection (tracemalloc)")
    print(f"{'bytes/conn':>10}  {'blocks/conn':>11}  site")
    for stat in stats[: args.top]:
        frames = stat.traceback.format(limit=args.frames)
        site = " <- ".join(line.strip() for line in frames if not line.startswith("    "))
        site = site.replace(str(ROOT) + "/", "")
        print(f"{stat.size_diff / n:>10,.0f}  {stat.count_diff / n:>11.2f}  {site}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--top", type=int, default=25, help="allocation sites shown")
    parser.add_argument("--frames", type=int, default=1, help="traceback frames per site")
    parser.add_argument("--clients", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:
        clients(args.port, args.connections)
        return
    tracemalloc.start(args.frames)
    trio.run(measure, args)


if __name__ == "__main__":
    main()
