"""Connection caps on real sockets: what a refused client sees, and that nothing hangs.

Per-address, total and handshake caps refuse the upgrade with HTTP 503 and `Retry-After`,
counted in `handshakes_refused_total{reason}` and logged once each with the reason. The
descriptor tests run a gateway process with a low `RLIMIT_NOFILE`: the WebSockets stop
short of it (health and publishes still answer), and connections beyond the descriptors
themselves are answered 503 at once instead of waiting in the backlog.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_websocket

from trio_gateway import Config, Gateway
from trio_gateway.client.http import http_request
from trio_gateway.transport.limits import DESCRIPTOR_RESERVE, ConnectionLimits, host_of

from .conftest import with_settings
from .helpers import API_KEY, TIMEOUT, event, post, ready, receive_json, send_json, tcp_client


async def refused(port: int, token: str | None = API_KEY) -> trio_websocket.ConnectionRejected:
    """The rejection of an upgrade that must be refused."""
    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with tcp_client(port, token):
            pass
    return rejected.value


def header(rejection: trio_websocket.ConnectionRejected, name: bytes) -> bytes | None:
    return dict(rejection.headers or []).get(name)


@asynccontextmanager
async def clients(
    port: int, n: int, token: str | None = API_KEY
) -> AsyncIterator[list[trio_websocket.WebSocketConnection]]:
    """`n` WebSocket clients, open until the block ends (with a token: each got `ready`)."""
    async with AsyncExitStack() as stack:
        opened = []
        for _ in range(n):
            ws = await stack.enter_async_context(tcp_client(port, token))
            if token is None:
                assert (await receive_json(ws))["type"] == "hello"
            else:
                await ready(ws)
            opened.append(ws)
        yield opened


async def metric(port: int, line: str) -> bool:
    _, _, body = await http_request(
        "GET", f"http://127.0.0.1:{port}/metrics", headers={"authorization": f"Bearer {API_KEY}"}
    )
    return line in body.decode().splitlines()


# --- the counts, directly ------------------------------------------------------------------


def test_caps_count_and_give_back() -> None:
    limits = ConnectionLimits(max_per_ip=2, max_total=3, max_handshakes=0)
    first = limits.open("10.0.0.1")
    second = limits.open("10.0.0.1")
    assert limits.refusal("10.0.0.1") == "per_ip"
    assert limits.refusal("10.0.0.2") is None
    third = limits.open("10.0.0.2")
    assert limits.refusal("10.0.0.3") == "max_connections"
    for slot in (first, second, third):
        slot.release()
    assert (limits.websockets, limits.handshakes, limits.by_host) == (0, 0, {})


def test_handshakes_end_at_registration() -> None:
    limits = ConnectionLimits(max_per_ip=0, max_total=100, max_handshakes=1)
    slot = limits.open(None)
    assert limits.refusal(None) == "max_handshakes"
    slot.registered()
    slot.registered()  # once only
    assert limits.refusal(None) is None
    slot.release()
    assert (limits.websockets, limits.handshakes) == (0, 0)


def test_total_is_bounded_by_the_descriptors() -> None:
    config = Config(max_connections=10_000)
    assert ConnectionLimits.from_config(config, descriptors=1024).max_total == 1024 - 128
    assert ConnectionLimits.from_config(config, descriptors=1 << 20).max_total == 10_000
    unbounded = with_settings(config, max_connections=0)
    assert ConnectionLimits.from_config(unbounded, descriptors=4096).max_total == 4096 - 128
    assert DESCRIPTOR_RESERVE == 128


def test_host_of_a_peer() -> None:
    assert host_of("127.0.0.1:5000") == "127.0.0.1"
    assert host_of("::1:5000") == "::1"
    assert host_of(None) is None


# --- in-process gateway, real sockets ------------------------------------------------------


class TestPerAddress:
    @pytest.fixture
    def config(self, config: Config) -> Config:
        return with_settings(config, max_connections_per_ip=3)

    async def test_the_connection_over_the_cap_gets_503_and_one_more_fits_once_one_leaves(
        self, gateway: Gateway, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="trio_gateway.http")
        port = gateway.port
        with trio.fail_after(TIMEOUT):
            async with clients(port, 2):
                async with clients(port, 1):
                    rejection = await refused(port)
                    assert rejection.status_code == 503
                    assert header(rejection, b"retry-after") == b"5"
                    assert json.loads(rejection.body or b"") == {
                        "error": "Too many connections from this address"
                    }
                    # Plain HTTP from the same address is not a WebSocket: it still answers.
                    status, _ = await post(port, "/api/events", event("W"))
                    assert status == 202
                async with clients(port, 1):
                    assert gateway.client_count() == 3
            refusals = 'trio_gateway_handshakes_refused_total{reason="per_ip"} 1.0'
            assert await metric(port, refusals)
        lines = [r for r in caplog.records if r.getMessage() == "websocket upgrade refused"]
        logged = [(r.fields["status"], r.fields["reason"]) for r in lines]  # type: ignore[attr-defined]
        assert logged == [(503, "per_ip")]


async def test_total_cap(nursery: trio.Nursery, config: Config) -> None:
    from trio_gateway import serve

    gateway: Gateway = await nursery.start(serve, with_settings(config, max_connections=2))
    with trio.fail_after(TIMEOUT):
        async with clients(gateway.port, 2):
            rejection = await refused(gateway.port)
            assert rejection.status_code == 503
            assert json.loads(rejection.body or b"") == {
                "error": "Too many connections: try again later"
            }
            assert header(rejection, b"retry-after") == b"5"


async def test_handshake_cap_counts_clients_not_yet_identified(
    nursery: trio.Nursery, config: Config
) -> None:
    from trio_gateway import serve

    gateway: Gateway = await nursery.start(serve, with_settings(config, max_handshakes=2))
    port = gateway.port
    with trio.fail_after(TIMEOUT):
        async with clients(port, 2, token=None) as waiting:
            rejection = await refused(port)
            assert rejection.status_code == 503
            assert header(rejection, b"retry-after") == b"1"
            assert json.loads(rejection.body or b"") == {
                "error": "Too many handshakes in progress: try again later"
            }
            # One identifies: its handshake is over, and the next upgrade passes.
            ws = waiting[0]
            await send_json(ws, {"type": "identify", "token": API_KEY})
            assert (await receive_json(ws))["type"] == "ready"
            async with clients(port, 1):
                pass
        assert await metric(
            port, 'trio_gateway_handshakes_refused_total{reason="max_handshakes"} 1.0'
        )


# --- a gateway process at its descriptor limit ---------------------------------------------

#: The process's descriptor limit: the reserve plus room for 20 WebSockets.
NOFILE = DESCRIPTOR_RESERVE + 20
_LISTENING = re.compile(rb"listening on ws://[^:]+:(\d+)/")


@attrs.define
class GatewayProcess:
    port: int
    log_file: Path

    def log_lines(self) -> list[dict[str, Any]]:
        """The process's JSON log lines so far."""
        lines = self.log_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@contextmanager
