"""What wildcard patterns cost a publication: one match, then end to end on loopback.

    .venv/bin/python scripts/bench_patterns.py match
    .venv/bin/python scripts/bench_patterns.py e2e [--set doubling|shapes|none]
        [--gateway-src DIR] [--holders 33] [--publications 300] [-- EXTRA GATEWAY FLAGS]

`match` times `PatternIndex.match` in this tree (or the one PYTHONPATH picks) for one
publication against: one pattern; the 32,768 patterns of every `x`/`*` mix over 15
segments followed by `z` ("doubling": each segment doubled a trie's frontier; the all-`x`
one is a plain topic), on a topic matching none of them; and 32,768 patterns in 256 shapes
("shapes": every `x`/`*` mix over 8 segments followed by one of 128 literals), the most
shapes `max_pattern_shapes` allows.

`e2e` starts a gateway from --gateway-src (default: this tree) pinned to core 0, spreads the
chosen set over --holders connections (a set the caps refuse is reported as refused), then
publishes --publications messages over POST /api/publish, one at a time, on a topic that
matches none of the patterns, to one more connection subscribed to that topic, and reports
the publish -> receive latency (p50, p99) of each. The caps in force are the gateway's own,
so holding the doubling set needs them raised: `-- --max-patterns 1000 --max-pattern-shapes
40000`. Owns nothing the gateway uses; every process it starts is stopped before it returns.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
TOKEN = "bench-patterns-key"
LISTENING = re.compile(
    r"ws://127\.0\.0\.1:(\d+)/api/ws \(HTTP API http://127\.0\.0\.1:(\d+)/api/\)"
)
STARTUP_TIMEOUT = 20.0


def doubling() -> Iterator[str]:
    for mix in itertools.product(("x", "*"), repeat=15):
        yield ".".join((*mix, "z"))


def shapes() -> Iterator[str]:
    for mix in itertools.product(("x", "*"), repeat=8):
        for n in range(128):
            yield ".".join((*mix, f"z{n}"))


SETS: dict[str, tuple[Callable[[], Iterator[str]], str]] = {
    # (patterns, a topic of the same length that none of them matches)
    "doubling": (doubling, ".".join(["x"] * 15 + ["y"])),
    "shapes": (shapes, ".".join(["x"] * 8 + ["y"])),
    "none": (lambda: iter(()), ".".join(["x"] * 15 + ["y"])),
}


def time_match(patterns: list[str], topic: str) -> tuple[float, int]:
    from trio_gateway.protocol.topics import PatternIndex

    index = PatternIndex()
    for pattern in patterns:
        index.add(pattern)
    runs = max(5, min(2000, 2_000_000 // max(1, len(patterns))))
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(runs):
            index.match(topic)
        best = min(best, (time.perf_counter() - started) / runs)
    # The trie counted nodes visited, the shape index counts lookups.
    cost = getattr(index, "lookups", getattr(index, "visits", -1))
    return best, cost


def run_match() -> None:
    cases = [
        ("1 pattern", ["x." * 15 + "z"], "x." * 15 + "y"),
        ("doubling: 32,768 in 32,768 shapes", list(doubling()), SETS["doubling"][1]),
        ("shapes: 32,768 in 256 shapes", list(shapes()), SETS["shapes"][1]),
    ]
    for label, patterns, topic in cases:
        seconds, cost = time_match(patterns, topic)
        print(f"{label:40} {seconds * 1e6:10.1f} us per match   cost units {cost}")


class Gateway:
    """A gateway subprocess pinned to core 0; `stop()` always ends it."""

    def __init__(self, source: Path, extra: list[str]) -> None:
        command = ["taskset", "-c", "0", PYTHON, "-m", "trio_gateway", "serve"]
        command += ["--host", "127.0.0.1", "--port", "0", "--api-key", TOKEN]
        # Holders do not answer the gateway's pings: none come during a run.
        command += ["--log-level", "warning", "--ping-interval", "3600", *extra]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=source,
            env={**os.environ, "PYTHONPATH": str(source)},
        )

    def ports(self) -> tuple[int, int]:
        assert self.process.stderr is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            match = LISTENING.search(line)
            if match:
                return int(match[1]), int(match[2])
        raise RuntimeError("the gateway did not start listening")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def hold(nursery: Any, ws_url: str, patterns: list[str], refused: list[str]) -> Any:
    """A connection that subscribes to `patterns` and then only holds them."""
    import trio_websocket

    ws = await trio_websocket.connect_websocket_url(nursery, ws_url)
    json.loads(await ws.get_message())  # ready
    window = 64  # subscribes in flight, so that setting up 32,768 takes seconds, not minutes
    for start in range(0, len(patterns), window):
        chunk = patterns[start : start + window]
        for pattern in chunk:
            await ws.send_message(json.dumps({"type": "subscribe", "topic": pattern}))
        for _ in chunk:
            reply = json.loads(await ws.get_message())
            if reply["type"] != "subscribed":
                refused.append(reply.get("message", repr(reply)))
    return ws


async def run_e2e(args: argparse.Namespace, ws_port: int, http_port: int) -> None:
    import trio
    import trio_websocket

    from trio_gateway.client.http import http_request

    make, topic = SETS[args.set]
    patterns = list(make())
    ws_url = f"ws://127.0.0.1:{ws_port}/api/ws?token={TOKEN}"
    async with trio.open_nursery() as nursery:
        refused: list[str] = []
        per = -(-len(patterns) // args.holders) if patterns else 0
        holders = [
            await hold(nursery, ws_url, patterns[start : start + per], refused)
            for start in range(0, len(patterns), per or 1)
        ]
        held = len(patterns) - len(refused)
        reason = f" (refused: {refused[0]})" if refused else ""
        print(f"set {args.set}: {held} of {len(patterns)} subscriptions held{reason}")
        reader = await trio_websocket.connect_websocket_url(nursery, ws_url)
        json.loads(await reader.get_message())
        await reader.send_message(json.dumps({"type": "subscribe", "topic": topic}))
        assert json.loads(await reader.get_message())["type"] == "subscribed"
        url = f"http://127.0.0.1:{http_port}/api/publish"
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        latencies = []
        for n in range(args.publications + 20):
            body = json.dumps({"topic": topic, "data": n}).encode()
            started = time.perf_counter()
            with trio.fail_after(10):
                status, _, _ = await http_request("POST", url, body=body, headers=headers)
                assert status == 202
                message = json.loads(await reader.get_message())
            arrived = time.perf_counter()
            assert message["data"] == n
            if n >= 20:  # the first ones warm the gateway up
                latencies.append((arrived - started) * 1000)
        cuts = statistics.quantiles(latencies, n=100)
        print(
            f"publish -> receive over {len(latencies)} publications: "
            f"p50 {cuts[49]:.2f} ms, p99 {cuts[98]:.2f} ms"
        )
        for ws in [*holders, reader]:
            await ws.aclose()
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("what", choices=("match", "e2e"))
    parser.add_argument("--set", choices=tuple(SETS), default="doubling")
    parser.add_argument("--gateway-src", default=str(ROOT))
    parser.add_argument("--holders", type=int, default=33)
    parser.add_argument("--publications", type=int, default=300)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    # After "--": flags for the gateway.
    args.extra = argv[cut + 1 :]
    if args.what == "match":
        run_match()
        return
    import trio

    gateway = Gateway(Path(args.gateway_src).resolve(), args.extra)
    try:
        trio.run(run_e2e, args, *gateway.ports())
    finally:
        gateway.stop()


if __name__ == "__main__":
    sys.exit(main())
