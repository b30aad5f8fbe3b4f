"""Fuzz targets (issue 18): nothing a client sends closes a connection 1011, logs an error,
answers 500, puts Python's exception text on the wire, or leaves a task behind.

One real gateway in memory serves every example (driver.py); hypothesis runs in a worker
thread and hands each example to the gateway's loop. The profile's examples
(tests/conftest.py: 600 under `make test`, 100,000 under `make fuzz`) are shared between the
targets so that, each on its own core, they take about as long.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable

import pytest
import trio
from hypothesis import given, settings

from trio_gateway import Config, Gateway

from ..helpers import API_KEY, all_tasks, serve_in_memory
from .driver import Driver, Outcome, gateway_log_records, text_frame
from .strategies import SECRET, WebSocketCase, http_requests, websocket_inputs

FUZZ_CONFIG = Config(
    host="127.0.0.1",
    port=0,
    api_keys=(API_KEY,),
    jwt_secret=SECRET,
    presence_topics=("room.*",),
    enable_echo=True,
    admin=True,
    close_timeout=1.0,
)

MARKER = '{"type":"ping"}'
#: What the marker gets back while the connection works: a pong, the identify reminder (no
#: token yet), or itself (the echo endpoint).
ALIVE = {
    '{"type":"pong"}',
    '{"type":"error","message":"Not identified: send identify first","code":"unauthorized"}',
    MARKER,
}
#: Close codes PROTOCOL.md documents for something a client did, and 1005: how a client
#: reads our answer to a close frame that carried no code.
DOCUMENTED_CLOSES = {1000, 1002, 1005, 1007, 1008, 1009, 4001}
#: Statuses PROTOCOL.md documents ("HTTP status codes", and 101 for an upgrade).
DOCUMENTED_STATUSES = {101, 200, 202, 304, 400, 401, 404, 405, 408, 413, 426, 431, 501, 503}
# Shares of the profile's examples: a WebSocket example costs about 1.5 times an HTTP one.
WEBSOCKET_SHARE, HTTP_SHARE = 0.4, 0.6
# Python's own words for an exception or a value: never part of an answer.
PYTHON_TEXT = re.compile(rb"Traceback|bytearray\(|object at 0x")


class FuzzGateway:
    def __init__(self, gateway: Gateway, driver: Driver) -> None:
        self.gateway = gateway
        self.driver = driver

    async def websocket(self, target: str, data: bytes) -> tuple[Outcome, int, set[str]]:
        before = all_tasks()
        outcome = await self.driver.websocket(target, data)
        return outcome, self.gateway.client_count(), _names(all_tasks() - before)

    async def http(self, request: bytes) -> tuple[Outcome, int, set[str]]:
        before = all_tasks()
        outcome = await self.driver.http(request)
        return outcome, self.gateway.client_count(), _names(all_tasks() - before)


def _names(tasks: set[trio.lowlevel.Task]) -> set[str]:
    current = trio.lowlevel.current_task()
    return {task.name for task in tasks if task is not current}


@pytest.fixture
async def fuzz_gateway(nursery: trio.Nursery) -> AsyncIterator[FuzzGateway]:
    with gateway_log_records() as records:
        gateway, listener = await serve_in_memory(nursery, FUZZ_CONFIG)
        yield FuzzGateway(gateway, Driver(listener, records))


def judge_common(outcome: Outcome, clients_left: int, new_tasks: set[str]) -> None:
    logged = [(record.levelname, record.getMessage()) for record in outcome.logged]
    assert not logged, logged
    assert clients_left == 0
    assert not new_tasks, new_tasks


def judge_websocket(outcome: Outcome, case: WebSocketCase) -> None:
    assert outcome.accepted, outcome.received[:300]
    echo = case.target.startswith("/api/echo")
    if outcome.close is not None:
        # The gateway's own code, or the client's echoed as RFC 6455 asks.
        assert outcome.close[0] in DOCUMENTED_CLOSES | case.close_codes, outcome.close
    else:
        assert not outcome.gateway_ended_first, "ended without a close frame"
        if case.complete:
            assert ALIVE & set(outcome.texts), outcome.texts[-3:]
    if not echo:
        for text in outcome.texts:
            frame = json.loads(text)
            assert isinstance(frame, dict), text
            assert isinstance(frame.get("type", frame.get("event")), str), text
        assert not PYTHON_TEXT.search("".join(outcome.texts).encode("utf-8", "surrogatepass"))


def judge_http(outcome: Outcome) -> None:
    statuses = {int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", outcome.received)}
    assert statuses <= DOCUMENTED_STATUSES, outcome.received[:300]
    head_end = outcome.received.find(b"\r\n\r\n")
    assert not PYTHON_TEXT.search(outcome.received[: max(head_end, 0) + 2000])


async def test_no_websocket_input_harms_the_gateway(fuzz_gateway: FuzzGateway) -> None:
    examples = 0

    @settings(max_examples=_share(WEBSOCKET_SHARE))
    @given(websocket_inputs())
    def check(case: WebSocketCase) -> None:
        nonlocal examples
        examples += 1
        outcome, clients_left, new_tasks = trio.from_thread.run(
            fuzz_gateway.websocket, case.target, case.data + text_frame(MARKER)
        )
        judge_common(outcome, clients_left, new_tasks)
        judge_websocket(outcome, case)

    await _run("websocket", check, lambda: examples)


async def test_no_http_request_harms_the_gateway(fuzz_gateway: FuzzGateway) -> None:
    examples = 0

    @settings(max_examples=_share(HTTP_SHARE))
    @given(http_requests())
    def check(request: bytes) -> None:
        nonlocal examples
        examples += 1
        outcome, clients_left, new_tasks = trio.from_thread.run(fuzz_gateway.http, request)
        judge_common(outcome, clients_left, new_tasks)
        judge_http(outcome)

    await _run("http", check, lambda: examples)


def _share(fraction: float) -> int:
    return max(1, round(settings().max_examples * fraction))


async def _run(target: str, check: Callable[[], None], examples: Callable[[], int]) -> None:
    """Run the hypothesis test `check` in a thread; say how many examples it ran, how fast
    (shown by `make fuzz`, which runs pytest with -s)."""
    started = trio.current_time()
    await trio.to_thread.run_sync(check)
    elapsed = trio.current_time() - started
    print(
        f"\nfuzz {target}: {examples()} examples in {elapsed:.0f} s ({examples() / elapsed:.0f}/s)"
    )
