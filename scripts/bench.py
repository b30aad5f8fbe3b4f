"""Benchmark trio_gateway against four peer servers and a floor, side by side, on loopback.

    .venv/bin/python scripts/bench.py [--quick] [--scenarios A,L,C,D,X,P,R,S] [--repeat N]
        [--targets gateway,naive_trio,aiohttp,websockets,node_ws,write_floor]
        [--json bench-results.json] [--gateway-src DIR] [--parent-src DIR] [--loadgen-sleeps]
        [--x-rate 50] [--members 5000] [--scale-sizes 1000,5000,20000]
    make bench BENCH_ARGS="--quick --repeat 3"

The peers (scripts/bench_peers/) speak the protocol subset the load generator uses, each
written as that library's experienced user would: naive_trio (trio-websocket, awaiting each
send), aiohttp, websockets (its `broadcast()`), and node_ws (Node's `ws`; its packages are
installed in its own folder by `make bench`, `npm ci --prefix scripts/bench_peers/node_ws`).
With --repeat N every cell runs N times, interleaved (each target once per round), and the
table shows the median with the (min-max) spread; lost and duplicates are summed.

Owns the orchestration and the report. For every scenario and every target (the gateway as
a subprocess, `python -m trio_gateway serve`, and the baseline servers in
scripts/bench_peers/), it waits for the machine to be idle, starts a fresh server pinned to
core 0 (`taskset -c 0`), runs scripts/bench_loadgen.py pinned to core 1, collects its JSON,
and always stops both (bounded waits, SIGKILL last). A run during which other processes took
more than 15% of a core is repeated (twice at most) and the least disturbed attempt kept.

What is measured, and how: the load generator reads the server's CPU (/proc/PID/stat,
utime + stime) and RSS (/proc/PID/status, VmRSS) at the edges of each measured phase, and
its own CPU and busy time. It spins on epoll instead of sleeping (unless --loadgen-sleeps):
on this VM, a loopback send() to a peer asleep on another core costs the sender ~25 us of
wake-up work, which would be charged to the server although a remote client never costs it
that; so its CPU reads ~100% and "loadgen busy %" (time spent handling ready sockets) is the
figure that says whether it kept up. "other CPU %" is the machine's busy time that was
neither the server's nor the load generator's: other processes (a shared machine) or
uncharged interrupt work.

Scenarios (defaults; --quick scales them down):
  A  throughput: 1,000 subscribed clients, 20,000 events in batches of 100, each batch
     posted as soon as the previous one is accepted; no batch is posted after --a-budget
     seconds (120), and what was posted is still delivered, counted and timed, so a slow
     baseline reports its rate over fewer events. deliveries/s = deliveries / (first post
     -> last delivery); server us/delivery = server CPU over that window / deliveries. The
     gateway runs with --queue-depth events + 1,000 so the slow-consumer policy (close
     4008) cannot interfere.
  L  latency: 1,000 clients, 50 events/s, one per request, for 10 s; publish (just before
     the request is written) -> receive time of every delivery. A request still unanswered
     when the next is due goes out on another connection, so events may overlap and be
     "reordered" across requests; that is not an error.
  C  idle: 5,000 subscribed connections held 20 s. The gateway pings every 5 s instead of 30
     (--ping-interval 5) and the aiohttp, websockets and node_ws peers ping every 5 s, so the
     window holds four keepalive cycles; the naive peer has no keepalive at all. Connects
     run 100 at a time; connect->ready percentiles are over them. RSS per connection is
     (RSS after the hold - RSS before connecting, after a 10-connection warm-up) /
     connections. An event published after the hold must reach every connection.
  D  connect storm: 5,000 connects, opened as fast as the load generator can; connect() ->
     `ready` frame time of each.
  X  cross-instance latency (the gateway only, no baselines): L's measurement at 50 events/s
     (--x-rate) for 10 s, three ways side by side: two gateways sharing a private
     redis-server, 1,000 clients subscribed on A and every event published on B; one
     gateway with the same Redis broker (clients and publisher on it); one gateway with the
     memory broker. Every server-side process (gateways and redis-server, started fresh for
     each run on an ephemeral port, without persistence) is pinned to core 0, so the three
     share one core's budget and the table shows what crossing instances costs on it; their
     CPU is summed into the server CPU (and shown per process).
  P  presence (the gateway only, --presence-topic bench.presence): an observer subscribes
     to the topic, then 5,000 clients (--members, API keys: each its own user) join it
     through the usual set-up (256 connecting at once). Reported: when the observer has
     seen the last join (from the first connect, and after the last subscribe ack), the
     diffs it received, presence.state/presence.diff frames and bytes every client received
     (each member gets the state once and every diff after it), and then the round trip of
     --gets presence.get calls, one at a time, with every member there.

  R  reconnect storm (the gateway only, not in the default set; scripts/bench_storm.py):
     3,000 clients (--storm-clients) of the Python client library on gateway A, subscribed
     to a topic with recovery, while gateway B (same private redis-server) takes
     --storm-rate publications/s; A is killed (SIGKILL) and restarted on its port, every
     client reconnects with its jittered backoff and resumes from its offset. Reported:
     seconds until all are back and until all have caught up, lost, duplicates, resumes not
     recovered, and the machine's busy time over the storm. The storm script runs on core 1,
     the servers on core 0.

  S  scaling (the gateway only): L at each of --scale-sizes subscribers (1,000, 5,000,
     20,000), the rate lowered to keep --scale-deliveries (50,000 deliveries/s: 50, 10, 2.5
     events/s) and publishing long enough for --scale-events (100) events at each size;
     then C at the largest size (--scale-idle). The L runs' gateway pings every 600 s
     (--scale-ping-interval), so no keepalive cycle falls in them: at 20,000 connections
     one is some 2 s of CPU, and whether a run caught one would decide that size's cost;
     the idle run measures the keepalive instead. Reported per size: server
     us/delivery and its ratio to the cheapest size's (the target: dearest/cheapest <= 1.2,
     i.e. any two sizes within 20%; the cheapest rather than the 1,000 value, so that a
     curve dipping in the middle counts too), p50/p99, lost/duplicates; and the idle
     connections' RSS each and server CPU % while idle (the keepalive's share). With
     write_floor among --targets, the floor runs L at each size too, right after the
     gateway: how much of the curve is the kernel's and the machine's (a second check
     takes the gateway's cost over the floor's at each size, dearest/cheapest). Each side
     holds every connection in one process: every process started here gets its soft
     RLIMIT_NOFILE raised to the hard one, and a size that would not fit under it (less
     DESCRIPTOR_HEADROOM) is capped, which the report says.

With --parent-src, target `parent` (another gateway tree) runs right after `gateway` in A, L,
C and D, and the table's gw/parent column is their ratio; targets_met checks that A's
deliveries/s and L's server us/delivery are within PARENT_NOISE (10%) of the parent's, one
way: a change may be faster. A gateway tree gets only the flags its `serve --help` lists.

write_floor (scripts/bench_peers/write_floor.py) is a reference, not a baseline: a bare
selector loop whose fan-out is one send() of a prebuilt frame per subscriber. It runs L only;
its latency is what the kernel and this machine cost at the time, so "gw/floor" says how much
of the gateway's latency is its own (on this VM the floor moves by milliseconds with the
host's load, which is why it is measured in the same run).

Every run checks correctness: lost, duplicate and reordered deliveries, close codes the
server sent, and warnings or errors on the server's stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench_loadgen import machine_busy

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
LOADGEN = str(ROOT / "scripts" / "bench_loadgen.py")
PEERS = ROOT / "scripts" / "bench_peers"
TOKEN = "bench-key"
TARGETS = ("gateway", "naive_trio", "aiohttp", "websockets", "node_ws", "write_floor")
# With --parent-src, "parent" is a second gateway (another source tree, e.g. the parent commit)
# run right after "gateway" in every scenario but X, so a change is measured against its
# parent in one invocation, interleaved.
COLUMNS = ("gateway", "parent", "naive_trio", "aiohttp", "websockets", "node_ws", "write_floor")
SHORT = {
    "parent": "parent",
    "naive_trio": "naive",
    "aiohttp": "aiohttp",
    "websockets": "wsockets",
    "node_ws": "node",
    "write_floor": "floor",
}
# The peers a gateway figure is held against ("the best peer"): servers, not the floor.
PEERS_COMPARED = ("naive_trio", "aiohttp", "websockets", "node_ws")
NODE_PEER = PEERS / "node_ws"
# The scenarios the write floor takes part in (it has no keepalive and no limits).
FLOOR_SCENARIOS = ("L",)
SERVER_CORE, LOADGEN_CORE = "0", "1"
# Scenario P's presence topic (the load generator's too).
PRESENCE_TOPIC = "bench.presence"
# The scenarios only the gateway runs (the peers have no such feature; S's point is the
# gateway's own curve, with the write floor's beside it).
GATEWAY_ONLY = ("X", "P", "R", "S")
# The scenarios whose result is one run per variant ({variant: result}), in tables of their own.
VARIANTS = ("X", "S")
# Descriptors a process of this benchmark keeps beyond its WebSockets: the gateway's reserve
# (transport/limits.py, 128) plus its listeners and publishers' connections, or the load
# generator's publishers (64 at most), epoll and stdio. S's sizes stay under the hard
# RLIMIT_NOFILE by this much, rounded down to a hundred.
DESCRIPTOR_HEADROOM = 200
# S's L runs: the gateway's ping interval (s), longer than set-up and a run together. At
# 20,000 connections one keepalive cycle is some 2 s of CPU; whether a run's window caught
# one or not would move that size's cost per delivery by more than the 20% looked for, so
# the keepalive is measured apart, by the idle run.
SCALE_PING_INTERVAL = 600.0
STORM = str(ROOT / "scripts" / "bench_storm.py")
# Seconds between keepalive pings in scenario C (gateway and aiohttp).
IDLE_PING_INTERVAL = 5
LISTENING = re.compile(
    rb"ws://127\.0\.0\.1:(\d+)/api/ws \(HTTP API http://127\.0\.0\.1:(\d+)/api/\)"
)
STARTUP_TIMEOUT = 20.0
# The gateway's connection caps, each set to 0 (none) for every run: flags, passed only to a
# tree whose `serve --help` lists them (a variable it does not know is a warning on stderr).
CAPS_OFF = ("--max-connections-per-ip", "--max-handshakes", "--max-connections")
# Before each run, wait (at most --quiet-wait s, default QUIET_WAIT) until the machine's busy
# time is under QUIET_PCT
# of one core: this benchmark needs both cores to itself.
QUIET_PCT, QUIET_WAIT = 10.0, 60.0
# A run during which other processes used more than this (% of a core) is repeated, up to
# RETRIES times, and the least disturbed attempt is kept.
DISTURBED_PCT, RETRIES = 15.0, 2
# Scenario X, one run each: (key, description, gateway instances, with a Redis broker).
CROSS_VARIANTS = [
    ("cross", "A + B + Redis", 2, True),
    ("single_redis", "1 gateway + Redis", 1, True),
    ("single_memory", "1 gateway, memory", 1, False),
]


def serve_flags(source: Path) -> frozenset[str]:
    """The flags `serve` of the gateway tree at `source` takes (from its --help)."""
    if source not in _SERVE_FLAGS:
        done = subprocess.run(
            [PYTHON, "-m", "trio_gateway", "serve", "--help"],
            capture_output=True,
            text=True,
            cwd=source,
            env={**os.environ, "PYTHONPATH": str(source)},
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join(done.stderr.splitlines()[-5:])
            raise SystemExit(f"{source}: `trio_gateway serve --help` failed:\n{tail}")
        _SERVE_FLAGS[source] = frozenset(re.findall(r"--[a-z][a-z0-9-]*", done.stdout))
    return _SERVE_FLAGS[source]


_SERVE_FLAGS: dict[Path, frozenset[str]] = {}


def known_options(
    options: list[tuple[str, str]], known: frozenset[str]
) -> tuple[list[str], list[str]]:
    """`options` as arguments, less those the tree does not know; and the flags left out."""
    kept = [part for flag, value in options if flag in known for part in (flag, value)]
    return kept, [flag for flag, _ in options if flag not in known]


def server_command(
    target: str,
    scenario: str,
    args: argparse.Namespace,
    redis_url: str | None = None,
    source: Path | None = None,
) -> list[str]:
    """The command starting `target` for `scenario`; a gateway tree (`source`, by default
    --gateway-src) gets only the flags its `serve --help` lists, so an older tree still starts
    (what it lacks is said on stderr once)."""
    if target in ("gateway", "parent"):
        command = [PYTHON, "-m", "trio_gateway", "serve", "--host", "127.0.0.1", "--port", "0"]
        command += ["--api-key", TOKEN, "--log-level", "warning"]
        # Every load-generator client comes from 127.0.0.1, scenario D connects 5,000 at once
        # and S holds 20,000: the caps are for the internet, not this (0: none; the total then
        # stays bound by the descriptors, which main() raises to the hard limit).
        options = [(flag, "0") for flag in CAPS_OFF]
        if redis_url is not None:
            options.append(("--redis-url", redis_url))
        if scenario == "A":
            options.append(("--queue-depth", str(args.events + 1000)))
        if scenario == "C":
            options.append(("--ping-interval", str(IDLE_PING_INTERVAL)))
        elif getattr(args, "ping_interval", None):
            options.append(("--ping-interval", str(args.ping_interval)))
        if scenario == "P":
            options.append(("--presence-topic", PRESENCE_TOPIC))
        tree = source or Path(getattr(args, "gateway_src", ROOT))
        kept, missing = known_options(options, serve_flags(tree))
        if missing and (tree, *missing) not in _WARNED:
            _WARNED.add((tree, *missing))
            print(f"  {tree} does not know {', '.join(missing)}: not passed", file=sys.stderr)
        return command + kept
    if target == "naive_trio":
        return [PYTHON, str(PEERS / "naive_trio.py"), "--api-key", TOKEN]
    if target == "write_floor":
        return [PYTHON, str(PEERS / "write_floor.py"), "--api-key", TOKEN]
    heartbeat = ["--heartbeat", str(IDLE_PING_INTERVAL if scenario == "C" else 30)]
    if target == "node_ws":
        return ["node", str(NODE_PEER / "server.mjs"), "--api-key", TOKEN, *heartbeat]
    script = "websockets_peer.py" if target == "websockets" else "aiohttp_peer.py"
    return [PYTHON, str(PEERS / script), "--api-key", TOKEN, *heartbeat]


_WARNED: set[tuple[object, ...]] = set()


def loadgen_arguments(scenario: str, args: argparse.Namespace) -> tuple[list[str], float]:
    """Scenario flags for the load generator, and how long it may run in all."""
    if scenario == "A":
        flags = ["--clients", args.clients, "--events", args.events, "--batch", args.batch]
        flags += ["--budget", args.a_budget, "--timeout", args.a_budget + 300]
        return [str(f) for f in flags], args.a_budget + 600
    if scenario in ("L", "X"):
        rate = args.rate if scenario == "L" else args.x_rate
        flags = ["--clients", args.clients, "--rate", rate, "--seconds", args.latency_seconds]
        return [str(f) for f in [*flags, "--timeout", 60]], args.latency_seconds + 300
    if scenario == "C":
        flags = ["--clients", args.idle, "--seconds", args.hold]
        return [str(f) for f in flags], args.hold + 400
    if scenario == "P":
        flags = ["--clients", args.members, "--gets", args.gets, "--timeout", 180]
        return [str(f) for f in flags], 400
    return [str(f) for f in ["--clients", args.connects, "--timeout", 120]], 300


class Server:
    """One server process pinned to SERVER_CORE, with its stderr collected in a thread."""

    def __init__(self, command: list[str], source: Path) -> None:
        # `python -m` puts the working directory first on sys.path, and PYTHONPATH comes
        # before the editable install's finder: together they pick the gateway source tree.
        env = {**os.environ, "PYTHONPATH": str(source)}
        self.process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=source,
            env=env,
        )
        self.lines: list[bytes] = []
        self.ports: tuple[int, int] | None = None
        self.started = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            match = LISTENING.search(line)
            if match and self.ports is None:
                self.ports = (int(match[1]), int(match[2]))
                self.started.set()
            else:
                self.lines.append(line)
        self.started.set()

    def wait_listening(self) -> tuple[int, int]:
        self.started.wait(STARTUP_TIMEOUT)
        if self.ports is None:
            tail = b"".join(self.lines[-20:]).decode(errors="replace")
            raise RuntimeError(f"server did not start listening:\n{tail}")
        return self.ports

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.reader.join(5)
        return self.process.returncode

    def complaints(self) -> list[str]:
        """stderr lines at warning level or above (or not JSON at all)."""
        found = []
        for raw in self.lines:
            line = raw.decode(errors="replace").strip()
            try:
                level = json.loads(line).get("level", "")
            except (ValueError, AttributeError):
                level = "text"
            if line and level not in ("debug", "info"):
                found.append(line[:300])
        return found


class RedisServer:
    """A private redis-server on 127.0.0.1 for scenario X: no persistence, pinned to
    SERVER_CORE like the gateways it serves."""

    def __init__(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [
                *("taskset", "-c", SERVER_CORE, executable, "--port", str(self.port)),
                *("--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/tmp",
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def wait_for_quiet(wait: float) -> float:
    """Wait until the machine is idle, or `wait` s; the last 1 s busy share (% of a core)."""
    deadline = time.monotonic() + wait
    while True:
        before = machine_busy()
        time.sleep(1.0)
        busy = 100 * (machine_busy() - before)
        if busy < QUIET_PCT or time.monotonic() > deadline:
            return round(busy, 1)


def run_loadgen(
    scenario: str, args: argparse.Namespace, ws_port: int, http_port: int, pids: list[int]
) -> dict[str, Any]:
    """One load generator run pinned to LOADGEN_CORE; its JSON, or {"error": ...}.

    `pids` are the server-side processes: their CPU is the server's (the first one's RSS).
    """
    flags, limit = loadgen_arguments(scenario, args)
    command = ["taskset", "-c", LOADGEN_CORE, PYTHON, LOADGEN, "L" if scenario == "X" else scenario]
    command += ["--ws-port", str(ws_port), "--http-port", str(http_port), "--token", TOKEN]
    for pid in pids:
        command += ["--server-pid", str(pid)]
    command += flags
    if args.loadgen_sleeps:
        command.append("--sleep")
    try:
        done = subprocess.run(command, capture_output=True, timeout=limit, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"load generator killed after {limit:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr.decode(errors="replace").strip()[-2000:]}
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def quiet_before_run(args: argparse.Namespace) -> float:
    busy_before = wait_for_quiet(args.quiet_wait)
    if busy_before >= QUIET_PCT:
        print(f"  warning: machine still {busy_before}% busy before the run", file=sys.stderr)
    return busy_before


def run_one(target: str, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    busy_before = quiet_before_run(args)
    source = args.parent_src if target == "parent" else args.gateway_src
    server = Server(server_command(target, scenario, args, source=source), source)
    try:
        try:
            ws_port, http_port = server.wait_listening()
        except RuntimeError as exc:
            return {"error": str(exc)}
        result = run_loadgen(scenario, args, ws_port, http_port, [server.process.pid])
    finally:
        status = server.stop()
    result["machine_busy_before_pct"] = busy_before
    result["server_exit"] = status
    result["server_complaints"] = server.complaints()[:20]
    return result


def run_cross(instances: int, with_redis: bool, args: argparse.Namespace) -> dict[str, Any]:
    """Scenario X, one variant: clients on the first gateway, publishing on the last."""
    busy_before = quiet_before_run(args)
    try:
        redis = RedisServer() if with_redis else None
    except RuntimeError as exc:
        return {"error": str(exc)}
    url = redis.url if redis is not None else None
    servers: list[Server] = []
    try:
        for _ in range(instances):
            command = server_command("gateway", "X", args, url, args.gateway_src)
            servers.append(Server(command, args.gateway_src))
        try:
            ports = [server.wait_listening() for server in servers]
        except RuntimeError as exc:
            return {"error": str(exc)}
        pids = [server.process.pid for server in servers]
        if redis is not None:
            pids.append(redis.process.pid)
        result = run_loadgen("X", args, ports[0][0], ports[-1][1], pids)
    finally:
        statuses = [server.stop() for server in servers]
        if redis is not None:
            redis.stop()
    result["machine_busy_before_pct"] = busy_before
    result["server_exit"] = next((s for s in statuses if s), 0)
    result["server_complaints"] = [line for s in servers for line in s.complaints()][:20]
    names = ["gateway A", "gateway B"] if instances == 2 else ["gateway"]
    result["processes"] = names + (["redis-server"] if redis is not None else [])
    return result


def run_storm(args: argparse.Namespace) -> dict[str, Any]:
    """Scenario R: scripts/bench_storm.py on LOADGEN_CORE (it starts its servers on
    SERVER_CORE); its JSON, or {"error": ...}."""
    busy_before = quiet_before_run(args)
    command = ["taskset", "-c", LOADGEN_CORE, PYTHON, STORM, "--clients", str(args.storm_clients)]
    command += ["--rate", str(args.storm_rate), "--during", str(args.storm_during)]
    command += ["--gateway-src", str(args.gateway_src)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=900, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return {"error": "storm killed after 900 s"}
    if done.returncode != 0:
        return {"error": done.stderr.decode(errors="replace").strip()[-2000:]}
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    result["machine_busy_before_pct"] = busy_before
    return result


def scaling_sizes(asked: list[int], hard_limit: int) -> tuple[list[int], list[str]]:
    """S's subscriber counts: each asked one, capped at what `hard_limit` descriptors allow
    (one process holds every WebSocket on each side); and a note for each one capped."""
    most = (hard_limit - DESCRIPTOR_HEADROOM) // 100 * 100
    sizes: list[int] = []
    notes = []
    for n in asked:
        if n > most:
            notes.append(
                f"S: {n:,} subscribers asked, {most:,} run: the hard RLIMIT_NOFILE is"
                f" {hard_limit:,} (ulimit -Hn; raising it needs CAP_SYS_RESOURCE)"
            )
            n = most
        if n not in sizes:
            sizes.append(n)
    return sizes, notes


def scaled(args: argparse.Namespace, clients: int) -> argparse.Namespace:
    """L's settings at `clients` subscribers for S: the rate lowered to keep deliveries/s at
    --scale-deliveries, publishing long enough for --scale-events events, the gateway pinging
    every --scale-ping-interval seconds."""
    rate = args.scale_deliveries / clients
    seconds = max(args.latency_seconds, args.scale_events / rate)
    settings = {"clients": clients, "rate": rate, "latency_seconds": seconds}
    return argparse.Namespace(
        **{**vars(args), **settings, "ping_interval": args.scale_ping_interval}
    )


def run_scaling(
    args: argparse.Namespace, sizes: list[int], idle: int, targets: list[str]
) -> dict[str, dict[str, Any]]:
    """Scenario S: L at each size (`L N`), the write floor's right after the gateway's when it
    is among `targets`, then C at `idle` (`C N`, the gateway only); every cell once per
    repetition (interleaved). {target: {variant: result}}."""
    floor = ["write_floor"] if "write_floor" in targets else []
    plan = [
        (target, f"L {n}", "L", scaled(args, n)) for n in sizes for target in ["gateway", *floor]
    ]
    if idle:
        idle_args = argparse.Namespace(**{**vars(args), "idle": idle})
        plan.append(("gateway", f"C {idle}", "C", idle_args))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(t, key): [] for t, key, *_ in plan}
    for repetition in range(args.repeat):
        for target, key, scenario, settings in plan:
            what = (
                f"S {target} L at {settings.clients:,} subscribers, {settings.rate:g} events/s"
                f" for {settings.latency_seconds:g} s"
                if scenario == "L"
                else f"S gateway C: {idle:,} idle connections held {args.hold:g} s"
            )
            progress(what, repetition, args.repeat)
            runs[target, key].append(least_disturbed(partial(run_one, target, scenario, settings)))
    found: dict[str, dict[str, Any]] = {}
    for (target, key), results in runs.items():
        found.setdefault(target, {})[key] = combine(results)
    return found


def progress(what: str, repetition: int, repeat: int) -> None:
    of = f" (run {repetition + 1} of {repeat})" if repeat > 1 else ""
    print(f"[{time.strftime('%H:%M:%S')}] {what}{of} ...", file=sys.stderr, flush=True)


def least_disturbed(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`run()`, repeated (RETRIES times at most) while other processes took more than
    DISTURBED_PCT of a core during it; the least disturbed attempt, with `attempts`."""
    result = run()
    attempts = 1
    while result.get("other_cpu_pct", 0) > DISTURBED_PCT and attempts <= RETRIES:
        print(
            f"  other processes used {result['other_cpu_pct']}% of a core: again",
            file=sys.stderr,
            flush=True,
        )
        retry = run()
        attempts += 1
        if "error" not in retry and retry["other_cpu_pct"] < result["other_cpu_pct"]:
            result = retry
    result["attempts"] = attempts
    if "error" in result:
        print(f"  error: {result['error']}", file=sys.stderr, flush=True)
    for line in result.get("server_complaints", [])[:5]:
        print(f"  server stderr: {line}", file=sys.stderr, flush=True)
    return result


