"""How long one more subscription takes to go live on the Redis broker, by keys already held.

    .venv/bin/python scripts/subscribe_cost.py [--held 1000,16000,32000] [--samples 50]

Owns nothing but the measurement: it starts a private redis-server (no persistence, an
ephemeral port), runs a `RedisBroker` in this process, makes it hold N keys, then times
`want(key)` -> the `when_live` callback (Redis confirmed the channel) and `unwant(key)` ->
the reconcile task idle again, one sample at a time. Reported per N: the median and p90 of
each, in ms. The cost must not grow with N (the broker sends only the difference).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trio_gateway.broker.redis import RedisBroker
from trio_gateway.fanout.publication import Delivery
from trio_gateway.runtime.config import Config

# Seconds left to the broker after the setup, before sampling.
SETTLE = 3.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _deliver(round_: Sequence[Delivery]) -> None:
    pass


async def _live(broker: RedisBroker, key: str) -> None:
    live = trio.Event()
    broker.when_live(key, live.set)
    await live.wait()


async def measure(url: str, held: int, samples: int) -> tuple[list[float], list[float]]:
    config = Config(redis_url=url, redis_prefix=f"cost{held}:")
    broker = RedisBroker(config, "cost")
    subscribe_ms: list[float] = []
    unsubscribe_ms: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run, _deliver)
        for n in range(held):
            broker.want(f"workspace:held{n}")
        await _live(broker, f"workspace:held{held - 1}")
        # The broker then reads the held keys' positions (broker/redis.py, _check_positions):
        # background work of the setup, not of the samples.
        await trio.sleep(SETTLE)
        for n in range(samples):
            key = f"workspace:probe{n}"
            start = time.perf_counter()
            broker.want(key)
            await _live(broker, key)
            subscribe_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            broker.unwant(key)
            # The reconcile task has sent the UNSUBSCRIBE once it waits for the next change.
            await trio.testing.wait_all_tasks_blocked()
            unsubscribe_ms.append((time.perf_counter() - start) * 1000)
        nursery.cancel_scope.cancel()
    return subscribe_ms, unsubscribe_ms


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)]


async def report(url: str, held_counts: list[int], samples: int) -> None:
    print("keys held | subscribe p50 ms | p90 | unsubscribe p50 ms | p90")
    for held in held_counts:
        sub, unsub = await measure(url, held, samples)
        print(
            f"{held:9d} | {statistics.median(sub):16.2f} | {_p90(sub):5.2f} | "
            f"{statistics.median(unsub):18.2f} | {_p90(unsub):5.2f}"
        )


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def main(held_counts: list[int], samples: int) -> None:
    executable = shutil.which("redis-server")
    if executable is None:
        sys.exit("redis-server is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        redis = subprocess.Popen(
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while not _answers_ping(port):
                if time.monotonic() > deadline:
                    sys.exit("redis-server did not start")
                time.sleep(0.01)
            trio.run(report, f"redis://127.0.0.1:{port}/0", held_counts, samples)
        finally:
            redis.terminate()
            redis.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", default="1000,16000,32000")
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    main([int(n) for n in args.held.split(",")], args.samples)
