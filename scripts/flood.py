"""What one flooding client costs a gateway process: server CPU over a run.

Starts `trio-gateway serve` on a free port (extra flags pass through), connects one
WebSocket client on a raw socket and sends `{"type":"ping"}` frames at `--rate` a second for
`--seconds`, in batches every 10 ms, until the gateway closes the connection or the time
is up. Prints one JSON line: the frames the client sent, whether and when it was closed,
and the gateway's CPU time over the run (from /proc/PID/stat) as a share of one core.

    .venv/bin/python scripts/flood.py                       # the defaults: limited
    .venv/bin/python scripts/flood.py --client-rate 0       # no limit, for comparison
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import subprocess
import sys
import time

API_KEY = "flood-key"
BATCH_PERIOD = 0.01  # seconds between batches of frames
_LISTENING = re.compile(rb"listening on ws://[^:]+:(\d+)/")


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_gateway(flags: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    command = [sys.executable, "-m", "trio_gateway", "serve", "--port", "0"]
    gateway = subprocess.Popen(
        [*command, "--api-key", API_KEY, "--log-level", "warning", *flags],
        stderr=subprocess.PIPE,
    )
    assert gateway.stderr is not None
    for line in gateway.stderr:
        if match := _LISTENING.search(line):
            return gateway, int(match[1])
    raise SystemExit("the gateway did not start")


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /api/ws?token={API_KEY} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def flood(sock: socket.socket, rate: float, seconds: float) -> tuple[int, float | None]:
    """Send at `rate` frames/s; (frames sent, seconds until the server closed or None)."""
    frame = masked_text_frame('{"type":"ping"}')
    per_batch = max(1, round(rate * BATCH_PERIOD))
    batch = frame * per_batch
    sock.setblocking(False)
    sent = 0
    started = time.monotonic()
    deadline = started + seconds
    next_batch = started
    while (now := time.monotonic()) < deadline:
        try:
            while sock.recv(65536):
                pass
            return sent, now - started  # the server closed: EOF
        except BlockingIOError:
            pass
        except OSError:
            return sent, now - started
        try:
            sock.sendall(batch)
            sent += per_batch
        except (BlockingIOError, OSError):
            return sent, now - started
        next_batch += BATCH_PERIOD
        time.sleep(max(0.0, next_batch - time.monotonic()))
    return sent, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20_000, help="frames a second")
    parser.add_argument("--seconds", type=float, default=5.0)
    args, flags = parser.parse_known_args()
    gateway, port = start_gateway(flags)
    try:
        sock = connect(port)
        before, started = cpu_seconds(gateway.pid), time.monotonic()
        sent, closed_after = flood(sock, args.rate, args.seconds)
        # What the server still spends on the closed connection belongs to the flood too.
        remaining = args.seconds - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(gateway.pid) - before
        sock.close()
    finally:
        gateway.terminate()
        gateway.wait()
    print(
        json.dumps(
            {
                "flags": flags,
                "frames_sent": sent,
                "closed_after_s": None if closed_after is None else round(closed_after, 3),
                "seconds": round(elapsed, 2),
                "server_cpu_s": round(cpu, 3),
                "server_cpu_percent_of_a_core": round(100 * cpu / elapsed, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