# Table rows: (scenario, label, key in the result, higher is better).
ROWS = [
    ("A", "deliveries/s", "deliveries_per_s", True),
    ("A", "server us/delivery", "server_us_per_delivery", False),
    ("A", "server CPU %", "server_cpu_pct", None),
    ("A", "loadgen busy %", "loadgen_busy_pct", None),
    ("A", "events published", "published", None),
    ("A", "wall s", "wall_s", None),
    ("L", "p50 ms", "p50_ms", False),
    ("L", "p99 ms", "p99_ms", False),
    ("L", "max ms", "max_ms", False),
    ("L", "server us/delivery", "server_us_per_delivery", False),
    ("L", "server CPU %", "server_cpu_pct", None),
    ("L", "loadgen busy %", "loadgen_busy_pct", None),
    ("L", "late publishes", "late_publishes", None),
    ("C", "RSS KiB/conn", "rss_per_conn_kib", False),
    ("C", "connect->ready p50 ms", "connect_p50_ms", False),
    ("C", "connect->ready p99 ms", "connect_p99_ms", False),
    ("C", "server CPU % idle", "server_cpu_pct", False),
    ("C", "pings/conn in the hold", "pings_per_conn", None),
    ("C", "server us per ping+pong", "server_us_per_ping", False),
    ("C", "loadgen busy %", "loadgen_busy_pct", None),
    ("D", "connect->ready p50 ms", "p50_ms", False),
    ("D", "connect->ready p99 ms", "p99_ms", False),
    ("D", "connects/s", "connects_per_s", True),
    ("D", "SYNs dropped (accept queue full)", "listen_drops", None),
    ("D", "server CPU %", "server_cpu_pct", None),
    ("D", "loadgen busy %", "loadgen_busy_pct", None),
    ("P", "last join seen s (from first connect)", "last_join_seen_s", False),
    ("P", "last join seen after last ack ms", "after_last_ack_ms", False),
    ("P", "diffs the first observer received", "observer_diffs", False),
    ("P", "presence frames per member", "frames_per_member", False),
    ("P", "presence MiB sent in all", "presence_mib", None),
    ("P", "presence.get p50 ms", "get_p50_ms", False),
    ("P", "presence.get p99 ms", "get_p99_ms", False),
    ("P", "server CPU %", "server_cpu_pct", None),
    ("P", "loadgen busy %", "loadgen_busy_pct", None),
]
CHECKS = [
    ("completed in time", "complete"),
    ("other CPU %", "other_cpu_pct"),
    ("lost", "lost"),
    ("duplicates", "duplicates"),
    ("reordered", "reordered"),
]


