"""`trio-gateway serve --workers N`: one supervisor process keeping N gateway processes alive.

Owns the process tree: reserving the port, starting each worker, the pipes between supervisor
and worker, restarting crashed workers with backoff, forwarding SIGTERM/SIGINT, and what a
worker does when its supervisor disappears. Must not parse flags, environment or TOML (cli.py
and settings.py do that once, in the supervisor), nor run gateway code in the supervisor:
each worker is the ordinary single-process daemon (`cli.run_daemon`) with `workers=1` and
`reuse_port=True`. Events reach clients on other workers only through the broker
(`redis_url`), which this module knows nothing about.

Theory of operation
-------------------
The supervisor resolves and validates the configuration once. It then binds, without
listening, a SO_REUSEPORT socket on every address the workers will use (picking a concrete
port if the configured one is 0) and holds it until it exits: all workers then share one port,
and no other program can take that port while a worker restarts. A bound socket that is not
listening never receives connections, so holding it costs nothing else.

Each worker is `python -m trio_gateway _worker INDEX`, in a process group of its own, with
two pipes:

- stdin carries the worker's configuration as one JSON line (every `Config` field, plus the
  log level). Workers therefore run exactly what the supervisor validated and logged,
  restarts included, without re-reading a config file that may have changed since; and API
  keys and the Redis password never appear in argv (visible to every user through `ps`) or in
  the worker's environment. The pipe then stays open as a lifeline: the worker reads
  end-of-file only when the supervisor has exited, however it died (SIGKILL included), and
  then shuts down gracefully. This replaces `PR_SET_PDEATHSIG`, which fires when the *thread*
  that forked the child exits: Trio forks from a thread of its thread cache, and those exit
  after 10 s idle, which would stop every worker 10 s after it started.
- stdout carries one JSON line back, `{"addresses": [[host, port], ...]}`, once the worker is
  listening. The supervisor announces the gateway only when every worker has sent it.

Workers inherit the supervisor's stderr, so their JSON log lines (tagged `"worker": INDEX`)
go where the supervisor's go. The separate process group matters because a terminal sends
Ctrl-C to its whole foreground group: the workers would get SIGINT and then the forwarded
SIGTERM, a second signal, and skip the drain.

Restart policy: a worker that exits while the supervisor is not stopping, for whatever
reason, is started again after a backoff that doubles from `INITIAL_BACKOFF` to
`MAX_BACKOFF`, reset once a worker has run `HEALTHY_RUN` seconds. A worker that fails before
it is ready during the first start stops the whole supervisor instead, with that worker's
exit status: a port in use or an unreachable broker will not get better by retrying.

Signals: the first SIGTERM or SIGINT cancels the worker tasks; each task sends its worker
SIGTERM (the worker drains gracefully) and waits, in its `finally`, for it to exit; then the
supervisor exits 0. A second signal forwards SIGTERM again, which makes every worker stop at
once exactly as a second signal stops the single-process daemon (clients still get 1001
within `close_timeout`), SIGKILLs whatever is still running `KILL_GRACE` seconds after
`close_timeout`, and the supervisor exits 128 + the signal. A third signal SIGKILLs at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import trio

from ..common.backoff import backoff_delays
from ..common.groups import first_leaf
from ..observability.jsonlog import fields, instance_field
from ..transport.sockets import reuse_port_socket
from .config import Config, LogSettings
from .ids import new_client_id
from .server import Gateway
from .settings import ENV_PREFIX
from .signals import SHUTDOWN_SIGNALS

log = logging.getLogger("trio_gateway.workers")

#: The hidden `trio-gateway` subcommand that runs one worker.
WORKER_COMMAND = "_worker"
# Seconds before the first restart of a crashed worker; doubles on each crash in a row.
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# Seconds a worker must have run for its next crash to count as a first one again.
HEALTHY_RUN = 60.0
# Seconds beyond a worker's own bounds (drain_timeout + close_timeout after the first
# signal, close_timeout after the second) before a worker that has not exited is SIGKILLed.
KILL_GRACE = 5.0
# Attempts at finding one free port on every address `host` resolves to.
RESERVE_ATTEMPTS = 10
# Bytes: more than any readiness report can be, so a longer one means a broken worker.
MAX_REPORT = 64 * 1024

Address = tuple[str, int]


class PortUnavailable(Exception):
    """The supervisor could not bind the port; the message is the OS's reason."""