def gateway_with_nofile(nofile: int, tmp_path: Path) -> Iterator[GatewayProcess]:
    """A `trio-gateway serve` process whose RLIMIT_NOFILE is `nofile`, logging to a file."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log_file = tmp_path / "gateway.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "trio_gateway", "serve", "--port", "0", "--api-key", API_KEY,
             "--log-level", "warning", "--log-format", "json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=limit,
        )  # fmt: skip
    try:
        # A readiness probe of a separate process, bounded; not a synchronisation.
        deadline = time.monotonic() + 3 * TIMEOUT
        while not (match := _LISTENING.search(log_file.read_bytes())):
            assert process.poll() is None, log_file.read_text()
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.02)
        yield GatewayProcess(int(match[1]), log_file)
    finally:
        process.terminate()
        process.wait(timeout=15)


async def test_websockets_stop_short_of_the_descriptor_limit(tmp_path: Path) -> None:
    with gateway_with_nofile(NOFILE, tmp_path) as gateway, trio.fail_after(3 * TIMEOUT):
        port = gateway.port
        async with clients(port, 20):
            rejection = await refused(port)
            assert rejection.status_code == 503
            # The reserve: health and publishes answer while the WebSockets are at the cap.
            status, _, body = await http_request("GET", f"http://127.0.0.1:{port}/api/health")
            assert (status, json.loads(body)["ws_clients"]) == (200, 20)
            status, _ = await post(port, "/api/events", event("W"))
            assert status == 202
        # The 20 are gone: a new client is let in at once.
        async with clients(port, 1):
            pass


async def test_connections_beyond_the_descriptors_are_answered_503_not_left_waiting(
    tmp_path: Path,
) -> None:
    # Connections that never send a request (a flood of bare TCP connects) take the
    # descriptors themselves; the accept loop answers each one it has no descriptor for.
    with gateway_with_nofile(NOFILE, tmp_path) as gateway, trio.fail_after(3 * TIMEOUT):
        port = gateway.port
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(2 * NOFILE)]
        try:
            answered = 0
            with selectors.DefaultSelector() as selector:
                for sock in socks:
                    selector.register(sock, selectors.EVENT_READ)
                # A bound on a separate process's answers, not a synchronisation.
                deadline = time.monotonic() + 2
                while (left := deadline - time.monotonic()) > 0:
                    for key, _ in selector.select(left):
                        ready_sock = key.fileobj
                        assert isinstance(ready_sock, socket.socket)
                        selector.unregister(ready_sock)
                        try:
                            data = ready_sock.recv(4096)
                        except ConnectionResetError:
                            data = b"HTTP/1.1 503"  # answered and closed before it was read
                        assert data.startswith(b"HTTP/1.1 503"), data
                        answered += 1
            # The gateway can hold at most NOFILE of them: every other one got its answer
            # rather than waiting in the backlog.
            assert answered >= NOFILE
        finally:
            for sock in socks:
                sock.close()
        # Accepting resumes as soon as the gateway has closed its side: until then each
        # attempt is answered 503 at once (polling a separate process, bounded).
        started = time.monotonic()
        while (await http_request("GET", f"http://127.0.0.1:{port}/api/health"))[0] != 200:
            assert time.monotonic() - started < 1
        # Each refusal is one log line with its reason, and counted.
        refusals = [
            line
            for line in gateway.log_lines()
            if line["event"] == "connection refused" and line["reason"] == "descriptors"
        ]
        assert len(refusals) >= answered
        _, _, body = await http_request(
            "GET",
            f"http://127.0.0.1:{port}/metrics",
            headers={"authorization": f"Bearer {API_KEY}"},
        )
        counted = re.search(
            rb'trio_gateway_handshakes_refused_total\{reason="descriptors"\} (\d+)', body
        )
        assert counted is not None
        assert int(counted[1]) == len(refusals)