# Summed over repeated runs of a cell (every run must have none); other numbers take the median.
SUMMED = ("lost", "duplicates", "reordered", "late_publishes", "error_frames", "attempts")


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated runs of one cell as one result: the median of every number, with its spread
    (`KEY_spread`: [min, max]) when there are several runs; checks summed; `runs` kept."""
    if len(runs) == 1:
        return runs[0]
    combined: dict[str, Any] = {"runs": runs, "repeat": len(runs)}
    for key in dict.fromkeys(k for run in runs for k in run):
        values = [run[key] for run in runs if key in run]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if key in SUMMED and len(numbers) == len(values):
            combined[key] = sum(numbers)
        elif numbers and len(numbers) == len(values):
            combined[key] = statistics.median(numbers)
            combined[f"{key}_spread"] = [min(numbers), max(numbers)]
        elif all(isinstance(v, bool) for v in values):
            combined[key] = all(values)
        elif key == "closed_by_server":
            codes: dict[str, int] = {}
            for closes in values:
                for code, count in (closes or {}).items():
                    codes[code] = codes.get(code, 0) + count
            combined[key] = codes
        elif key == "server_complaints":
            combined[key] = [line for lines in values for line in lines][:20]
        else:
            combined[key] = next((v for v in values if v), values[0])
    return combined


def cell(result: dict[str, Any], key: str) -> str:
    """A value, with the spread of repeated runs after it: `4.6 (4.4-4.9)`."""
    spread = result.get(f"{key}_spread")
    if spread is None:
        return fmt(result.get(key))
    return f"{fmt(result.get(key))} ({fmt(spread[0])}-{fmt(spread[1])})"


def ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return a / b
    return None


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(head: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, the first left-aligned, a rule under the head."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table(results: dict[str, dict[str, dict[str, Any]]], scenarios: list[str]) -> str:
    columns = [t for t in COLUMNS if results.get(t)]
    others = columns[1:] if columns[:1] == ["gateway"] else []
    head = ["scenario / metric", *columns, *(f"gw/{SHORT[t]}" for t in others)]
    blank = [""] * len(others)
    rows = []
    for scenario, label, key, better in ROWS:
        if scenario not in scenarios:
            continue
        cells = [results.get(t, {}).get(scenario, {}) for t in columns]
        values = [result.get(key) for result in cells]
        arrow = {True: " (up)", False: " (down)", None: ""}[better]
        ratios = [ratio(values[0], value) for value in values[1:]] if others else []
        if better is None:
            ratios = [None] * len(others)
        shown = [cell(result, key) for result in cells]
        rows.append([f"{scenario} {label}{arrow}", *shown, *map(fmt, ratios)])
    for scenario in scenarios:
        for label, key in CHECKS:
            values = [results.get(t, {}).get(scenario, {}).get(key) for t in columns]
            rows.append([f"{scenario} {label}", *map(fmt, values), *blank])
        closes = [results.get(t, {}).get(scenario, {}).get("closed_by_server") for t in columns]
        rows.append([f"{scenario} server closes", *(fmt(c or {}) for c in closes), *blank])
    return render(head, rows)


# Scenario X rows: (label, key in each variant's result).
# Rows every latency run reports, in X's and S's tables alike.
LATENCY_ROWS = [("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("max ms", "max_ms")]
RUN_ROWS = [
    ("loadgen busy %", "loadgen_busy_pct"),
    ("late publishes", "late_publishes"),
    ("completed in time", "complete"),
    ("other CPU %", "other_cpu_pct"),
    ("lost", "lost"),
    ("duplicates", "duplicates"),
    ("reordered", "reordered"),
]
CROSS_ROWS = [*LATENCY_ROWS, ("server-side CPU % (all processes)", "server_cpu_pct"), *RUN_ROWS]


def cross_table(variants: dict[str, dict[str, Any]]) -> str:
    """Scenario X side by side: one column per variant."""
    head = ["X metric", *(key for key, *_ in CROSS_VARIANTS)]
    rows = [["", *(description for _, description, *_ in CROSS_VARIANTS)]]
    for label, field in CROSS_ROWS:
        rows.append([label, *(cell(variants.get(k, {}), field) for k, *_ in CROSS_VARIANTS)])
    each = []
    for key, *_ in CROSS_VARIANTS:
        result = variants.get(key, {})
        names, shares = result.get("processes", []), result.get("server_cpu_pct_each", [])
        pairs = zip(names, shares, strict=False)
        each.append(", ".join(f"{name} {pct:g}" for name, pct in pairs) or "-")
    rows.append(["CPU % by process", *each])
    rows.append(
        [
            "server closes",
            *(fmt(variants.get(k, {}).get("closed_by_server") or {}) for k, *_ in CROSS_VARIANTS),
        ]
    )
    return render(head, rows)


# Scenario S rows: (label, key in each size's L result, or in the idle C result).
SCALING_ROWS = [
    ("events/s", "rate"),
    ("events", "events"),
    ("server us/delivery (down)", "server_us_per_delivery"),
    *LATENCY_ROWS,
    ("server CPU %", "server_cpu_pct"),
    *RUN_ROWS,
]
SCALING_IDLE_ROWS = [
    ("RSS KiB/conn", "rss_per_conn_kib"),
    ("server CPU % idle (keepalive)", "server_cpu_pct"),
    ("pings/conn in the hold", "pings_per_conn"),
    ("server us per ping+pong", "server_us_per_ping"),
    ("connect->ready p99 ms", "connect_p99_ms"),
    ("held open", "held_open"),
    ("completed in time", "complete"),
    ("other CPU %", "other_cpu_pct"),
    ("lost", "lost"),
]


def scaling_costs(variants: dict[str, dict[str, Any]]) -> dict[int, Any]:
    """S's server us/delivery by size, in the order run."""
    return {
        int(key[2:]): run.get("server_us_per_delivery")
        for key, run in variants.items()
        if key.startswith("L ")
    }