class WorkerFailedToStart(Exception):
    """A worker exited before it was ready, during the supervisor's first start."""

    def __init__(self, index: int, exit_status: int) -> None:
        super().__init__(f"worker {index} exited with status {exit_status} before it was ready")
        self.index = index
        self.exit_status = exit_status


def _restart_delays() -> Iterator[float]:
    return backoff_delays(initial=INITIAL_BACKOFF, maximum=MAX_BACKOFF, jitter=0)


# --- the supervisor -------------------------------------------------------------------------


async def reserve_port(host: str, port: int) -> tuple[list[trio.socket.SocketType], int]:
    """Bound, non-listening SO_REUSEPORT sockets on every address of `host`, and their port.

    With `port` 0, one free port is chosen that is free on every address.

    Raises:
        PortUnavailable: the port is in use by a process without SO_REUSEPORT (or another
            user), or the host cannot be resolved or bound.
    """
    try:
        infos = await trio.socket.getaddrinfo(
            host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
        )
    except OSError as exc:
        raise PortUnavailable(exc.strerror or str(exc)) from exc
    attempts = RESERVE_ATTEMPTS if port == 0 else 1
    for attempt in range(attempts):
        sockets: list[trio.socket.SocketType] = []
        chosen = port
        try:
            for family, type_, proto, _, address in infos:
                # The same options as the workers' listeners, or they could not join.
                sock = reuse_port_socket(family, type_, proto)
                sockets.append(sock)
                await sock.bind((address[0], chosen, *address[2:]))
                chosen = sock.getsockname()[1]
        except OSError as exc:
            for sock in sockets:
                sock.close()
            # With port 0, the port picked on the first address may be taken on another.
            if attempt + 1 == attempts:
                raise PortUnavailable(exc.strerror or str(exc)) from exc
            continue
        return sockets, chosen
    raise AssertionError("unreachable")


def encode_spec(config: Config, logs: LogSettings) -> bytes:
    """The line a worker reads on stdin: every Config init argument, and the log settings."""
    values = {field.alias: getattr(config, field.name) for field in attrs.fields(Config)}
    # No default=: a field JSON cannot carry must fail here, loudly, not reach workers as str.
    return json.dumps({"config": values, "logs": attrs.asdict(logs)}).encode() + b"\n"


def decode_spec(line: bytes) -> tuple[Config, LogSettings]:
    """The inverse of `encode_spec`."""
    data = json.loads(line)
    # JSON has no tuples; Config's collections are tuples (it is frozen and hashable).
    values: dict[str, Any] = {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in data["config"].items()
    }
    return Config(**values), LogSettings(**data["logs"])


def worker_env(env: Mapping[str, str]) -> dict[str, str]:
    """The supervisor's environment minus the settings: workers get theirs on stdin."""
    return {name: value for name, value in env.items() if not name.startswith(ENV_PREFIX)}


def describe_exit(returncode: int) -> dict[str, Any]:
    """Log fields for an exit: `exit_status` as a shell shows it, and the signal if any."""
    if returncode < 0:
        return {"exit_status": 128 - returncode, "signal": signal.Signals(-returncode).name}
    return {"exit_status": returncode}


async def _read_report(stream: trio.abc.ReceiveStream) -> list[Address] | None:
    """The worker's readiness line, or None if it closed stdout (exited) before sending it."""
    data = b""
    while b"\n" not in data:
        if len(data) > MAX_REPORT:
            raise ValueError("worker readiness report too long")
        chunk = await stream.receive_some()
        if not chunk:
            return None
        data += chunk
    report = json.loads(data.partition(b"\n")[0])
    return [(str(host), int(port)) for host, port in report["addresses"]]


@attrs.frozen
class _Exit:
    pid: int
    returncode: int
    #: Whether the worker reported ready before it exited.
    ready: bool


