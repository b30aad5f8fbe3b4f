"""Scenario R, a reconnect storm: every client of a gateway dropped at once comes back, resumes
and catches up, with nothing lost and nothing twice.

    .venv/bin/python scripts/bench_storm.py [--clients 3000] [--rate 5] [--during 10]
        [--gateway-src DIR] [--json FILE]
    .venv/bin/python scripts/bench.py --scenarios R      (the same, from the benchmark)

Owns the storm's orchestration and its client side. It starts a private redis-server and
two gateways on it (scripts/bench.py's Server and RedisServer: pinned to core 0, this process
to core 1 when run from bench.py): A, which holds the clients, and B, which takes a steady
stream of publications (`--rate` per second, POST /api/publish on topic `storm`, each answer
giving the offset). The clients are the Python client library (`trio_gateway.client`), each
subscribed to `storm`, with its jittered reconnect backoff (0.5 s doubling to 5 s, uniform
below) and resume from its last offset. Once every client has its first publication, A is
killed (SIGKILL: every socket drops at once) and started again on the same port; publishing
goes on for `--during` seconds, then stops.

Reported (JSON on the last line of stdout, a summary on stderr): seconds from the kill until
every client is connected and subscribed again (`all_back_s`) and until every client has
every publication made until then (`caught_up_s`); after publishing stopped, and every
client had time to get everything: `lost` (publications some client never got, summed over
clients), `duplicates` (deliveries of an offset the client already had), `not_recovered`
(resumes the server could not bridge), the clients' reconnects, and the machine's busy time
over the storm (both cores, % of one core) as a measure of how loaded the machine was.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import TOKEN, RedisServer, Server, server_command
from bench_loadgen import machine_busy

from trio_gateway.client import open_client

TOPIC = "storm"
# Clients connecting at once while the storm is set up (not during it: then all come at once).
SETUP_CONCURRENCY = 256
# Seconds every client has to catch up after publishing stopped before the rest counts lost.
CATCH_UP_LIMIT = 60.0


class Tally:
    """What one client received: each offset once, the duplicates counted."""

    def __init__(self) -> None:
        self.offsets: set[int] = set()
        self.duplicates = 0
        self.not_recovered = 0
        self.connects = 0
        self.connected_at = 0.0


class Storm:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tallies = [Tally() for _ in range(args.clients)]
        self.published: list[int] = []
        self.killed_at: float | None = None
        self.progress = trio.Event()

    async def client(self, url: str, tally: Tally, task_status: trio.TaskStatus[None]) -> None:
        def connected(_: str) -> None:
            tally.connects += 1
            tally.connected_at = trio.current_time()
            self.progress.set()

        async with open_client(
            url,
            TOKEN,
            subscriptions=[TOPIC],
            backoff_initial=0.5,
            backoff_max=5.0,
            connect_timeout=30.0,
            on_connect=connected,
        ) as client:
            task_status.started()
            async for message in client:
                if message.get("type") == "subscribed" and message.get("recovered") is False:
                    tally.not_recovered += 1
                    continue
                offset = message.get("offset")
                if not isinstance(offset, int):
                    continue
                if offset in tally.offsets:
                    tally.duplicates += 1
                else:
                    tally.offsets.add(offset)
                self.progress.set()

    def publisher(self, base: str, stop: threading.Event) -> None:
        """Publish at `--rate` until `stop`; a thread of its own, so that the clients' work
        in this process (thousands of them reconnecting) does not delay the stream."""
        period = 1.0 / self.args.rate
        next_at = time.monotonic()
        n = 0
        while not stop.is_set():
            n += 1
            request = urllib.request.Request(
                base + "/api/publish",
                data=json.dumps({"topic": TOPIC, "data": {"n": n}}).encode(),
                headers={"authorization": f"Bearer {TOKEN}"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                self.published.append(json.loads(answer.read())["offsets"][0])
            next_at += period
            stop.wait(max(0.0, next_at - time.monotonic()))

    def everyone_has(self, offsets: set[int]) -> bool:
        return all(offsets <= tally.offsets for tally in self.tallies)

    async def wait_for(self, check: Any, limit: float) -> bool:
        with trio.move_on_after(limit):
            while not check():
                self.progress = trio.Event()
                await self.progress.wait()
            return True
        return False


def counters(http_port: int) -> dict[str, float]:
    """The restarted gateway's closes by code and resumes by outcome, from /metrics."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/metrics", headers={"authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read().decode()
    found = {}
    for line in text.splitlines():
        if not line.startswith("#") and ("disconnects_total" in line or "recoveries_total" in line):
            name, _, value = line.rpartition(" ")
            found[name.removeprefix("trio_gateway_")] = float(value)
    return found


