"""Load generator for scripts/bench.py: raw-socket WebSocket clients and HTTP publishers.

Owns one scenario run against one already-started server (the gateway or a peer from
scripts/bench_peers/): it opens the clients, publishes, counts and times what arrives, reads
the server's CPU and RSS from /proc, and prints one JSON object on stdout. bench.py owns
starting and stopping servers, CPU pinning, and the report.

Why it looks like this: one core has to receive what the server under test sends from the
other core, so the client side must cost a fraction of the server side per delivery. A trio
task per client costs a scheduler round trip per wake-up; here every socket, client and
publisher, is driven by one `select.epoll` loop with no per-client task at all. The HTTP
upgrade is written by hand, the few client frames (subscribe, pong, close) are masked once,
and server frames are parsed only as far as their headers: event frames carry a marker
string `~SEQUENCE~MONOTONIC_NS~` in fixed-width digits, found with one `bytes.find`, and
nothing is JSON-decoded; runs of same-length event frames are checked in bulk (see
`WsClient.frames`). Send timestamps are `time.monotonic_ns()` taken just before the publish
request is written; CLOCK_MONOTONIC is system-wide, so they compare with the receive time
here. A receive time is taken once per `recv` (frames from one read arrived together), and
while latencies are recorded the parsing waits for a moment when no socket is ready
(`Loop.parse_deferred`): a delivery must cost this process less than it costs the server,
or the time frames wait in their sockets for it would be counted as the server's latency.

The loop spins (epoll_wait with a zero timeout) unless --sleep: on this VM a loopback send to
a process asleep on another core costs the sender some 25 us of wake-up work, which would be
billed to the server under test although a remote client never costs it that. Its CPU time
then reads ~100%; `loadgen_busy_*`, the time spent handling ready sockets, says how loaded
it really was.

Correctness, every run: each client keeps a bitmap of sequence numbers seen, so a delivery
is either new, a duplicate or out of order; an event published while a client was open and
never received by it counts as lost (that includes clients the server closed, whose close
codes are reported).
"""

from __future__ import annotations

import argparse
import array
import base64
import json
import os
import resource
import select
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
HANGUP = select.EPOLLHUP | select.EPOLLERR
# One receive buffer for every socket: `recv(n)` would allocate n bytes per call, and at this
# size glibc serves that with mmap/munmap and fresh page faults, the costliest part of a read.
RECV_BUFFER = memoryview(bytearray(1 << 18))
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Event payload: `m` carries the marker; `data` pads the frame to a typical event size.
WORKSPACE = "bench"
EVENT_TEMPLATE = (
    '{"workspace_id":"bench","session_id":"s1","kind":"bench.tick",'
    '"m":"~%08d~%019d~","data":"' + "x" * 64 + '"}'
)
SEQ_DIGITS = 8
TS_DIGITS = 19
# Scenario P: the presence topic every client joins (the gateway runs with it as its
# `--presence-topic`).
PRESENCE_TOPIC = "bench.presence"
TILDES = b"~" * RECV_BUFFER.nbytes

