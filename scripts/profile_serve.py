"""Profile the gateway through one load generator scenario: cProfile or the garbage collector.

Usage: .venv/bin/python scripts/profile_serve.py [--scenario D] [--clients 5000]
           [--mode cprofile|gc] [--gateway-src DIR] [--out FILE]

Starts `trio-gateway serve` on core 0 under a small bootstrap that profiles only between
SIGUSR1 and SIGUSR2, runs scripts/bench_loadgen.py's scenario on core 1 in between (with
the caps bench.py lifts), and prints the load generator's figures, then:

- `cprofile`: the 40 functions with the most cumulative time; the stats go to --out (CPU
  time, `time.process_time`, not wall time, so other processes on the machine do not
  land on whatever function was running).
- `gc`: per generation, the collector's runs during the scenario and their CPU time.

Owns nothing but itself; sends traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "profile-key"
LISTENING = re.compile(
    rb"ws://127\.0\.0\.1:(\d+)/api/ws \(HTTP API http://127\.0\.0\.1:(\d+)/api/\)"
)
# Seconds for the server to settle after a signal (the profile dump, or the first read).
SETTLE = 0.5

BOOTSTRAP = r"""
import cProfile, gc, json, os, signal, sys, time
mode, out = os.environ["PROFILE_MODE"], os.environ["PROFILE_OUT"]
profile = cProfile.Profile(time.process_time)
runs, on, began = [], [False], [0.0]
def collected(phase, info):
    if not on[0]:
        return
    if phase == "start":
        began[0] = time.process_time()
    else:
        runs.append((info["generation"], time.process_time() - began[0]))
def start(*_):
    on[0] = True
    if mode == "cprofile":
        profile.enable()
def stop(*_):
    on[0] = False
    if mode == "cprofile":
        profile.disable()
        profile.dump_stats(out)
    else:
        with open(out, "w") as f:
            json.dump(runs, f)
gc.callbacks.append(collected)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
from trio_gateway.runtime.cli import main
main(sys.argv[1:])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="D", help="a bench_loadgen.py scenario [D]")
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--mode", choices=("cprofile", "gc"), default="cprofile")
    parser.add_argument("--gateway-src", type=Path, default=ROOT)
    parser.add_argument("--out", default="/tmp/trio-gateway-serve.prof")
    args = parser.parse_args()
    env = {
        **os.environ,
        "PYTHONPATH": str(args.gateway_src),
        "PROFILE_MODE": args.mode,
        "PROFILE_OUT": args.out,
        "TRIO_GATEWAY_MAX_CONNECTIONS_PER_IP": "0",
        "TRIO_GATEWAY_MAX_HANDSHAKES": "0",
    }
    command = ["taskset", "-c", "0", sys.executable, "-c", BOOTSTRAP, "serve"]
    command += ["--host", "127.0.0.1", "--port", "0", "--api-key", TOKEN]
    command += ["--log-level", "warning"]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, cwd=args.gateway_src)
    assert server.stderr is not None
    try:
        match = None
        while match is None:
            line = server.stderr.readline()
            if not line:
                raise SystemExit("the gateway did not start")
            match = LISTENING.search(line)
        server.send_signal(signal.SIGUSR1)
        time.sleep(SETTLE)
        loadgen = [sys.executable, str(ROOT / "scripts" / "bench_loadgen.py"), args.scenario]
        loadgen += ["--ws-port", match[1].decode(), "--http-port", match[2].decode()]
        loadgen += ["--token", TOKEN, "--server-pid", str(server.pid)]
        loadgen += ["--clients", str(args.clients), "--timeout", "120", "--seconds", "2"]
        result = subprocess.run(
            ["taskset", "-c", "1", *loadgen], capture_output=True, text=True, check=True
        )
        server.send_signal(signal.SIGUSR2)
        time.sleep(SETTLE)
    finally:
        server.terminate()
        server.wait(30)
    print(result.stdout.strip())
    if args.mode == "cprofile":
        pstats.Stats(args.out).sort_stats("cumulative").print_stats(40)
        return
    with open(args.out) as f:
        runs = json.load(f)
    for generation in (0, 1, 2):
        times = sorted(cpu for gen, cpu in runs if gen == generation)
        if times:
            total, worst = 1000 * sum(times), 1000 * times[-1]
            print(f"gen{generation}: {len(times)} runs, {total:.1f} ms CPU, longest {worst:.2f} ms")


if __name__ == "__main__":
    main()
