"""Where a publication's time goes, from its request to the last write of its fan-out.

    PYTHONPATH=SRC .venv/bin/python scripts/publish_latency.py [--clients 1000]
        [--events 300] [--rate 50] [--probe] [--floor] [--slice N] [--turns N]
        [--json OUT] [--raw OUT]

Owns nothing but the measurement. The gateway (the trio_gateway on PYTHONPATH) runs in this
process, pinned to CPU 0; a child process pinned to CPU 1 opens the clients on raw sockets
(upgraded, subscribed to workspace "bench" as scenario L's are), then posts one event per
request to /api/events at `--rate`, spinning on epoll as scripts/bench_loadgen.py does.

Every delivery is timed by the kernel, not by the child: the clients' sockets carry
SO_TIMESTAMPNS, the time the frame reached the socket, which on loopback is the time of the
server's write(2). So the figures are the server's and the kernel's, whatever the child was
doing; each delivery's latency is that stamp less the time the child sent the request.
Reported, per publication then as medians over them: the first, the 500th (the median
recipient of 1,000) and the last write, the response; and over all deliveries p50/p99, the
figure scenario L reports. Server CPU is this process's CPU time during the publishing,
divided by the deliveries.

With `--probe`, the path inside the server is stamped too (the same clock, so the steps line
up with the writes): h11's request head, the handler starting, the publisher task taking the
batch, the fan-out queuing, each flush of a slice (its checks, its writes), garbage
collections and the response; and the server thread's CPU time from the parsed request head
to the first and the median recipient's write, which other processes on the machine do not
inflate the way they do wall-clock figures. The "quietest" figures (p10 over publications)
serve the same purpose. `--floor` runs the same measurement against
scripts/bench_peers/write_floor.py; `--slice` and `--turns` change the flusher's FLUSH_SLICE
and EXTRA_TURNS, to see what each costs.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "publish-latency-key"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
EVENT = (
    '{"workspace_id":"bench","session_id":"s1","kind":"bench.tick",'
    '"m":"~%08d~","data":"' + "x" * 64 + '"}'
)
SUBSCRIBE = b'{"type":"subscribe","workspace_id":"bench"}'


def masked(payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def open_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/ws?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    data = b""
    while b'"ready"' not in data:
        data += sock.recv(65536)
    sock.sendall(masked(SUBSCRIBE))
    while b'"subscribed"' not in data:
        data += sock.recv(65536)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setblocking(False)
    return sock


def child(args: argparse.Namespace) -> None:
    """Open the clients, publish, and print what the kernel stamped (JSON on stdout)."""
    os.sched_setaffinity(0, {1})
    clients = [open_client(args.port) for _ in range(args.clients)]
    publisher = socket.create_connection(("127.0.0.1", args.port))
    publisher.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    publisher.setblocking(False)
    head = (
        "POST /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        "Content-Length: %d\r\n\r\n"
    )
    epoll = select.epoll()
    for sock in clients:
        epoll.register(sock.fileno(), select.EPOLLIN)
    epoll.register(publisher.fileno(), select.EPOLLIN)
    by_fd = {sock.fileno(): sock for sock in clients}
    sent: list[int] = []
    answered: list[int] = []
    stamps: list[list[int]] = [[] for _ in range(args.events)]
    print("ready", flush=True)
    sys.stdin.readline()
    interval = 1.0 / args.rate
    start = time.monotonic() + 0.1
    response = b""
    cmsg_size = socket.CMSG_SPACE(16)
    while len(answered) < args.events or sum(map(len, stamps)) < args.events * args.clients:
        now = time.monotonic()
        if now > start + args.events * interval + 30:
            break
        if len(sent) < args.events and now >= start + len(sent) * interval:
            body = (EVENT % len(sent)).encode()
            request = (head % len(body)).encode() + body
            sent.append(time.time_ns())
            publisher.send(request)
        for fd, _ in epoll.poll(0.0):
            if fd == publisher.fileno():
                response += publisher.recv(65536)
                while b"\r\n\r\n" in response and b"}" in response:
                    answered.append(time.time_ns())
                    response = response[response.index(b"}") + 1 :]
                continue
            data, ancillary, _, _ = by_fd[fd].recvmsg(65536, cmsg_size)
            stamp = 0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanos = struct.unpack("qq", value[:16])
                    stamp = seconds * 1_000_000_000 + nanos
            at = 0
            while (at := data.find(b'"m":"~', at)) >= 0:
                stamps[int(data[at + 6 : at + 14])].append(stamp)
                at += 14
    json.dump({"sent": sent, "answered": answered, "stamps": stamps}, sys.stdout)
    sys.stdout.flush()


class Probe:
    """Stamps of the server's steps, in order, on the child's clock (time.time_ns)."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, int, int]] = []
        self.writes = 0
        self.checked = False
        #: The median recipient's write: the clients' number halved.
        self.half = 0

    def install(self) -> None:
        from trio_gateway.api import routes
        from trio_gateway.fanout import broadcaster, flusher, hub, outbox
        from trio_gateway.transport import http

        probe = self
        wall = time.time_ns
        cpu = time.thread_time_ns

        class Marks:
            def append(self, mark: tuple[str, int]) -> None:
                probe.marks.append((mark[0], mark[1], cpu()))

        marks = Marks()
        clock = wall

        def collected(phase, info):  # type: ignore[no-untyped-def]
            marks.append((f"gc{info['generation']}-{phase}", clock()))

        gc.callbacks.append(collected)

        route = routes.ROUTES["/api/events"]["POST"]
        handler = route.handler

        async def post_events(app, request):  # type: ignore[no-untyped-def]
            probe.writes = 0
            marks.append(("handler", clock()))
            return await handler(app, request)

        routes.ROUTES["/api/events"]["POST"] = routes.Route(post_events, route.policy)
        routes._LITERAL["/api/events"] = routes.ROUTES["/api/events"]

        publish_round = broadcaster._publish_round

        async def _publish_round(broker, batches, published):  # type: ignore[no-untyped-def]
            marks.append(("publisher", clock()))
            return await publish_round(broker, batches, published)

        broadcaster._publish_round = _publish_round

        publish_many = hub.Hub.publish_many

        def staged(self, items):  # type: ignore[no-untyped-def]
            marks.append(("stage", clock()))
            try:
                return publish_many(self, items)
            finally:
                marks.append(("staged", clock()))

        hub.Hub.publish_many = staged

        flush_each = flusher.flush_each

        def flushed(outboxes):  # type: ignore[no-untyped-def]
            marks.append(("flush", clock()))
            probe.checked = False
            flush_each(outboxes)
            marks.append(("flushed", clock()))

        # outbox.flush_each writes with os.write: stamped when its checks are done (its first
        # write), and at the first and the median recipient's write since the handler began.
        class Os:
            def __getattr__(self, name: str) -> object:
                return getattr(os, name)

            def write(self, fd: int, data: bytes) -> int:
                if not probe.checked:
                    probe.checked = True
                    marks.append(("checked", clock()))
                written = os.write(fd, data)
                probe.writes += 1
                if probe.writes in (1, probe.half):
                    marks.append(("w1" if probe.writes == 1 else "whalf", clock()))
                return written

        outbox.os = Os()  # type: ignore[assignment]

        flusher.flush_each = flushed

        next_event = http._next_event

        async def _next_event(conn, stream):  # type: ignore[no-untyped-def]
            event = await next_event(conn, stream)
            marks.append((type(event).__name__, clock()))
            return event

        http._next_event = _next_event

        send_response = http._send_response

        async def _send_response(*args, **kwargs):  # type: ignore[no-untyped-def]
            marks.append(("respond", clock()))
            return await send_response(*args, **kwargs)

        http._send_response = _send_response

    def per_publication(self, sent: list[int]) -> list[dict[str, list[float]]]:
        """The marks from one request's sending to the next's, in µs after the request."""
        steps: list[dict[str, list[float]]] = [{} for _ in sent]
        index = -1
        for name, at, cpu in self.marks:
            while index + 1 < len(sent) and at >= sent[index + 1]:
                index += 1
            if index >= 0:
                steps[index].setdefault(name, []).append((at - sent[index]) / 1000)
                steps[index].setdefault("cpu:" + name, []).append(cpu / 1000)
        return steps