# Seconds without any delivery or response before a phase gives up (reported as lost).
STALL_TIMEOUT = 30.0
# Connections being opened at once outside the connect storm, so set-up is not a storm too.
SETUP_CONCURRENCY = 256
# Scenario C's connects in flight: its connect->ready percentiles compare servers at this load.
IDLE_CONCURRENCY = 100
# New connects started per loop turn in the storm, so that early connections are serviced
# while later ones are still being opened (the loop's delay stays out of their timings).
STORM_CONNECTS_PER_TURN = 64
# Most HTTP publisher connections for the fixed-rate latency publisher: a slow response opens
# another connection instead of delaying the next publish (no coordinated omission). Past
# this many a publish waits for a free connection, and is counted as late.
MAX_PUBLISHERS = 64
# Reads parsed whenever no socket is ready while latencies are recorded (`Loop.parse_deferred`):
# some 50 us of work, a few of the server's writes. Past DEFER_LIMIT reads waiting, they are
# all parsed at once (a server that never leaves a quiet moment).
PARSE_PER_TURN = 16
DEFER_LIMIT = 20_000
# Descriptors besides the clients': the publishers (MAX_PUBLISHERS at most, the observer and
# liveness ones), epoll, stdio and /proc reads. A run needing more than the hard limit stops
# at once with a message rather than midway with EMFILE.
OWN_DESCRIPTORS = MAX_PUBLISHERS + 16


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (FIN set, masked as RFC 6455 requires of clients)."""
    key = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = bytes([0x80 | opcode, 0x80 | length])
    else:
        head = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    mask = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(length, "big")
    return head + key + masked


PONG_FRAME = mask_frame(1, b'{"type":"pong"}')
CLOSE_FRAME = mask_frame(8, (1000).to_bytes(2, "big"))


def server_cpu(pid: int) -> float:
    """utime + stime of `pid` in seconds, all threads included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def server_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine_busy() -> float:
    """CPU seconds all cores spent neither idle nor stolen by the hypervisor, since boot."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / CLK_TCK


def tcp_counters(*names: str) -> list[int]:
    """Machine-wide TcpExt counters from /proc/net/netstat (e.g. ListenOverflows)."""
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    values = dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))
    return [values[name] for name in names]


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: list[int] | list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * p // 100))
    return float(sorted_values[int(rank) - 1])


class Loop:
    """The epoll loop and the counters every client and publisher shares."""

    def __init__(self, spin: bool) -> None:
        self.spin = spin
        # Seconds spent handling ready sockets: the load generator's real work, which its CPU
        # time no longer shows once it spins.
        self.busy = 0.0
        self.epoll = select.epoll()
        self.handlers: dict[int, Endpoint] = {}
        # Clients subscribed and still open; clients done with set-up (subscribed, ready when
        # not subscribing, or failed) since the last reset.
        self.open_clients = 0
        self.settled = 0
        self.published = 0
        # Deliveries still due: events published times clients open at the time, less those
        # received. Zero means every open client has everything published so far.
        self.outstanding = 0
        self.lost_on_close = 0
        self.close_codes: Counter[int] = Counter()
        self.error_frames = 0
        # presence.state / presence.diff frames every client received, and their bytes.
        self.presence_frames = 0
        self.presence_bytes = 0
        self.last_progress = time.monotonic()
        # Publish -> receive latencies in ns, only while the latency phase records them.
        self.latencies: array.array[int] | None = None
        # While latencies are recorded, what subscribed clients read, with its receive time,
        # waits here to be parsed until the sockets go quiet (see `parse_deferred`).
        self.deferred: deque[tuple[WsClient, int, bytes]] | None = None
        # Digit j of every sequence number in order, for j in 0..SEQ_DIGITS-1: the bulk path
        # in `WsClient.frames` compares a run's numbers column by column (set where used).
        self.seq_columns: list[bytes] = []

    def register(self, endpoint: Endpoint, mask: int) -> None:
        self.handlers[endpoint.fd] = endpoint
        self.epoll.register(endpoint.fd, mask)

    def run(
        self,
        done: Callable[[], bool],
        deadline: float,
        tick: Callable[[float], float] | None = None,
        stall: float | None = STALL_TIMEOUT,
    ) -> bool:
        """Serve sockets until `done()`; False if `deadline` passed or nothing moved for
        `stall` seconds. `tick(now)` runs every turn and returns seconds until it is due again.
        """
        handlers = self.handlers
        poll = self.epoll.poll
        clock = time.perf_counter
        while not done():
            now = time.monotonic()
            if now >= deadline or (stall is not None and now - self.last_progress > stall):
                return False
            timeout = min(0.1, deadline - now)
            if tick is not None:
                timeout = max(0.0, min(timeout, tick(now)))
            ready = poll(0.0 if self.spin else timeout, 4096)
            if not ready and not self.deferred:
                continue
            began = clock()
            # Sockets that became ready while a batch was handled are served before the
            # housekeeping above (until `tick` is due): in a fan-out burst they come one or
            # two per poll, and a whole turn of the loop for each would make this process,
            # not the server, set the pace at which deliveries are seen.
            due = now + timeout
            while ready:
                for fd, events in ready:
                    handler = handlers.get(fd)
                    if handler is not None:
                        handler.on_ready(events)
                ready = poll(0.0, 4096) if time.monotonic() < due else None
            deferred = self.deferred
            if deferred and len(deferred) >= DEFER_LIMIT:
                self.parse_deferred()
            elif deferred and ready is not None:
                self.parse_deferred(PARSE_PER_TURN)
            self.busy += clock() - began
        return True

    def parse_deferred(self, limit: int | None = None) -> None:
        """Parse what was read and timestamped but not parsed yet (at most `limit` reads),
        in the order it came.

        A fan-out is a burst: one frame for every client within a few milliseconds, each
        read with its own recv. Parsing each as it comes doubles what a delivery costs here,
        enough to fall behind the server, and then the time a frame waits in its socket for
        us is counted as the server's latency. So during a burst a read only takes its
        receive time, and the parsing is done a few reads at a time whenever no socket is
        ready, never long enough to fall behind.
        """
        deferred = self.deferred
        if not deferred:
            return
        count = len(deferred) if limit is None else limit
        # `parse` may itself empty the queue (a client that closed: see `WsClient.lost`).
        while count > 0 and deferred:
            client, now, data = deferred.popleft()
            client.parse(data, now)
            count -= 1

    def sleep(self, seconds: float) -> None:
        """Keep serving sockets (answering pings) for `seconds`."""
        self.run(lambda: False, time.monotonic() + seconds, stall=None)


class Endpoint:
    """A non-blocking socket in the loop with a write buffer."""

    __slots__ = ("fd", "loop", "out", "sock")

    def __init__(self, loop: Loop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.out = b""

    def write(self, data: bytes) -> None:
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.lost()
            return
        if sent < len(data):
            self.out = data[sent:]
            self.loop.epoll.modify(self.fd, EPOLLIN | EPOLLOUT)

    def flush(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.lost()
            return
        self.out = self.out[sent:]
        if not self.out:
            self.loop.epoll.modify(self.fd, EPOLLIN)

    def detach(self) -> None:
        if self.loop.handlers.pop(self.fd, None) is not None:
            self.loop.epoll.unregister(self.fd)
        self.sock.close()

    def on_ready(self, events: int) -> None:
        raise NotImplementedError

    def lost(self) -> None:
        raise NotImplementedError


CONNECTING, HANDSHAKE, OPEN, SUBSCRIBED, CLOSED = range(5)


class WsClient(Endpoint):
    """One WebSocket client: handshake, subscribe, count and time event frames."""

    __slots__ = (
        "base",
        "bulk_head",
        "bulk_len",
        "bulk_seq_at",
        "count",
        "dups",
        "is_settled",
        "last_seq",
        "pings",
        "reordered",
        "rest",
        "seen",
        "state",
        "subscribe_frame",
        "t_ready",
        "t_start",
    )

    def __init__(
        self, loop: Loop, port: int, token: str, subscribe: bytes | None, max_events: int
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(loop, sock)
        self.state = CONNECTING
        self.subscribe_frame = subscribe
        self.rest = b""
        self.seen = bytearray(max_events)
        self.count = self.dups = self.reordered = self.pings = 0
        self.last_seq = -1
        self.t_ready = 0
        # Events published before this client subscribed are not due to it.
        self.base = 0
        self.is_settled = False
        # The last event frame's length, first bytes and where its sequence digits start, for
        # the bulk path in `frames`.
        self.bulk_len = 0
        self.bulk_head = b""
        self.bulk_seq_at = 0
        self.out = (
            f"GET /api/ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        loop.register(self, EPOLLOUT)
        self.t_start = time.monotonic_ns()
        try:
            sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError:
            self.lost()

    def settle(self) -> None:
        """Done with set-up: subscribed (or ready, when not subscribing), or failed."""
        if not self.is_settled:
            self.is_settled = True
            self.loop.settled += 1

    def on_ready(self, events: int) -> None:
        if events & EPOLLOUT:
            if self.state == CONNECTING:
                if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self.lost()
                    return
                self.state = HANDSHAKE
            self.flush()
        if events & (EPOLLIN | HANGUP) and self.state != CLOSED:
            self.receive()

    def receive(self) -> None:
        try:
            size = self.sock.recv_into(RECV_BUFFER)
        except BlockingIOError:
            return
        except OSError:
            self.lost()
            return
        if not size:
            self.lost()
            return
        now = time.monotonic_ns()
        data = RECV_BUFFER[:size].tobytes()
        deferred = self.loop.deferred
        if deferred is not None and self.state == SUBSCRIBED:
            deferred.append((self, now, data))
        else:
            self.parse(data, now)

    def parse(self, data: bytes, now: int) -> None:
        """Handle bytes read at `now` (ns): the upgrade response, then frames."""
        if self.rest:
            data = self.rest + data
        if self.state == HANDSHAKE:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.rest = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self.lost()
                return
            self.state = OPEN
            data = data[end + 4 :]
        self.rest = data[self.frames(data, now) :]

    def frames(self, data: bytes, now: int) -> int:
        """Handle every complete frame in `data`; returns where the incomplete tail starts.

        The hot loop of the whole benchmark. Frame by frame it is header arithmetic, one find
        and an int() or two: about 2 us a frame, four times what the gateway spends sending it.
        So when latencies are not being recorded, a run of event frames is taken in bulk, in
        C: event frames of one run all have the same length L and layout (fixed-width
        marker), and their header plus payload start (`bulk_head`) occurs nowhere else (every
        server escapes JSON to ASCII, and a header starts with 0x81), so k occurrences of it
        in the next k * L bytes mean those bytes are exactly k event frames. Their sequence
        numbers, read as strided slices (one per digit position, every L bytes, between two
        `~` columns), must then be the next k in order and unseen; anything else (a gap, a
        duplicate, a control frame) goes through the frame-by-frame path, which counts it.
        """
        seen = self.seen
        last = self.last_seq
        latencies = self.loop.latencies
        bulk_len = 0 if latencies is not None else self.bulk_len
        bulk_head = self.bulk_head
        seq_columns = self.loop.seq_columns
        bulk_seq_at = self.bulk_seq_at
        new = 0
        n = len(data)
        pos = 0
        while n - pos >= 2:
            if bulk_len and (k := (n - pos) // bulk_len) > 1:
                stop = pos + k * bulk_len
                first = last + 1
                digits = pos + bulk_seq_at
                if (
                    data.count(bulk_head, pos, stop) == k
                    and data[digits - 1 : stop : bulk_len] == TILDES[:k]
                    and data[digits + SEQ_DIGITS : stop : bulk_len] == TILDES[:k]
                    and all(
                        data[digits + j : stop : bulk_len] == column[first : first + k]
                        for j, column in enumerate(seq_columns)
                    )
                    and not seen.count(1, first, first + k)
                ):
                    seen[first : first + k] = b"\x01" * k
                    new += k
                    last += k
                    pos = stop
                    continue
            length = data[pos + 1] & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            opcode = data[pos] & 0x0F
            if opcode == 1:
                mark = data.find(b"~", start, end)
                if mark >= 0:
                    seq = int(data[mark + 1 : mark + 1 + SEQ_DIGITS])
                    if seen[seq]:
                        self.dups += 1
                    else:
                        seen[seq] = 1
                        new += 1
                    if seq < last:
                        self.reordered += 1
                    last = seq
                    if latencies is not None:
                        stamp = mark + 2 + SEQ_DIGITS
                        latencies.append(now - int(data[stamp : stamp + TS_DIGITS]))
                    elif end - pos != bulk_len:
                        bulk_len = self.bulk_len = end - pos
                        bulk_head = self.bulk_head = data[pos : start + 16]
                        bulk_seq_at = self.bulk_seq_at = mark + 1 - pos
                else:
                    self.control(data[start:end], now)
            elif opcode == 9:
                self.pings += 1
                self.write(mask_frame(10, data[start:end]))
            elif opcode == 8:
                code = int.from_bytes(data[start : start + 2], "big") if length >= 2 else 1005
                self.loop.close_codes[code] += 1
                self.lost()
                break
            pos = end
        self.last_seq = last
        if new:
            self.count += new
            self.loop.outstanding -= new
            self.loop.last_progress = time.monotonic()
        return pos

    def control(self, text: bytes, now: int) -> None:
        """A text frame without a marker: ready, subscribed, ping, pong or error."""
        if text.startswith(b'{"type":"ping"'):
            self.pings += 1
            self.write(PONG_FRAME)
        elif text.startswith(b'{"type":"presence.'):
            self.loop.presence_frames += 1
            self.loop.presence_bytes += len(text)
        elif b'"ready"' in text and self.t_ready == 0:
            self.t_ready = now
            self.loop.last_progress = time.monotonic()
            if self.subscribe_frame is None:
                self.settle()
            else:
                self.write(self.subscribe_frame)
        elif b'"subscribed"' in text and self.state == OPEN:
            self.state = SUBSCRIBED
            self.base = self.loop.published
            self.loop.open_clients += 1
            self.loop.last_progress = time.monotonic()
            self.settle()
        elif b'"error"' in text:
            self.loop.error_frames += 1

    def lost(self) -> None:
        """The connection is gone (or failed): what it was still due counts as lost."""
        if self.state == CLOSED:
            return
        # What it delivered before going away must count first.
        self.loop.parse_deferred()
        if self.state == SUBSCRIBED:
            loop = self.loop
            loop.open_clients -= 1
            missing = self.missing()
            loop.outstanding -= missing
            loop.lost_on_close += missing
        self.state = CLOSED
        self.settle()
        self.detach()

    def missing(self) -> int:
        return self.loop.published - self.base - self.count

    def close(self) -> None:
        """Our own close, after measuring."""
        if self.state != CLOSED:
            self.write(CLOSE_FRAME)
            self.state = CLOSED
            self.detach()


class Observer(WsClient):
    """Scenario P's observer: follows the membership of the presence topic from its frames
    (the only client whose frames are decoded), and times presence.get answers."""

    __slots__ = ("all_seen", "answers", "asked", "diffs", "members", "want")

    def __init__(self, loop: Loop, port: int, token: str, subscribe: bytes, want: int) -> None:
        super().__init__(loop, port, token, subscribe, 1)
        self.members: set[str] | None = None
        # Members to wait for, and when (ns) that many were first there.
        self.want = want
        self.all_seen = 0
        self.diffs = 0
        # When the presence.get in flight was sent (ns), and each answer's round trip (ms).
        self.asked = 0
        self.answers: list[float] = []

    def control(self, text: bytes, now: int) -> None:
        super().control(text, now)
        if not text.startswith(b'{"type":"presence.'):
            return
        message = json.loads(text)
        if message["type"] == "presence.state":
            if self.asked:
                self.answers.append((now - self.asked) / 1e6)
                self.asked = 0
                return
            self.members = {entry["user_id"] for entry in message["members"]}
        elif message["type"] == "presence.diff" and self.members is not None:
            self.diffs += 1
            self.members.update(entry["user_id"] for entry in message["joins"])
            self.members.difference_update(entry["user_id"] for entry in message["leaves"])
        if self.members is not None and len(self.members) >= self.want and not self.all_seen:
            self.all_seen = now


class Publisher(Endpoint):
    """One keep-alive HTTP/1.1 connection posting to /api/events; requests may be pipelined
    (the server answers them in order)."""

    __slots__ = ("dead", "head", "in_flight", "on_response", "rest")

    def __init__(
        self, loop: Loop, port: int, token: str, on_response: Callable[[int], None]
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(loop, sock)
        self.head = (
            f"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n"
        )
        self.on_response = on_response
        self.in_flight = 0
        self.dead = False
        self.rest = b""
        loop.register(self, EPOLLIN)

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.dead

    def post(self, body: bytes) -> None:
        self.in_flight += 1
        self.write((self.head % len(body)).encode() + body)

    def on_ready(self, events: int) -> None:
        if events & EPOLLOUT:
            self.flush()
        if events & (EPOLLIN | HANGUP):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.lost()
                return
            self.rest += data
            while (end := self.rest.find(b"\r\n\r\n")) >= 0:
                head = self.rest[:end].lower()
                at = head.find(b"content-length:")
                length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
                if len(self.rest) < end + 4 + length:
                    return
                status = int(self.rest[9:12])
                self.rest = self.rest[end + 4 + length :]
                self.in_flight -= 1
                self.loop.last_progress = time.monotonic()
                self.on_response(status)

    def lost(self) -> None:
        """The server closed the connection: every request in flight gets status 0 (an idle
        keep-alive connection timing out has none). Never used again."""
        in_flight, self.in_flight = self.in_flight, 0
        self.dead = True
        self.detach()
        for _ in range(in_flight):
            self.on_response(0)


class Scenario:
    """State and helpers shared by the scenarios."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = Loop(spin=not args.sleep)
        self.clients: list[WsClient] = []
        # Bitmap size per client: the most sequence numbers this scenario publishes.
        self.max_events = 0
        self.statuses: Counter[int] = Counter()
        self.subscribe = mask_frame(
            1, json.dumps({"type": "subscribe", "workspace_id": WORKSPACE}).encode()
        )

    def connect(
        self, n: int, *, subscribe: bool, concurrency: int, per_turn: int, timeout: float
    ) -> tuple[bool, float]:
        """Open `n` clients, at most `concurrency` unsettled at once; (all settled, seconds)."""
        args = self.args
        loop = self.loop
        frame = self.subscribe if subscribe else None
        started: list[WsClient] = []
        loop.settled = 0

        def top_up(now: float) -> float:
            room = min(per_turn, concurrency - (len(started) - loop.settled), n - len(started))
            for _ in range(room):
                started.append(WsClient(loop, args.ws_port, args.token, frame, self.max_events))
            return 0.0 if len(started) < n else 0.1

        t0 = time.monotonic()
        loop.last_progress = t0
        ok = loop.run(lambda: loop.settled == n, t0 + timeout, top_up)
        self.clients.extend(started)
        return ok, time.monotonic() - t0

    def publish_body(self, body: bytes, count: int, publisher: Publisher) -> None:
        """Post `count` events; every open client is now due them."""
        self.loop.outstanding += count * self.loop.open_clients
        self.loop.published += count
        publisher.post(body)

    def event(self, seq: int) -> str:
        return EVENT_TEMPLATE % (seq, time.monotonic_ns())

    def correctness(self) -> dict[str, object]:
        loop = self.loop
        open_missing = sum(c.missing() for c in self.clients if c.state == SUBSCRIBED)
        return {
            "published": loop.published,
            "delivered": sum(c.count for c in self.clients),
            "lost": open_missing + loop.lost_on_close,
            "duplicates": sum(c.dups for c in self.clients),
            "reordered": sum(c.reordered for c in self.clients),
            "closed_by_server": dict(loop.close_codes),
            "error_frames": loop.error_frames,
            "http_statuses": {str(k): v for k, v in self.statuses.items()},
        }

    def close_all(self) -> None:
        for client in self.clients:
            client.close()

    def measure(self) -> tuple[float, ...]:
        servers = [server_cpu(pid) for pid in self.args.server_pid]
        return time.monotonic(), *servers, own_cpu(), self.loop.busy, machine_busy()

    def shares(self, start: tuple[float, ...]) -> dict[str, Any]:
        """Wall time, and server and load generator CPU, since `start` (from `measure`).

        `other_cpu_pct`, in % of one core, is the machine's busy time that was neither the
        server's nor ours: other processes, and the little interrupt-time work the kernel
        charged to no process. Much of it means the run shared the machine.
        """
        end = self.measure()
        wall, *servers, own, busy, machine = (b - a for a, b in zip(start, end, strict=True))
        server = sum(servers)
        return {
            "other_cpu_pct": round(100 * (machine - server - own) / wall, 1),
            "wall_s": round(wall, 3),
            "server_cpu_s": round(server, 3),
            "server_cpu_pct_each": [round(100 * cpu / wall, 1) for cpu in servers],
            "loadgen_cpu_s": round(own, 3),
            "loadgen_busy_s": round(busy, 3),
            "server_cpu_pct": round(100 * server / wall, 1),
            "loadgen_cpu_pct": round(100 * own / wall, 1),
            "loadgen_busy_pct": round(100 * busy / wall, 1),
        }