def scaling_spread(
    variants: dict[str, dict[str, Any]], floor: dict[str, dict[str, Any]] | None = None
) -> float | None:
    """S's cost spread: the dearest size's server us/delivery over the cheapest's; with
    `floor`, of the gateway's cost over the write floor's at each size."""
    costs = scaling_costs(variants)
    if floor is not None:
        floors = scaling_costs(floor)
        costs = {n: ratio(cost, floors.get(n)) for n, cost in costs.items()}
    known = [c for c in costs.values() if isinstance(c, int | float)]
    return ratio(max(known), min(known)) if len(known) > 1 else None


def scaling_table(
    variants: dict[str, dict[str, Any]], floor: dict[str, dict[str, Any]] | None = None
) -> str:
    """Scenario S: one column per size of L, with each size's cost over the cheapest (and the
    write floor's cost and p99 at each size, if it ran); then the idle connections (C at the
    largest size), if they ran."""
    keys = [key for key in variants if key.startswith("L ")]
    sizes = [variants[key] for key in keys]
    costs = scaling_costs(variants)
    cheapest = min((c for c in costs.values() if isinstance(c, int | float)), default=None)
    head = ["S metric", *(f"{n:,} subs" for n in costs)]
    rows = [[label, *(cell(run, field) for run in sizes)] for label, field in SCALING_ROWS]
    rows.insert(3, ["  over the cheapest size", *(fmt(ratio(c, cheapest)) for c in costs.values())])
    rows.append(["server closes", *(fmt(run.get("closed_by_server") or {}) for run in sizes)])
    if floor:
        floors = [floor.get(key, {}) for key in keys]
        rows.append(["floor us/delivery", *(cell(run, "server_us_per_delivery") for run in floors)])
        rows.append(["floor p99 ms", *(cell(run, "p99_ms") for run in floors)])
        rows.append(["floor lost", *(fmt(run.get("lost")) for run in floors)])
        over = [
            ratio(run.get("server_us_per_delivery"), f.get("server_us_per_delivery"))
            for run, f in zip(sizes, floors, strict=True)
        ]
        rows.append(["gw us/delivery over floor's", *map(fmt, over)])
    text = render(head, rows)
    for key in (k for k in variants if k.startswith("C ")):
        idle = variants[key]
        head = [f"S idle, held {fmt(idle.get('wall_s'))} s", f"{int(key[2:]):,} conns"]
        text += "\n\n" + render(head, [[lb, cell(idle, f)] for lb, f in SCALING_IDLE_ROWS])
    return text