async def serve(args: argparse.Namespace) -> dict[str, object]:
    import trio
    from inprocess import measuring_config

    from trio_gateway import open_gateway
    from trio_gateway.fanout import flusher

    # What a slice and the turns between slices cost, measured by changing them.
    if args.slice is not None:
        defaults = list(flusher.Flusher.__init__.__defaults__ or ())
        defaults[0] = args.slice
        flusher.Flusher.__init__.__defaults__ = tuple(defaults)
    if args.turns is not None:
        flusher.EXTRA_TURNS = args.turns
    probe = Probe()
    probe.half = args.clients // 2
    if args.probe:
        probe.install()
    config = measuring_config(TOKEN)
    async with open_gateway(config) as gateway:
        command = [sys.executable, __file__, "--child", "--port", str(gateway.port)]
        command += ["--clients", str(args.clients), "--events", str(args.events)]
        command += ["--rate", str(args.rate)]
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        assert process.stdin is not None
        output = b""
        while not output.startswith(b"ready\n"):
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError("the client process ended early")
            output += chunk
        output = output[len(b"ready\n") :]
        await trio.sleep(0.5)
        cpu = time.process_time()
        await process.stdin.send_all(b"go\n")
        while chunk := await process.stdout.receive_some():
            output += chunk
            if output.endswith(b"}"):
                cpu = time.process_time() - cpu
        await process.wait()
        gateway.shutdown()
    result = json.loads(output)
    result["cpu"] = cpu
    result["steps"] = probe.per_publication(result["sent"]) if args.probe else []
    return result