def throughput(s: Scenario) -> dict[str, object]:
    """(A) events in batches, each batch posted as soon as the previous one is accepted.

    Two requests are kept in flight on one connection (pipelined, so still in order): the
    server then always has the next batch at hand instead of idling for however long our
    loop takes to see its 202 among a thousand busy sockets.
    """
    args = s.args
    s.max_events = args.events
    texts = [b"%08d" % seq for seq in range(args.events)]
    s.loop.seq_columns = [bytes(text[j] for text in texts) for j in range(SEQ_DIGITS)]
    ok, setup = s.connect(
        args.clients, subscribe=True, concurrency=SETUP_CONCURRENCY, per_turn=64, timeout=120
    )
    if not ok:
        raise SystemExit(f"set-up failed: {s.loop.open_clients}/{args.clients} subscribed")
    batches = [
        (
            "[" + ",".join(s.event(seq) for seq in range(i, min(i + args.batch, args.events))) + "]"
        ).encode()
        for i in range(0, args.events, args.batch)
    ]
    sizes = [min(args.batch, args.events - i) for i in range(0, args.events, args.batch)]
    next_batch = 0
    accepted_at = 0.0

    def post_next() -> None:
        nonlocal next_batch
        s.publish_body(batches[next_batch], sizes[next_batch], publisher)
        next_batch += 1

    def on_response(status: int) -> None:
        nonlocal next_batch, accepted_at
        s.statuses[status] += 1
        if status != 202 or time.monotonic() - start[0] > args.budget:
            next_batch = len(batches)
        if next_batch < len(batches):
            post_next()
        elif not publisher.in_flight and not accepted_at:
            accepted_at = time.monotonic()

    publisher = Publisher(s.loop, args.http_port, args.token, on_response)
    start = s.measure()
    for _ in range(min(2, len(batches))):
        post_next()
    ok = s.loop.run(lambda: bool(accepted_at) and s.loop.outstanding <= 0, start[0] + args.timeout)
    result = s.shares(start)
    deliveries = sum(c.count for c in s.clients)
    result.update(
        complete=ok,
        setup_s=round(setup, 3),
        clients=args.clients,
        events=args.events,
        batch=args.batch,
        deliveries=deliveries,
        deliveries_per_s=round(deliveries / result["wall_s"]),
        server_us_per_delivery=round(1e6 * result["server_cpu_s"] / max(deliveries, 1), 3),
        loadgen_us_per_delivery=round(1e6 * result["loadgen_busy_s"] / max(deliveries, 1), 3),
        publish_accepted_s=round(accepted_at - start[0], 3) if accepted_at else None,
        truncated_by_budget=s.loop.published < args.events,
    )
    return result