async def run(args: argparse.Namespace, redis: RedisServer) -> dict[str, Any]:
    source = Path(args.gateway_src)
    a = Server(server_command("gateway", "R", args, redis.url), source)
    b = Server(server_command("gateway", "R", args, redis.url), source)
    servers = [a, b]
    try:
        ws_port, _ = a.wait_listening()
        _, b_http = b.wait_listening()
        url = f"ws://127.0.0.1:{ws_port}/api/ws"
        storm = Storm(args)
        stop = threading.Event()
        publisher = threading.Thread(
            target=storm.publisher, args=(f"http://127.0.0.1:{b_http}", stop), daemon=True
        )
        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(SETUP_CONCURRENCY)
            started = trio.Event()
            remaining = len(storm.tallies)

            async def connect_one(tally: Tally) -> None:
                nonlocal remaining
                async with limiter:
                    await nursery.start(storm.client, url, tally)
                remaining -= 1
                if remaining == 0:
                    started.set()

            setup_began = time.monotonic()
            for tally in storm.tallies:
                nursery.start_soon(connect_one, tally)
            await started.wait()
            setup_s = time.monotonic() - setup_began
            publisher.start()
            first_ok = await storm.wait_for(
                lambda: storm.published and storm.everyone_has({storm.published[0]}), 60
            )
            if not first_ok:
                raise RuntimeError("the clients did not get the first publication")

            busy_before, wall_before = machine_busy(), time.monotonic()
            connects_before = [tally.connects for tally in storm.tallies]
            killed_at = trio.current_time()
            a.process.send_signal(signal.SIGKILL)
            a.stop()
            command = server_command("gateway", "R", args, redis.url)
            command[command.index("--port") + 1] = str(ws_port)
            a = Server(command, source)
            servers.append(a)
            _, http_port = a.wait_listening()
            restart_s = trio.current_time() - killed_at

            def all_back() -> bool:
                return all(
                    tally.connects > before
                    for tally, before in zip(storm.tallies, connects_before, strict=True)
                )

            back = await storm.wait_for(all_back, args.during + CATCH_UP_LIMIT)
            all_back_s = (
                max(tally.connected_at for tally in storm.tallies) - killed_at if back else None
            )
            # Caught up: every client has everything published until the last one was back.
            until_back = set(storm.published)
            caught_up = await storm.wait_for(lambda: storm.everyone_has(until_back), CATCH_UP_LIMIT)
            caught_up_s = trio.current_time() - killed_at if caught_up else None
            await trio.sleep_until(killed_at + args.during)
            stop.set()
            await trio.to_thread.run_sync(publisher.join)
            expected = set(storm.published)
            await storm.wait_for(lambda: storm.everyone_has(expected), CATCH_UP_LIMIT)
            busy = 100 * (machine_busy() - busy_before) / (time.monotonic() - wall_before)
            gateway_counts = await trio.to_thread.run_sync(counters, http_port)
            nursery.cancel_scope.cancel()
        lost = sum(len(expected - tally.offsets) for tally in storm.tallies)
        return {
            "clients": args.clients,
            "rate": args.rate,
            "setup_s": round(setup_s, 2),
            "restart_s": round(restart_s, 2),
            "all_back_s": None if all_back_s is None else round(all_back_s, 2),
            "caught_up_s": None if caught_up_s is None else round(caught_up_s, 2),
            "published": len(expected),
            "lost": lost,
            "duplicates": sum(tally.duplicates for tally in storm.tallies),
            "not_recovered": sum(tally.not_recovered for tally in storm.tallies),
            "reconnects": sum(tally.connects for tally in storm.tallies) - args.clients,
            "machine_busy_pct": round(busy, 1),
            "restarted_gateway": gateway_counts,
            "server_complaints": [line for s in servers for line in s.complaints()][:10],
        }
    finally:
        for server in servers:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=5.0, help="publications per second")
    parser.add_argument("--during", type=float, default=10.0, help="seconds of publishing")
    parser.add_argument("--gateway-src", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    # Each client logs its drop and its reconnect delay: thousands of lines in a storm.
    logging.getLogger("trio_gateway.client").setLevel(logging.ERROR)
    redis = RedisServer()
    try:
        result = trio.run(run, args, redis)
    finally:
        redis.stop()
    summary = (
        f"{result['clients']} clients: all back {result['all_back_s']} s and caught up "
        f"{result['caught_up_s']} s after the kill; {result['published']} published, lost "
        f"{result['lost']}, duplicates {result['duplicates']}, not recovered "
        f"{result['not_recovered']}; machine busy {result['machine_busy_pct']}% of a core"
    )
    print(summary, file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
