"""What a hostile client costs a real gateway process in memory: issue 18's attack runs.

    python scripts/attack_rss.py fragments [--seconds 60] [--reconnect]
    python scripts/attack_rss.py bodies [--connections 400] [--seconds 15]

`fragments`: one raw connection sends a text message that never ends (a first fragment,
then 6-byte empty continuation frames as fast as the socket takes them) until the time is
up or the gateway closes it; with `--reconnect`, the next connection then starts over.
`bodies`: N connections each send a `POST /api/events` head announcing a 1 MiB body, without
credentials, then all of that body but its last byte, and wait to be answered (or for the
time to be up).

Each starts `python -m trio_gateway serve` on a free loopback port (the `trio_gateway` on
PYTHONPATH, so `PYTHONPATH=/other/checkout` measures another commit), warms it up, and prints
the gateway's RSS before, at most, and after, with the growth, as one JSON line on stdout.
`ATTACK_GATEWAY_ARGS="--close-timeout 0.05"` passes more flags to the gateway.
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from typing import Any

import trio

API_KEY = "attack-key"
HANDSHAKE = (
    b"GET /api/ws?token=" + API_KEY.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
MASK = b"\x00\x00\x00\x00"
FIRST_FRAGMENT = bytes([0x01, 0x80]) + MASK  # text, FIN clear, empty, masked
EMPTY_CONTINUATION = bytes([0x00, 0x80]) + MASK  # continuation, FIN clear, empty, masked
BODY_SIZE = 1024 * 1024


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_gateway(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "trio_gateway", "serve", "--host", "127.0.0.1"),
            *("--port", str(port), "--api-key", API_KEY, "--log-level", "warning"),
            # More settings for the gateway, e.g. "--close-timeout 0.05".
            *os.environ.get("ATTACK_GATEWAY_ARGS", "").split(),
        ],
        stderr=subprocess.PIPE,
        # Not this checkout's directory: `-m` puts the working directory first on sys.path,
        # ahead of PYTHONPATH.
        cwd="/",
    )
    assert process.stderr is not None
    for line in process.stderr:
        if b"listening on" in line:
            break
    else:
        raise RuntimeError("the gateway did not start")
    # Keep draining stderr so the gateway never blocks on a full pipe.
    subprocess.Popen(["cat"], stdin=process.stderr, stdout=subprocess.DEVNULL)
    return process


class Sampler:
    """The gateway's peak RSS, and its RSS every 5 s (is it still growing, or flat?)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.series: list[int] = []

    async def run(self) -> None:
        ticks = 0
        while True:
            rss = rss_kib(self.pid)
            self.peak = max(self.peak, rss)
            if ticks % 25 == 0:
                self.series.append(rss)
            ticks += 1
            await trio.sleep(0.2)


async def fragments(port: int, seconds: float, reconnect: bool, report: dict[str, Any]) -> None:
    burst = EMPTY_CONTINUATION * 10_000
    sent = connections = 0
    deadline = trio.current_time() + seconds
    while trio.current_time() < deadline:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        connections += 1
        async with stream:
            await stream.send_all(HANDSHAKE + FIRST_FRAGMENT)
            try:
                while trio.current_time() < deadline:
                    await stream.send_all(burst)
                    sent += len(burst)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # closed by the gateway (1009)
        if not reconnect:
            break
    # Bytes the gateway took, read as frames or discarded once it had closed 1009.
    report.update(bytes_sent=sent, connections=connections)


async def bodies(port: int, seconds: float, count: int, report: dict[str, Any]) -> None:
    answers: dict[str, int] = {}
    answered_in: list[float] = []

    async def one() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            head = (
                b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % BODY_SIZE
            )
            started = trio.current_time()
            async with trio.open_nursery() as nursery:

                async def send_most() -> None:
                    # Answered and closed before it was all sent, as often as not.
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await stream.send_all(head + b"x" * (BODY_SIZE - 1))

                nursery.start_soon(send_most)
                try:
                    answer = await stream.receive_some(4096)
                except trio.BrokenResourceError:
                    answer = b""
                status = answer[9:12].decode() if answer else "closed"
                answers[status] = answers.get(status, 0) + 1
                answered_in.append(trio.current_time() - started)
                nursery.cancel_scope.cancel()

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
    report.update(
        connections=count,
        answers=answers,
        slowest_answer_s=round(max(answered_in), 3) if answered_in else None,
    )


async def attack(args: argparse.Namespace, pid: int, port: int, report: dict[str, Any]) -> None:
    sampler = Sampler(pid)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler.run)
        if args.scenario == "fragments":
            await fragments(port, args.seconds, args.reconnect, report)
        else:
            await bodies(port, args.seconds, args.connections, report)
        nursery.cancel_scope.cancel()
    report["rss_peak_kib"] = sampler.peak
    report["rss_every_5s_kib"] = sampler.series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["fragments", "bodies"])
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--reconnect", action="store_true")
    args = parser.parse_args()
    args.seconds = args.seconds or (60.0 if args.scenario == "fragments" else 15.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    port = free_port()
    gateway = start_gateway(port)
    try:
        # Warm up with a short run of the same attack, so the baseline holds what any
        # first client costs (lazy imports, allocator arenas) and the growth is what the
        # attack keeps pinning.
        trio.run(attack, argparse.Namespace(**{**vars(args), "seconds": 3}), gateway.pid, port, {})
        time.sleep(1)
        report: dict[str, Any] = {"scenario": args.scenario, "seconds": args.seconds}
        report["rss_before_kib"] = rss_kib(gateway.pid)
        trio.run(attack, args, gateway.pid, port, report)
        time.sleep(1)
        report["rss_after_kib"] = rss_kib(gateway.pid)
        report["rss_growth_kib"] = report["rss_peak_kib"] - report["rss_before_kib"]
        print(json.dumps(report))
    finally:
        gateway.terminate()
        gateway.wait(15)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