# How far the gateway may fall behind its parent (--parent-src) on A's deliveries/s and L's
# server us/delivery before the check fails: a judgement of this machine's run-to-run noise
# for a median of --repeat 3. A tree of the same commit given as the parent shows it.
PARENT_NOISE = 0.10


def targets_met(
    results: dict[str, dict[str, dict[str, Any]]],
) -> list[tuple[str, bool | None, str]]:
    """The performance targets: (description, met or None when not measured, measured value).

    "Best peer" is the best of the server peers that ran (PEERS_COMPARED), not the floor.
    """
    gw = results.get("gateway", {})
    checks: list[tuple[str, bool | None, str]] = []

    def add(label: str, value: float | None, ok: Callable[[float], bool]) -> None:
        checks.append((label, None if value is None else ok(value), fmt(value)))

    def best_peer(scenario: str, key: str, lower: bool = True) -> tuple[str, float] | None:
        found = [
            (target, value)
            for target in PEERS_COMPARED
            if isinstance(value := results.get(target, {}).get(scenario, {}).get(key), int | float)
        ]
        if not found:
            return None
        return (min if lower else max)(found, key=lambda pair: pair[1])

    def against_best(scenario: str, key: str, label: str) -> None:
        best = best_peer(scenario, key)
        mine = gw.get(scenario, {}).get(key)
        name = f"{scenario} {label} <= best peer" + (f" ({best[0]} {fmt(best[1])})" if best else "")
        add(name, ratio(mine, best[1]) if best else None, lambda r: r <= 1.0)

    against_best("L", "p50_ms", "p50 gw/best")
    against_best("L", "p99_ms", "p99 gw/best")
    against_best("L", "server_us_per_delivery", "server us/delivery gw/best")
    floor = results.get("write_floor", {}).get("L", {}).get("p99_ms")
    mine = gw.get("L", {}).get("p99_ms")
    add(
        "L p99 within 1 ms of the write floor (gw - floor, ms)",
        mine - floor if isinstance(mine, int | float) and isinstance(floor, int | float) else None,
        lambda d: d <= 1.0,
    )
    add(
        "C RSS <= 6 KiB per idle connection",
        gw.get("C", {}).get("rss_per_conn_kib"),
        lambda v: v <= 6.0,
    )
    aio = results.get("aiohttp", {})
    for scenario, key in (("D", "p99_ms"), ("C", "connect_p99_ms")):
        add(
            f"{scenario} connect->ready p99 <= aiohttp's (gw/aiohttp)",
            ratio(gw.get(scenario, {}).get(key), aio.get(scenario, {}).get(key)),
            lambda r: r <= 1.0,
        )
    add(
        "A throughput >= 3x node_ws",
        ratio(
            gw.get("A", {}).get("deliveries_per_s"),
            results.get("node_ws", {}).get("A", {}).get("deliveries_per_s"),
        ),
        lambda r: r >= 3.0,
    )
    cross = gw.get("X", {})
    add(
        "X p99 through Redis, two instances <= 1.5x single-instance memory broker",
        ratio(cross.get("cross", {}).get("p99_ms"), cross.get("single_memory", {}).get("p99_ms")),
        lambda r: r <= 1.5,
    )
    add(
        "S server us/delivery within 20% across sizes (dearest/cheapest)",
        scaling_spread(gw.get("S", {})),
        lambda r: r <= 1.2,
    )
    # The same over the write floor's cost at each size: the part of the curve that is the
    # gateway's, when the kernel's and the machine's grows too.
    add(
        "S gw/floor us/delivery within 20% across sizes (dearest/cheapest)",
        scaling_spread(gw.get("S", {}), results.get("write_floor", {}).get("S", {})),
        lambda r: r <= 1.2,
    )
    # A change that adds nothing measurable to A and L: within PARENT_NOISE of its parent.
    parent = results.get("parent", {})
    add(
        f"A deliveries/s gateway/parent >= {1 - PARENT_NOISE:g} (feature paths unused)",
        ratio(gw.get("A", {}).get("deliveries_per_s"), parent.get("A", {}).get("deliveries_per_s")),
        lambda r: r >= 1 - PARENT_NOISE,
    )
    add(
        f"L server us/delivery gateway/parent <= {1 + PARENT_NOISE:g} (feature paths unused)",
        ratio(
            gw.get("L", {}).get("server_us_per_delivery"),
            parent.get("L", {}).get("server_us_per_delivery"),
        ),
        lambda r: r <= 1 + PARENT_NOISE,
    )
    for target, scenarios in results.items():
        for scenario, result in sorted(scenarios.items()):
            runs = result.items() if scenario in VARIANTS else [("", result)]
            for variant, run in runs:
                if "lost" in run:
                    add(
                        f"{scenario}{' ' + variant if variant else ''} {target} lost = 0,"
                        " duplicates = 0",
                        run["lost"] + run["duplicates"],
                        lambda v: v == 0,
                    )
    return checks


