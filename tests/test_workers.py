"""`trio-gateway serve --workers N`: the supervisor, its workers, restarts, signals, redaction.

Process tests start the real supervisor (`python -m trio_gateway serve --workers 2`) against a
real redis-server (the conftest fixture), read its stderr (the workers share it) in a
background task, and synchronise only on what the processes log or answer over HTTP, each
under a hard `trio.fail_after`. Cleanup SIGKILLs the supervisor and every worker it logged.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any

import h11
import pytest
import trio

from trio_gateway import Config
from trio_gateway.client.http import health, http_request, publish_events
from trio_gateway.runtime.cli import run
from trio_gateway.runtime.config import LogSettings, redact_url
from trio_gateway.runtime.workers import decode_spec, encode_spec

from .helpers import closed_with, raw_client, ready, receive_json, subscribe
from .redis_server import RedisServer

# Seconds: hard bound on each process test; a normal run takes 2-3 s (two workers boot in
# about a second on two cores, a restart adds the 0.5 s backoff).
TIMEOUT = 10
COMMAND = [sys.executable, "-m", "trio_gateway", "serve"]
LISTENING = re.compile(r"^trio-gateway listening on ws://127\.0\.0\.1:(\d+)/api/ws ")
KEY = "workers-test-key"
CLIENTS = 20


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRIO_GATEWAY_")}


# --- in process ------------------------------------------------------------------------------


def test_workers_without_redis_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["serve", "--workers", "2", "--api-key", "k"], {}) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "trio-gateway: invalid configuration: workers: 2 workers need a shared broker; "
        "set redis_url (--redis-url redis://host:port/db)\n"
    )
    assert captured.out == ""


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:secret@host/0", "rediss://user:***@host/0"),
        ("redis://secret@host", "redis://***@host"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://:p@ss:w@rd@host/0", "redis://:***@host/0"),
        ("redis://host/0?password=secret&db=1", "redis://host/0?password=***&db=1"),
        ("redis://host/0?db=1&Password=secret", "redis://host/0?db=1&Password=***"),
    ],
)
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_worker_spec_round_trips_every_setting() -> None:
    config = Config(api_keys=("a", "b,c"), port=1234, redis_url="redis://:pw@h/0", workers=1)
    logs = LogSettings(log_level="debug", log_format="console")
    assert decode_spec(encode_spec(config, logs)) == (config, logs)


# --- processes -------------------------------------------------------------------------------


class Supervisor:
    """A running `serve --workers N` whose stderr (its own and its workers') is collected."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stderr is not None
        self.process = process
        self.stderr = process.stderr
        self.lines: list[str] = []
        self.ended = False
        self._changed = trio.Event()

    async def collect(self) -> None:
        """Read stderr until every process holding it has exited (EOF)."""
        pending = b""
        try:
            while chunk := await self.stderr.receive_some():
                pending += chunk
                *complete, pending = pending.split(b"\n")
                self.lines.extend(line.decode() for line in complete)
                self._notify()
        except trio.ClosedResourceError:
            return  # the test is over and cleanup closed the pipe
        if pending:
            self.lines.append(pending.decode())
        self.ended = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    async def wait_for(self, found: Callable[[], Any]) -> Any:
        """Wait for new stderr until `found()` returns something truthy, and return it."""
        while not (result := found()):
            if self.ended:
                raise AssertionError("stderr ended first:\n" + "\n".join(self.lines))
            await self._changed.wait()
        return result

    async def port(self) -> int:
        def listening() -> int | None:
            for line in self.lines:
                if match := LISTENING.match(line):
                    return int(match[1])
            return None

        port: int = await self.wait_for(listening)
        return port

    async def record(
        self, event: str, where: Callable[[dict[str, Any]], bool] = bool, **expected: Any
    ) -> dict[str, Any]:
        """The first log record with this event and these field values, for which `where`."""

        def matching() -> dict[str, Any] | None:
            for record in self.records():
                if (
                    record["event"] == event
                    and all(record.get(name) == value for name, value in expected.items())
                    and where(record)
                ):
                    return record
            return None

        record: dict[str, Any] = await self.wait_for(matching)
        return record

    def worker_pids(self) -> set[int]:
        return {r["pid"] for r in self.records() if r["event"] == "worker started"}

    async def finish(self) -> int:
        """The supervisor's exit status, once it and every worker have closed stderr."""
        await self.wait_for(lambda: self.ended)
        return await self.process.wait()


@asynccontextmanager
async def supervisor(
    nursery: trio.Nursery, redis: RedisServer, *args: str
) -> AsyncIterator[Supervisor]:
    process = await trio.lowlevel.open_process(
        [*COMMAND, "--workers", "2", "--redis-url", redis.url, "--api-key", KEY, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    running = Supervisor(process)
    nursery.start_soon(running.collect)
    try:
        yield running
    finally:
        # Workers are not our children: after a failed test they would otherwise drain for a
        # while, holding the redis fixture's server.
        for pid in running.worker_pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await trio.aclose_forcefully(running.stderr)


async def exited(pid: int) -> None:
    """Return once process `pid` (not necessarily our child) has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # exited and reaped already
    try:
        # A pidfd turns readable when its process exits (zombie or reaped).
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def instances_serving(port: int, wanted: Callable[[dict[str, dict[str, Any]]], bool]) -> None:
    """Ask /api/health over fresh connections until the answers seen satisfy `wanted`.

    The kernel spreads connections over the workers by a hash of the client's port, so new
    connections reach every worker soon; the caller's `fail_after` bounds the wait.
    """
    latest: dict[str, dict[str, Any]] = {}
    while not wanted(latest):
        answer = await health(f"http://127.0.0.1:{port}")
        latest[answer["instance"]] = answer


async def test_two_workers_share_the_port_and_deliver_every_event_once(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT):
        async with supervisor(nursery, redis_server, "--port", "0") as gateway:
            port = await gateway.port()
            await instances_serving(port, lambda seen: len(seen) == 2)
            async with AsyncExitStack() as stack:
                clients = [
                    (await stack.enter_async_context(raw_client(port, KEY))).ws
                    for _ in range(CLIENTS)
                ]
                for ws in clients:
                    await ready(ws)
                    await subscribe(ws, scope="all")

                # Both workers hold clients, so delivery has to cross from one to the other.
                def both_hold_clients(seen: dict[str, dict[str, Any]]) -> bool:
                    counts = [answer["ws_clients"] for answer in seen.values()]
                    return len(counts) == 2 and sum(counts) == CLIENTS and min(counts) > 0

                await instances_serving(port, both_hold_clients)

                base = f"http://127.0.0.1:{port}"
                first = {"workspace_id": "W", "kind": "first"}
                second = {"workspace_id": "W", "kind": "second"}
                assert await publish_events(base, KEY, first) == {"accepted": 1}
                # Published after the first was accepted: every client gets it after the
                # first, so receiving it next proves the first was not delivered twice.
                assert await publish_events(base, KEY, second) == {"accepted": 1}
                for ws in clients:
                    for event in (first, second):
                        message = await receive_json(ws)
                        assert (message["type"], message["event"]) == ("event", event)


async def test_the_nodes_view_lists_each_worker_whichever_one_answers(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT):
        async with supervisor(nursery, redis_server, "--port", "0") as gateway:
            port = await gateway.port()
            await instances_serving(port, lambda seen: len(seen) == 2)
            workers = [await gateway.record("worker started", worker=n) for n in (0, 1)]
            status, _, body = await http_request(
                "GET",
                f"http://127.0.0.1:{port}/api/nodes",
                headers={"authorization": f"Bearer {KEY}"},
            )
    assert status == 200
    nodes = json.loads(body)["nodes"]
    assert sorted(node["pid"] for node in nodes) == sorted(worker["pid"] for worker in workers)
    assert len({node["instance"] for node in nodes}) == 2


async def test_a_killed_worker_is_restarted_and_serves(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT):
        async with supervisor(nursery, redis_server, "--port", "0") as gateway:
            port = await gateway.port()
            victim = await gateway.record("worker started", worker=0)
            os.kill(victim["pid"], signal.SIGKILL)

            crash = await gateway.record("worker exited, restarting", pid=victim["pid"])
            assert crash["worker"] == 0
            assert crash["exit_status"] == 128 + signal.SIGKILL
            assert crash["signal"] == "SIGKILL"
            assert crash["restart_in"] == 0.5
            await gateway.record("worker started", lambda r: r["pid"] != victim["pid"], worker=0)
            # The new worker's instance id is in its own log lines; it must answer too.
            started = [
                r
                for r in gateway.records()
                if r["event"] == "gateway started" and r.get("worker") == 0
            ]
            assert len(started) == 2
            new_instance = started[-1]["instance"]
            await instances_serving(port, lambda seen: new_instance in seen)
            await exited(victim["pid"])

            gateway.process.send_signal(signal.SIGTERM)
            assert await gateway.finish() == 0


async def test_sigterm_drains_every_worker_and_exits_0(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT):
        async with supervisor(nursery, redis_server, "--port", "0") as gateway:
            port = await gateway.port()
            async with raw_client(port, KEY) as client:
                await ready(client.ws)
                gateway.process.send_signal(signal.SIGTERM)
                reason = await closed_with(client.ws)
            status = await gateway.finish()
            pids = gateway.worker_pids()
            assert len(pids) == 2
            with trio.move_on_after(0) as late:
                for pid in pids:
                    await exited(pid)
    # The supervisor waits for every worker before it exits: none may still be running.
    assert not late.cancelled_caught
    assert (reason.code, reason.reason) == (1001, "Server shutting down")
    assert status == 0
    stopped = {r["pid"]: r for r in gateway.records() if r["event"] == "worker stopped"}
    assert set(stopped) == pids
    assert all(r["exit_status"] == 0 for r in stopped.values())
    assert "Traceback" not in "\n".join(gateway.lines)


async def test_every_line_of_the_supervisor_and_its_workers_names_an_instance(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT):
        async with supervisor(nursery, redis_server, "--port", "0") as gateway:
            port = await gateway.port()
            await instances_serving(port, lambda seen: len(seen) == 2)
            async with raw_client(port, KEY) as client:
                await ready(client.ws)
            gateway.process.send_signal(signal.SIGTERM)
            assert await gateway.finish() == 0
    # Logged before any gateway or supervisor exists, so by no instance.
    records = [r for r in gateway.records() if r["event"] != "configuration loaded"]
    (supervisor_line,) = [r for r in records if r["event"] == "workers started"]
    worker_instance = {
        r["worker"]: r["instance"] for r in records if r["event"] == "gateway started"
    }
    assert len({supervisor_line["instance"], *worker_instance.values()}) == 3
    for record in records:
        # The supervisor's own lines (some about a worker) come from its module; every other
        # line comes from a worker process, tagged with its index.
        if record["logger"] == "trio_gateway.workers":
            assert record["instance"] == supervisor_line["instance"], record
        else:
            assert record["instance"] == worker_instance[record["worker"]], record
    events = {(r.get("worker"), r["event"]) for r in records}
    # Lines from each kind of task: the supervisor's, each worker's signal watcher, HTTP
    # requests, connections, the broker.
    assert {(None, "workers started"), (None, "shutdown requested, stopping workers")} <= events
    for worker in (0, 1):
        assert {(worker, "shutdown requested, draining"), (worker, "http request")} <= events
        assert (worker, "Redis subscriber connected") in events
    assert {event for _, event in events} >= {"client connected", "client disconnected"}


async def test_second_signal_stops_workers_without_draining(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    # Both timeouts far beyond TIMEOUT: only the second signal can end this drain in time.
    args = ("--port", "0", "--drain-timeout", "60", "--request-timeout", "60")
    with trio.fail_after(TIMEOUT):
        async with supervisor(nursery, redis_server, *args) as gateway:
            port = await gateway.port()
            async with await _hold_a_request_open(port) as stream:
                gateway.process.send_signal(signal.SIGINT)
                await gateway.wait_for(
                    lambda: (
                        len([r for r in gateway.records() if r["event"] == "gateway shutting down"])
                        == 2
                    )
                )
                gateway.process.send_signal(signal.SIGINT)
                # The worker holding it hangs up at once (its own second signal).
                while await stream.receive_some():
                    pass
            status = await gateway.finish()
            for pid in gateway.worker_pids():
                await exited(pid)
    assert status == 128 + signal.SIGINT
    events = [r["event"] for r in gateway.records()]
    assert "second signal, stopping workers without draining" in events
    assert "Traceback" not in "\n".join(gateway.lines)


async def _hold_a_request_open(port: int) -> trio.SocketStream:
    """A connection with half an HTTP request sent: its worker's drain waits for it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        client = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target="/api/health", headers=[("host", "t")])
        first = client.send(request)
        assert first is not None
        await stream.send_all(first + b"GET /api/health HTTP/1.1\r\n")
        # The first answer proves the worker has both; the half request stays pending.
        while not isinstance(event := client.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some())
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def test_workers_drain_and_exit_when_the_supervisor_is_killed(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT):
        async with supervisor(nursery, redis_server, "--port", "0") as gateway:
            await gateway.port()
            gateway.process.kill()
            # stderr ends only when the last process holding it, i.e. every worker, has exited.
            await gateway.wait_for(lambda: gateway.ended)
            pids = gateway.worker_pids()
            assert len(pids) == 2
            for pid in pids:
                await exited(pid)
    orphaned = [r for r in gateway.records() if r["event"] == "supervisor gone, shutting down"]
    assert sorted(r["worker"] for r in orphaned) == [0, 1]


async def test_port_in_use_exits_1_before_starting_workers(redis_server: RedisServer) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        with trio.fail_after(TIMEOUT):
            result = await trio.run_process(
                [*COMMAND, "--workers", "2", "--redis-url", redis_server.url, "--port", str(port)],
                check=False,
                capture_stdout=True,
                capture_stderr=True,
                env=child_env(),
            )
    finally:
        await trio.aclose_forcefully(listeners[0])
    assert result.returncode == 1
    stderr = result.stderr.decode()
    expected = f"trio-gateway: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert stderr.splitlines()[-1] == expected
    assert "worker started" not in stderr


async def test_unreachable_redis_stops_the_supervisor_with_status_1() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    url = f"redis://:hunter2@127.0.0.1:{closed_port}/0"
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [*COMMAND, "--workers", "2", "--redis-url", url, "--port", "0", "--api-key", KEY],
            check=False,
            capture_stdout=True,
            capture_stderr=True,
            env=child_env(),
        )
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert f"trio-gateway: cannot reach Redis at redis://:***@127.0.0.1:{closed_port}/0: " in stderr
    assert "hunter2" not in stderr
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert records[-1]["event"] == "worker failed to start, stopping"
    assert records[-1]["exit_status"] == 1
    assert "listening on" not in stderr


async def test_workers_write_the_log_format_of_the_supervisor(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    with trio.fail_after(TIMEOUT):
        async with supervisor(
            nursery, redis_server, "--port", "0", "--log-format", "console"
        ) as gateway:
            await gateway.port()
            gateway.process.send_signal(signal.SIGTERM)
            status = await gateway.finish()
    assert status == 0
    logged = [line for line in gateway.lines if not line.startswith("trio-gateway")]
    assert logged
    assert not [line for line in logged if line.startswith("{")]
    started = [line for line in logged if " gateway started " in line]
    assert sorted(re.findall(r" worker=(\d)", "\n".join(started))) == ["0", "1"]