def latency(s: Scenario) -> dict[str, object]:
    """(L) one event per request at a fixed rate; publish -> receive latency of every delivery."""
    args = s.args
    total = round(args.rate * args.seconds)
    s.max_events = total
    ok, setup = s.connect(
        args.clients, subscribe=True, concurrency=SETUP_CONCURRENCY, per_turn=64, timeout=120
    )
    if not ok:
        raise SystemExit(f"set-up failed: {s.loop.open_clients}/{args.clients} subscribed")
    publishers: list[Publisher] = []
    answered = 0

    def on_response(status: int) -> None:
        nonlocal answered
        s.statuses[status] += 1
        answered += 1

    def idle_publisher() -> Publisher | None:
        for p in publishers:
            if not p.busy:
                return p
        if len(publishers) >= MAX_PUBLISHERS:
            return None
        publishers.append(Publisher(s.loop, args.http_port, args.token, on_response))
        return publishers[-1]

    for _ in range(4):
        publishers.append(Publisher(s.loop, args.http_port, args.token, on_response))
    s.loop.latencies = array.array("q")
    s.loop.deferred = deque()
    sent = 0
    start = s.measure()
    interval = 1.0 / args.rate

    late = 0

    def tick(now: float) -> float:
        nonlocal sent, late
        due_at = start[0] + sent * interval
        if sent < total and now >= due_at:
            publisher = idle_publisher()
            if publisher is None:
                return 0.001
            late += now - due_at > interval
            s.publish_body(s.event(sent).encode(), 1, publisher)
            sent += 1
            due_at += interval
        return due_at - time.monotonic() if sent < total else 0.1

    ok = s.loop.run(
        lambda: sent == total and answered == total and s.loop.outstanding <= 0,
        start[0] + args.seconds + args.timeout,
        tick,
    )
    result = s.shares(start)
    s.loop.parse_deferred()
    s.loop.deferred = None
    samples = sorted(s.loop.latencies)
    s.loop.latencies = None
    ms = [v / 1e6 for v in samples]
    result.update(
        complete=ok,
        setup_s=round(setup, 3),
        clients=args.clients,
        events=total,
        rate=args.rate,
        samples=len(samples),
        p50_ms=round(percentile(ms, 50), 3),
        p99_ms=round(percentile(ms, 99), 3),
        max_ms=round(ms[-1], 3) if ms else None,
        server_us_per_delivery=round(1e6 * result["server_cpu_s"] / max(len(samples), 1), 3),
        publishers_used=len(publishers),
        late_publishes=late,
    )
    return result