def gateway_revision(source: Path) -> dict[str, Any]:
    """Which gateway code ran: its directory, and the commit and dirty state if it is git's."""
    found: dict[str, Any] = {"source": str(source)}
    git = ["git", "-C", str(source)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0 and Path(source, ".git").exists():
        status = [*git, "status", "--porcelain", "--", "trio_gateway"]
        dirty = subprocess.run(status, capture_output=True, text=True).stdout.strip()
        found.update(commit=head.stdout.strip(), dirty=bool(dirty))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios", default="A,L,C,D,X,P,S", help="comma-separated, from A,L,C,D,X,P,R,S"
    )
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument(
        "--quick", action="store_true", help="200 clients, 2,000 events, short runs"
    )
    parser.add_argument("--clients", type=int, help="(A, L, X) subscribed clients [1000]")
    parser.add_argument("--events", type=int, help="(A) events [20000]")
    parser.add_argument("--batch", type=int, default=100, help="(A) events per request")
    parser.add_argument("--rate", type=float, default=50.0, help="(L) events per second")
    parser.add_argument("--latency-seconds", type=float, help="(L, X) publishing time [10]")
    parser.add_argument(
        "--x-rate", type=float, default=50.0, help="(X) events per second (issue 17: 50)"
    )
    parser.add_argument("--idle", type=int, help="(C) idle connections [5000]")
    parser.add_argument("--hold", type=float, help="(C) seconds the idle connections are held [20]")
    parser.add_argument("--connects", type=int, help="(D) connections in the storm [5000]")
    parser.add_argument("--members", type=int, help="(P) users joining the topic [5000]")
    parser.add_argument("--gets", type=int, default=100, help="(P) presence.get round trips")
    parser.add_argument(
        "--scale-sizes",
        help="(S) comma-separated subscriber counts for L [1000,5000,20000; quick: 200,500,1000]",
    )
    parser.add_argument(
        "--scale-deliveries",
        type=float,
        help="(S) deliveries/s at every size: the rate is this over the size [50000, quick: 10000]",
    )
    parser.add_argument(
        "--scale-events",
        type=int,
        help="(S) events at least at each size: the publishing time grows as the rate falls"
        " [100, quick: 30]",
    )
    parser.add_argument(
        "--scale-ping-interval",
        type=float,
        default=SCALE_PING_INTERVAL,
        help="(S) the gateway's --ping-interval in the L runs: by default longer than a run, so"
        " that no keepalive cycle falls in one (the idle run measures the keepalive); 30, the"
        " default, to see what its cycles add [%(default)s]",
    )
    parser.add_argument(
        "--scale-idle",
        type=int,
        help="(S) idle connections held as in C (0: none) [the largest size]",
    )
    parser.add_argument("--storm-clients", type=int, help="(R) clients dropped at once [3000]")
    parser.add_argument("--storm-rate", type=float, default=5.0, help="(R) publications/s")
    parser.add_argument(
        "--storm-during", type=float, default=10.0, help="(R) seconds of publishing from the kill"
    )
    parser.add_argument(
        "--a-budget",
        type=float,
        help="(A) seconds after which no further batch is posted; what was posted is still"
        " delivered and counted [120, quick: 30]",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="interleaved runs of every cell; the table shows their median and (min-max)",
    )
    parser.add_argument("--json", default="bench-results.json", help="where to write results")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=QUIET_WAIT,
        help="seconds to wait, before each run, for the machine to be idle (a shared"
        " machine: other processes' CPU is noise in every figure) [%(default)s]",
    )
    parser.add_argument(
        "--loadgen-sleeps",
        action="store_true",
        help="let the load generator sleep in epoll_wait when idle (default: it spins)",
    )
    parser.add_argument(
        "--gateway-src",
        type=Path,
        default=ROOT,
        help="directory holding the trio_gateway package to run (default: this working tree;"
        " e.g. `git archive COMMIT trio_gateway clients | tar -x -C DIR` to pin a commit;"
        " trio_gateway alone for one from before clients/)",
    )
    parser.add_argument(
        "--parent-src",
        type=Path,
        default=None,
        help="a second gateway source tree (e.g. the parent commit, extracted as for"
        " --gateway-src), run as target `parent` right after `gateway` in each scenario",
    )
    args = parser.parse_args()
    quick = {
        "clients": 200,
        "events": 2000,
        "latency_seconds": 3.0,
        "idle": 500,
        "hold": 5.0,
        "connects": 500,
        "members": 500,
        "a_budget": 30.0,
        "storm_clients": 300,
        "scale_sizes": "200,500,1000",
        "scale_deliveries": 10000.0,
        "scale_events": 30,
    }
    full = {
        "clients": 1000,
        "events": 20000,
        "latency_seconds": 10.0,
        "idle": 5000,
        "hold": 20.0,
        "connects": 5000,
        "members": 5000,
        "a_budget": 120.0,
        "storm_clients": 3000,
        "scale_sizes": "1000,5000,20000",
        "scale_deliveries": 50000.0,
        "scale_events": 100,
    }
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.gateway_src = args.gateway_src.resolve()
    if args.parent_src is not None:
        args.parent_src = args.parent_src.resolve()
    scenarios = [s for s in "ALCDXPRS" if s in args.scenarios.upper().split(",")]
    targets = [t for t in TARGETS if t in args.targets.split(",")]
    if args.parent_src is not None and "gateway" in targets:
        targets.insert(1, "parent")
    if "gateway" not in targets:
        scenarios = [s for s in scenarios if s not in GATEWAY_ONLY]
    if args.repeat < 1:
        sys.exit("--repeat: at least 1")
    if "node_ws" in targets and not (NODE_PEER / "node_modules" / "ws").is_dir():
        sys.exit(f"node_ws needs its packages: npm ci --prefix {NODE_PEER} (make bench does it)")
    if os.cpu_count() is None or os.cpu_count() < 2:
        sys.exit("needs two cores: the server and the load generator are pinned to 0 and 1")
    for source in (args.gateway_src, args.parent_src):
        if source is not None and "gateway" in targets:
            # Without the package there, `python -m` would find the editable install's.
            if not (source / "trio_gateway" / "__main__.py").is_file():
                sys.exit(f"{source}: no trio_gateway package in it")
            serve_flags(source)
    # Every process started from here inherits it: S holds up to 20,000 sockets on each side.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sizes, scaling_notes = scaling_sizes([int(n) for n in args.scale_sizes.split(",")], hard)
    if args.scale_idle is None:
        args.scale_idle = max(sizes)
    elif args.scale_idle:
        [args.scale_idle], capped = scaling_sizes([args.scale_idle], hard)
        scaling_notes += capped

    results: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in COLUMNS}
    for scenario in scenarios:
        if scenario == "X":
            variants: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in CROSS_VARIANTS}
            for repetition in range(args.repeat):
                for key, description, instances, with_redis in CROSS_VARIANTS:
                    progress(f"X {description}", repetition, args.repeat)
                    run = partial(run_cross, instances, with_redis, args)
                    variants[key].append(least_disturbed(run))
            results["gateway"]["X"] = {key: combine(runs) for key, runs in variants.items()}
            continue
        if scenario == "S":
            for target, variants in run_scaling(args, sizes, args.scale_idle, targets).items():
                results[target]["S"] = variants
            continue
        if scenario == "R":
            print(f"[{time.strftime('%H:%M:%S')}] R storm ...", file=sys.stderr, flush=True)
            results["gateway"]["R"] = run_storm(args)
            continue
        cell_targets = [
            target
            for target in targets
            if (target != "write_floor" or scenario in FLOOR_SCENARIOS)
            and (scenario not in GATEWAY_ONLY or target == "gateway")
        ]
        # Interleaved: every target once per repetition, so drift on the machine falls on all.
        cells: dict[str, list[dict[str, Any]]] = {target: [] for target in cell_targets}
        for repetition in range(args.repeat):
            for target in cell_targets:
                progress(f"{scenario} {target}", repetition, args.repeat)
                cells[target].append(least_disturbed(partial(run_one, target, scenario, args)))
        for target, runs in cells.items():
            results[target][scenario] = combine(runs)

    print()
    if tabled := [s for s in scenarios if s not in ("X", "R", "S")]:
        print(table(results, tabled))
        print()
    if "R" in scenarios and "error" not in (storm := results["gateway"]["R"]):
        print(
            f"R: {storm['clients']:,} clients dropped at once: all back {storm['all_back_s']} s,"
            f" caught up {storm['caught_up_s']} s after the kill; {storm['published']} published"
            f" at {storm['rate']:g}/s, lost {storm['lost']}, duplicates {storm['duplicates']},"
            f" not recovered {storm['not_recovered']}; machine busy"
            f" {storm['machine_busy_pct']}% of a core (both cores: 200%)"
        )
        print()
    if "X" in scenarios:
        print(
            f"X: {args.clients:,} clients, {args.x_rate:g} events/s, one per request, for"
            f" {args.latency_seconds:g} s; publish -> receive. cross: clients on gateway A,"
            " every event posted to gateway B."
        )
        print(cross_table(results["gateway"]["X"]))
        print()
    if "S" in scenarios:
        print(
            f"S: L at each size, {args.scale_deliveries:,.0f} deliveries/s (the rate is that"
            f" over the size), at least {args.scale_events} events each, gateway"
            f" --ping-interval {args.scale_ping_interval:g}; idle as C (pings every"
            f" {IDLE_PING_INTERVAL} s, held {args.hold:g} s). Cost spread = dearest size's"
            " us/delivery over the cheapest's."
        )
        for note in scaling_notes:
            print(note)
        print(scaling_table(results["gateway"]["S"], results["write_floor"].get("S")))
        print()
    notes = [
        f"Notes: server pinned to core {SERVER_CORE}, load generator to core {LOADGEN_CORE}"
        f" ({'sleeping' if args.loadgen_sleeps else 'spinning'} on epoll; its busy % is the"
        " time it spent handling sockets)."
    ]
    if "A" in scenarios:
        notes.append(
            f"A: gateway --queue-depth {args.events + 1000} (a whole run fits: the"
            f" slow-consumer close 4008 cannot interfere); no batch posted after"
            f" {args.a_budget:g} s."
        )
    if "L" in scenarios and "write_floor" in targets:
        notes.append(
            "L: write_floor is the floor, not a server: one send() per subscriber in a bare"
            " loop; gw/floor is the gateway's latency over what this machine cost then."
        )
    if "C" in scenarios:
        notes.append(
            f"C: gateway --ping-interval {IDLE_PING_INTERVAL}, aiohttp, websockets and node_ws"
            f" ping every {IDLE_PING_INTERVAL} s, naive_trio has no keepalive."
        )
    print("\n".join(notes))
    for target in targets:
        for scenario in scenarios:
            runs = results[target].get(scenario)
            if not runs:
                continue
            named = runs.items() if scenario in VARIANTS else [(target, runs)]
            for name, result in named:
                complaints = result.get("server_complaints", [])
                if "error" in result or complaints:
                    print(f"{scenario} {name}: {result.get('error') or ''}")
                    for line in complaints[:5]:
                        print(f"  server stderr: {line}")
    checks = targets_met(results)
    for label, ok, value in checks:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[ok]
        print(f"  {verdict}  {label}: {value}")
    output = {
        "meta": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "quick": args.quick,
            "args": vars(args),
            "server_core": SERVER_CORE,
            "loadgen_core": LOADGEN_CORE,
            "gateway": gateway_revision(args.gateway_src),
            "parent": gateway_revision(args.parent_src) if args.parent_src else None,
            "nofile_hard_limit": hard,
            "scaling_notes": scaling_notes,
        },
        "results": results,
        "targets": [{"target": label, "met": ok, "value": value} for label, ok, value in checks],
    }
    Path(args.json).write_text(json.dumps(output, indent=2, default=str) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