@attrs.define(eq=False)
class _Supervisor:
    #: The encoded worker configuration; it holds the API keys, so it is never logged.
    spec: bytes
    count: int
    #: What each worker runs (workers=1, reuse_port, the concrete port): for its timeouts.
    config: Config
    env: dict[str, str]
    #: Worker index -> its process, from spawn until it has exited.
    live: dict[int, trio.Process] = attrs.field(factory=dict)
    stopping: bool = False
    forced_signal: int | None = None

    @property
    def _stop_timeout(self) -> float:
        return self.config.drain_timeout + self.config.close_timeout + KILL_GRACE

    def _command(self, index: int) -> list[str]:
        return [sys.executable, "-m", "trio_gateway", WORKER_COMMAND, str(index)]

    async def run(
        self,
        signals: AsyncIterator[int],
        announce: Callable[[Sequence[Address]], None],
    ) -> int:
        async with trio.open_nursery() as supervisor_nursery:
            workers_scope = trio.CancelScope()
            supervisor_nursery.start_soon(
                self._watch_signals, signals, workers_scope, supervisor_nursery
            )
            try:
                with workers_scope:
                    async with trio.open_nursery() as slots:
                        addresses = await self._boot(slots)
                        log.info(
                            "workers started",
                            extra=fields(
                                workers=self.count,
                                pids=[process.pid for process in self.live.values()],
                                addresses=[f"{host}:{port}" for host, port in addresses],
                            ),
                        )
                        announce(addresses)
            finally:
                # The watcher's work is done once no worker is left.
                supervisor_nursery.cancel_scope.cancel()
        log.info("workers stopped")
        return 0 if self.forced_signal is None else 128 + self.forced_signal

    async def _boot(self, slots: trio.Nursery) -> list[Address]:
        """Start every worker at once; returns when all are ready."""
        reported: dict[int, list[Address]] = {}

        async def boot_one(index: int) -> None:
            reported[index] = await slots.start(self._run_slot, index)

        async with trio.open_nursery() as boot_nursery:
            for index in range(self.count):
                boot_nursery.start_soon(boot_one, index)
        return reported[0]

    async def _run_slot(self, index: int, *, task_status: trio.TaskStatus[list[Address]]) -> None:
        """Keep worker `index` running until cancelled.

        Raises:
            WorkerFailedToStart: its first process exited before it was ready.
        """
        booted = False
        delays = _restart_delays()
        delay = next(delays)
        while True:
            started_at = trio.current_time()
            try:
                ended = await self._run_worker(
                    index, trio.TASK_STATUS_IGNORED if booted else task_status
                )
            except OSError as exc:
                # fork/exec failed (out of processes or memory): worth retrying once running.
                if not booted:
                    raise
                log.error("cannot start worker", extra=fields(worker=index, error=str(exc)))
            else:
                if not booted and not ended.ready:
                    raise WorkerFailedToStart(index, describe_exit(ended.returncode)["exit_status"])
                booted = True
                if trio.current_time() - started_at >= HEALTHY_RUN:
                    delays = _restart_delays()
                    delay = next(delays)
                log.warning(
                    "worker exited, restarting",
                    extra=fields(
                        worker=index,
                        pid=ended.pid,
                        **describe_exit(ended.returncode),
                        ran_for=round(trio.current_time() - started_at, 3),
                        restart_in=delay,
                    ),
                )
            await trio.sleep(delay)
            delay = next(delays)

    async def _run_worker(self, index: int, task_status: trio.TaskStatus[list[Address]]) -> _Exit:
        """Run one worker process until it exits, or until cancelled (then stop it)."""
        process = await trio.lowlevel.open_process(
            self._command(index),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
            process_group=0,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        self.live[index] = process
        ready = False
        try:
            try:
                await process.stdin.send_all(self.spec)
                addresses = await _read_report(process.stdout)
            except trio.BrokenResourceError:
                addresses = None  # it exited before reading its configuration
            if addresses is not None:
                ready = True
                log.info("worker started", extra=fields(worker=index, pid=process.pid))
                task_status.started(addresses)
            await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(index, process)
                # Closing stdin only after exit: it is the worker's lifeline.
                await process.stdin.aclose()
                await process.stdout.aclose()
                del self.live[index]
        assert process.returncode is not None
        return _Exit(process.pid, process.returncode, ready)

    async def _stop(self, index: int, process: trio.Process) -> None:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(self._stop_timeout):
                await process.wait()
            if process.returncode is None:
                log.error(
                    "worker did not stop in time, killing",
                    extra=fields(worker=index, pid=process.pid),
                )
                process.kill()
                await process.wait()
            assert process.returncode is not None
            log.info(
                "worker stopped",
                extra=fields(worker=index, pid=process.pid, **describe_exit(process.returncode)),
            )

    async def _watch_signals(
        self,
        signals: AsyncIterator[int],
        workers_scope: trio.CancelScope,
        supervisor_nursery: trio.Nursery,
    ) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not self.stopping:
                self.stopping = True
                log.info(
                    "shutdown requested, stopping workers",
                    extra=fields(signal=name, drain_timeout=self.config.drain_timeout),
                )
                workers_scope.cancel()
            elif self.forced_signal is None:
                self.forced_signal = signum
                log.warning(
                    "second signal, stopping workers without draining", extra=fields(signal=name)
                )
                self._signal_all(signal.SIGTERM)
                supervisor_nursery.start_soon(self._kill_after, self.config.close_timeout)
            else:
                log.warning("third signal, killing workers", extra=fields(signal=name))
                self._signal_all(signal.SIGKILL)

    async def _kill_after(self, seconds: float) -> None:
        await trio.sleep(seconds + KILL_GRACE)
        if self.live:
            log.error("workers did not stop in time, killing", extra=fields(pids=self._pids()))
        self._signal_all(signal.SIGKILL)

    def _signal_all(self, signum: int) -> None:
        for process in self.live.values():
            process.send_signal(signum)

    def _pids(self) -> list[int]:
        return [process.pid for process in self.live.values()]


async def supervise(
    config: Config,
    logs: LogSettings,
    env: Mapping[str, str],
    announce: Callable[[Sequence[Address]], None],
) -> int:
    """Run `config.workers` gateway processes on one port until a signal stops them.

    Args:
        config: the validated configuration, with API keys (generated ones included).
        logs: passed on to the workers (with the format decided, so all write the same).
        env: the supervisor's environment; workers get it without the `TRIO_GATEWAY_*`
            variables.
        announce: called once with the listening addresses when every worker is ready.

    Returns:
        The exit status: 0 after a graceful stop, 128 + N after a second signal N, or the exit
        status of a worker that failed during the first start.

    Raises:
        PortUnavailable: the port could not be bound.
    """
    # The supervisor's own lines carry an instance id of their own, as each worker's do.
    instance_field.set(new_client_id())
    # Opened first, so that a signal during start-up waits for the watcher.
    with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        reserved, port = await reserve_port(config.host, config.port)
        try:
            worker_config = attrs.evolve(config, port=port, workers=1, reuse_port=True)
            supervisor = _Supervisor(
                spec=encode_spec(worker_config, logs),
                count=config.workers,
                config=worker_config,
                env=worker_env(env),
            )
            failed: WorkerFailedToStart | None = None
            try:
                status = await supervisor.run(signals, announce)
            except* WorkerFailedToStart as group:
                failed = first_leaf(group)
            if failed is None:
                return status
            log.error(
                "worker failed to start, stopping",
                extra=fields(worker=failed.index, exit_status=failed.exit_status),
            )
            # 0 would claim success; a worker killed by a signal has a status > 128.
            return failed.exit_status or 1
        finally:
            for sock in reserved:
                sock.close()


# --- inside a worker ------------------------------------------------------------------------


def read_spec(fd: int = 0) -> tuple[Config, LogSettings]:
    """Read the configuration line the supervisor wrote on stdin (blocking; before trio.run).

    Raises:
        EOFError: stdin ended first (the supervisor is gone).
    """
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            raise EOFError("stdin ended before the worker configuration")
        data += chunk
    return decode_spec(data)


def report_ready(gateway: Gateway) -> None:
    """Tell the supervisor (on stdout) that this worker is listening, and where."""
    line = json.dumps({"addresses": gateway.addresses}).encode() + b"\n"
    # One write of far less than PIPE_BUF into an empty pipe: whole, and never blocks.
    os.write(1, line)


class _WorkerTag(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        own = getattr(record, "fields", None)
        # A new dict: the record's own may be shared with other handlers.
        record.fields = {"worker": self.index, **(own if isinstance(own, dict) else {})}
        return True


def tag_logs(index: int) -> None:
    """Add `"worker": index` to every log line of this process (after `jsonlog.configure`)."""
    for handler in logging.getLogger("trio_gateway").handlers:
        handler.addFilter(_WorkerTag(index))


async def shutdown_when_orphaned(gateway: Gateway) -> None:
    """Drain the gateway gracefully once the supervisor has exited (stdin reaches EOF)."""
    async with trio.lowlevel.FdStream(os.dup(0)) as lifeline:
        while await lifeline.receive_some():
            pass  # the supervisor never writes after the configuration line
    log.warning("supervisor gone, shutting down")
    gateway.shutdown()