def idle(s: Scenario) -> dict[str, object]:
    """(C) idle subscribed connections: RSS per connection and CPU while they are held."""
    args = s.args
    pid = args.server_pid[0]
    s.max_events = 1
    # Warm-up: the first connections pay one-time costs (imports, caches, pools) that are
    # not per connection.
    s.connect(10, subscribe=True, concurrency=10, per_turn=10, timeout=30)
    s.close_all()
    s.clients.clear()
    s.loop.open_clients = 0
    s.loop.sleep(1.0)
    rss_before = server_rss_kib(pid)
    ok, setup = s.connect(
        args.clients, subscribe=True, concurrency=IDLE_CONCURRENCY, per_turn=64, timeout=180
    )
    connects = sorted((c.t_ready - c.t_start) / 1e6 for c in s.clients if c.t_ready)
    s.loop.sleep(1.0)
    rss_connected = server_rss_kib(pid)
    pings_before = sum(c.pings for c in s.clients)
    start = s.measure()
    s.loop.sleep(args.seconds)
    result = s.shares(start)
    rss_held = server_rss_kib(pid)
    held = s.loop.open_clients
    # Keepalive pings (JSON or protocol-level) received during the hold, all answered.
    pings = sum(c.pings for c in s.clients) - pings_before
    # Liveness check after the hold: one event must reach every connection still open.
    publisher = Publisher(
        s.loop, args.http_port, args.token, lambda status: s.statuses.update([status])
    )
    s.publish_body(("[" + s.event(0) + "]").encode(), 1, publisher)
    s.loop.run(lambda: s.loop.outstanding <= 0, time.monotonic() + 60)
    result.update(
        complete=ok and held == args.clients,
        setup_s=round(setup, 3),
        clients=args.clients,
        held_open=held,
        rss_before_kib=rss_before,
        rss_connected_kib=rss_connected,
        rss_held_kib=rss_held,
        rss_per_conn_kib=round((rss_held - rss_before) / max(held, 1), 2),
        connect_p50_ms=round(percentile(connects, 50), 3),
        connect_p99_ms=round(percentile(connects, 99), 3),
        pings_per_conn=round(pings / max(held, 1), 2),
        server_us_per_ping=round(1e6 * result["server_cpu_s"] / pings, 1) if pings else None,
    )
    return result