def floor(args: argparse.Namespace) -> dict[str, object]:
    """The same measurement against scripts/bench_peers/write_floor.py (a plain send loop)."""
    import re

    server = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            str(ROOT / "scripts/bench_peers/write_floor.py"),
            "--api-key",
            TOKEN,
        ],
        stderr=subprocess.PIPE,
    )
    assert server.stderr is not None
    port = int(re.search(rb"127.0.0.1:(\d+)", server.stderr.readline())[1])
    command = [sys.executable, __file__, "--child", "--port", str(port)]
    command += ["--clients", str(args.clients), "--events", str(args.events)]
    command += ["--rate", str(args.rate)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdin is not None
    assert process.stdout.readline() == b"ready\n"
    time.sleep(0.5)
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    before = cpu()
    process.stdin.write(b"go\n")
    process.stdin.flush()
    output = process.stdout.read()
    used = cpu() - before
    process.wait()
    server.kill()
    server.wait()
    result = json.loads(output)
    result["cpu"] = used
    result["steps"] = []
    return result


def summary(result: dict[str, object], clients: int) -> dict[str, object]:
    sent = result["sent"]
    stamps = result["stamps"]
    answered = result["answered"]
    assert isinstance(sent, list)
    assert isinstance(stamps, list)
    assert isinstance(answered, list)
    rows = []
    every: list[float] = []
    for at, got in zip(sent, stamps, strict=True):
        got = sorted((stamp - at) / 1e6 for stamp in got)
        every += got
        if len(got) == clients:
            rows.append((got[0], got[len(got) // 2 - 1], got[-1]))
    every.sort()
    deliveries = len(every)
    out: dict[str, object] = {
        "deliveries": deliveries,
        "expected": len(sent) * clients,
        "p50_ms": round(every[deliveries // 2], 3),
        "p99_ms": round(every[int(deliveries * 0.99)], 3),
        "first_ms": round(statistics.median(r[0] for r in rows), 3),
        "median_recipient_ms": round(statistics.median(r[1] for r in rows), 3),
        "last_ms": round(statistics.median(r[2] for r in rows), 3),
        # The quietest publications: what the code costs with the machine not interfering.
        "median_recipient_p10_ms": round(sorted(r[1] for r in rows)[len(rows) // 10], 3),
        "first_p10_ms": round(sorted(r[0] for r in rows)[len(rows) // 10], 3),
        "last_p10_ms": round(sorted(r[2] for r in rows)[len(rows) // 10], 3),
        "response_ms": round(
            statistics.median((b - a) / 1e6 for a, b in zip(sent, answered, strict=False)), 3
        ),
        "server_us_per_delivery": round(1e6 * float(result["cpu"]) / max(deliveries, 1), 3),
    }
    steps = result["steps"]
    if isinstance(steps, list) and steps:
        for name in ("w1", "whalf", "respond"):
            spans = sorted(
                step["cpu:" + name][0] - step["cpu:Request"][0]
                for step in steps
                if "cpu:" + name in step and "cpu:Request" in step
            )
            if spans:
                out[f"cpu_request_to_{name}_us"] = round(statistics.median(spans), 1)
        names = sorted(
            {name for step in steps for name in step if not name.startswith(("cpu:", "gc"))},
            key=lambda n: steps[0].get(n, [0])[0] if n in steps[0] else 1e9,
        )
        out["steps_us"] = {
            name: [
                round(
                    statistics.median(
                        step[name][i] for step in steps if len(step.get(name, [])) > i
                    ),
                    1,
                )
                for i in range(max(len(step.get(name, [])) for step in steps))
            ]
            for name in names
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--probe", action="store_true", help="stamp the server's steps too")
    parser.add_argument("--floor", action="store_true", help="measure the write floor instead")
    parser.add_argument("--json", type=Path, help="write the summary here too")
    parser.add_argument("--raw", type=Path, help="write every stamp here (JSON)")
    parser.add_argument("--slice", type=int, help="the flusher's slice size instead of FLUSH_SLICE")
    parser.add_argument("--turns", type=int, help="EXTRA_TURNS instead of its value")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import trio

    os.sched_setaffinity(0, {0})
    raw = floor(args) if args.floor else trio.run(serve, args)
    if args.raw is not None:
        args.raw.write_text(json.dumps(raw))
    result = summary(raw, args.clients)
    print(json.dumps(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