def storm(s: Scenario) -> dict[str, object]:
    """(D) open every connection as fast as the loop can; connect -> ready time of each."""
    args = s.args
    # A full accept queue drops the SYN, and the client retries it 1 s later (then 3 s...).
    drops_before, retries_before = tcp_counters("ListenDrops", "TCPSynRetrans")
    start = s.measure()
    ok, _ = s.connect(
        args.clients,
        subscribe=False,
        concurrency=args.clients,
        per_turn=STORM_CONNECTS_PER_TURN,
        timeout=args.timeout,
    )
    result = s.shares(start)
    drops, retries = tcp_counters("ListenDrops", "TCPSynRetrans")
    ready = sorted((c.t_ready - c.t_start) / 1e6 for c in s.clients if c.t_ready)
    result.update(
        complete=ok and len(ready) == args.clients,
        clients=args.clients,
        ready=len(ready),
        failed=args.clients - len(ready),
        connects_per_s=round(len(ready) / result["wall_s"]),
        listen_drops=drops - drops_before,
        syn_retransmits=retries - retries_before,
        p50_ms=round(percentile(ready, 50), 3),
        p99_ms=round(percentile(ready, 99), 3),
        max_ms=round(ready[-1], 3) if ready else None,
    )
    return result


def presence(s: Scenario) -> dict[str, object]:
    """(P) every client joins one presence topic, an observer first; what the joins cost
    everyone in frames, how long until the observer has seen the last one, and the
    round trip of presence.get with every member there."""
    args = s.args
    loop = s.loop
    s.max_events = 1
    s.subscribe = mask_frame(1, json.dumps({"type": "subscribe", "topic": PRESENCE_TOPIC}).encode())
    observer = Observer(loop, args.ws_port, args.token, s.subscribe, args.clients + 1)
    s.clients.append(observer)
    loop.run(lambda: observer.members is not None, time.monotonic() + 30)
    frames_before, bytes_before = loop.presence_frames, loop.presence_bytes
    start = s.measure()
    t0 = time.monotonic_ns()
    ok, setup = s.connect(
        args.clients,
        subscribe=True,
        concurrency=SETUP_CONCURRENCY,
        per_turn=64,
        timeout=args.timeout,
    )
    acked = time.monotonic_ns()
    ok = loop.run(lambda: observer.all_seen > 0, time.monotonic() + args.timeout) and ok
    result = s.shares(start)
    # Diffs still on their way (a member's own state, the last flush) are counted too.
    loop.sleep(2.0)
    frames = loop.presence_frames - frames_before
    sent = loop.presence_bytes - bytes_before
    get = mask_frame(1, json.dumps({"type": "presence.get", "topic": PRESENCE_TOPIC}).encode())
    for _ in range(args.gets):
        observer.asked = time.monotonic_ns()
        observer.write(get)
        if not loop.run(lambda: observer.asked == 0, time.monotonic() + 30):
            break
    answers = sorted(observer.answers)
    members = len(observer.members or ())
    result.update(
        complete=ok and len(answers) == args.gets,
        clients=args.clients,
        members_seen=members,
        setup_s=round(setup, 3),
        last_join_seen_s=round((observer.all_seen - t0) / 1e9, 3) if observer.all_seen else None,
        after_last_ack_ms=(
            round((observer.all_seen - acked) / 1e6, 1) if observer.all_seen else None
        ),
        observer_diffs=observer.diffs,
        presence_frames=frames,
        frames_per_member=round(frames / max(args.clients, 1), 1),
        presence_mib=round(sent / 2**20, 1),
        get_p50_ms=round(percentile(answers, 50), 3) if answers else None,
        get_p99_ms=round(percentile(answers, 99), 3) if answers else None,
    )
    return result


SCENARIOS = {"A": throughput, "L": latency, "C": idle, "D": storm, "P": presence}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--ws-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument(
        "--server-pid",
        type=int,
        action="append",
        required=True,
        help="for /proc CPU (all of them: the server side) and RSS (the first); repeatable",
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=20000, help="(A) events to publish")
    parser.add_argument("--batch", type=int, default=100, help="(A) events per request")
    parser.add_argument(
        "--budget", type=float, default=120.0, help="(A) seconds to keep posting batches"
    )
    parser.add_argument("--rate", type=float, default=50.0, help="(L) events per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="(L) publishing / (C) hold")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the phase")
    parser.add_argument("--gets", type=int, default=100, help="(P) presence.get round trips")
    parser.add_argument(
        "--sleep",
        action="store_true",
        help="wait in epoll_wait when idle instead of spinning (see bench.py --loadgen-sleeps)",
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.clients + OWN_DESCRIPTORS > hard:
        raise SystemExit(
            f"{args.clients:,} clients need {args.clients + OWN_DESCRIPTORS:,} descriptors; the"
            f" hard RLIMIT_NOFILE is {hard:,} (ulimit -Hn)"
        )
    scenario = Scenario(args)
    try:
        result = SCENARIOS[args.scenario](scenario)
        result.update(scenario.correctness())
    finally:
        scenario.close_all()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
