"""JSON log lines as an operator reads them: which events appear at which level, with which
fields, and that every line of a gateway names its instance.

Real gateways and real clients; the lines are captured from the `trio_gateway` logger through
the real formatter and parsed back, exactly as a log pipeline would.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import trio
import trio.testing

from trio_gateway import Config, Gateway, open_gateway, serve
from trio_gateway.commands import Caller, CommandError
from trio_gateway.observability.jsonlog import JsonFormatter

from .backend_server import Backend
from .conftest import with_settings
from .helpers import (
    API_KEY,
    TIMEOUT,
    closed_with,
    memory_client,
    raw_client,
    ready,
    receive_json,
    request,
    send_json,
    serve_in_memory,
    subscribe,
    tcp_client,
    wait_until,
)
from .redis_server import RedisServer

SECRET = "log-test-secret-0123456789abcdef"


class Lines:
    """What the `trio_gateway` logger wrote, one parsed JSON object per line."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._stream.getvalue().splitlines()]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.all() if line["event"] == event]

    def text(self) -> str:
        return self._stream.getvalue()


def capture(level: int) -> Iterator[Lines]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("trio_gateway")
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield Lines(stream)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


@pytest.fixture
def info_lines() -> Iterator[Lines]:
    yield from capture(logging.INFO)


@pytest.fixture
def debug_lines() -> Iterator[Lines]:
    yield from capture(logging.DEBUG)


def without_time(line: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in line.items() if name not in ("time", "instance")}


def token(sub: str = "alice", **claims: Any) -> str:
    claims = {"sub": sub, "exp": time.time() + 3600, **claims}
    return jwt.encode(claims, SECRET, algorithm="HS256")


# --- instance ------------------------------------------------------------------------------


async def test_every_line_of_two_gateways_names_its_own_instance(
    config: Config, info_lines: Lines
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            open_gateway(config) as first,
            open_gateway(config) as second,
            tcp_client(first.port) as a,
            tcp_client(second.port) as b,
        ):
            await ready(a)
            await ready(b)
    lines = info_lines.all()
    connected = {
        line["client_id"]: line["instance"] for line in info_lines.events("client connected")
    }
    assert sorted(connected.values()) == sorted([first.instance, second.instance])
    assert all(line.get("instance") in (first.instance, second.instance) for line in lines)
    started = info_lines.events("gateway started")
    assert [line["broker"] for line in started] == ["memory", "memory"]


async def test_connection_http_and_broker_lines_carry_the_instance(
    config: Config, redis_server: RedisServer, info_lines: Lines
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_gateway(with_settings(config, redis_url=redis_server.url)) as gateway:
            await http_exchange(gateway.port, b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n")
            async with tcp_client(gateway.port) as ws:
                await ready(ws)
            await wait_until(lambda: bool(info_lines.events("client disconnected")))
    seen = {line["event"]: line.get("instance") for line in info_lines.all()}
    for event in (
        "Redis subscriber connected",
        "gateway started",
        "http request",
        "client connected",
        "client disconnected",
        "gateway shutting down",
        "gateway stopped",
    ):
        assert seen[event] == gateway.instance, event


# --- connection lines ----------------------------------------------------------------------


async def test_connection_lines_name_the_remote_address_and_the_origin(
    gateway: Gateway, info_lines: Lines
) -> None:
    with trio.fail_after(TIMEOUT):
        origin = [("Origin", "https://app.example")]
        async with raw_client(gateway.port, extra_headers=origin) as browser:
            browser_id = await ready(browser.ws)
            host, port = browser.stream.socket.getsockname()[:2]
        async with raw_client(gateway.port) as tool:
            tool_id = await ready(tool.ws)
            tool_port = tool.stream.socket.getsockname()[1]
        await wait_until(lambda: len(info_lines.events("client disconnected")) == 2)
    lines = {
        (line["event"], line["client_id"]): line
        for line in info_lines.all()
        if line["event"] in ("client connected", "client disconnected")
    }
    for event in ("client connected", "client disconnected"):
        browser_line = lines[event, browser_id]
        assert (browser_line["remote"], browser_line["origin"]) == (
            f"{host}:{port}",
            "https://app.example",
        )
        # A client that sends no Origin (not a browser) has none in its lines.
        assert lines[event, tool_id]["remote"] == f"127.0.0.1:{tool_port}"
        assert "origin" not in lines[event, tool_id]


async def test_an_unauthorized_websocket_line_names_the_peer_never_the_token(
    gateway: Gateway, info_lines: Lines
) -> None:
    with trio.fail_after(TIMEOUT):
        async with raw_client(gateway.port, token="wrong-secret-token") as client:
            port = client.stream.socket.getsockname()[1]
            with pytest.raises(Exception, match="4001"):
                await receive_json(client.ws)
    (line,) = info_lines.events("unauthorized websocket")
    assert (line["remote"], line["error"]) == (f"127.0.0.1:{port}", "invalid credentials")
    assert "wrong-secret-token" not in info_lines.text()


# Token text no key or JWT can hold: lone surrogates (JSON may carry them), a JWT shape around
# one, and what the query string and a header make of the same bytes.
ODD_TOKENS = ("\ud800", "a.\udc80.b", "\udfff\ud800.x.y")


@pytest.mark.parametrize("source", ["query", "header", "identify"])
async def test_a_token_no_key_can_hold_is_a_4001_and_one_line(
    config: Config, info_lines: Lines, source: str
) -> None:
    # A fuzzer found these closing the connection 1006/1011 with a traceback each.
    odd_config = with_settings(config, jwt_secret=SECRET)
    sent = {
        # Percent-encoded UTF-8 of a lone surrogate, which no UTF-8 decoder accepts.
        "query": ["%ED%A0%80", "a.%ED%A0%80.b"],
        # Raw bytes, as a client may put in a header.
        "header": ["\xed\xa0\x80", "a.\xed\xa0\x80.b"],
        "identify": list(ODD_TOKENS),
    }[source]
    with trio.fail_after(TIMEOUT):
        async with open_gateway(odd_config) as gateway:
            for odd in sent:
                query = odd if source == "query" else None
                headers = []
                if source == "header":
                    headers = [(b"authorization", b"Bearer " + odd.encode("latin-1"))]
                async with tcp_client(gateway.port, query, extra_headers=headers) as ws:
                    if source == "identify":
                        assert (await receive_json(ws))["type"] == "hello"
                        await send_json(ws, {"type": "identify", "token": odd})
                    assert (await closed_with(ws)).code == 4001
    refused = [line for line in info_lines.all() if line["logger"] == "trio_gateway.connection"]
    assert [line["event"] for line in refused] == ["unauthorized websocket"] * len(sent)
    assert not [line for line in info_lines.all() if line["level"] in ("warning", "error")]


async def test_a_refresh_with_a_token_no_key_can_hold_is_an_error_reply(
    config: Config, info_lines: Lines
) -> None:
    refused = {
        "type": "error",
        "message": "Refresh refused: invalid credentials",
        "code": "unauthorized",
    }
    with trio.fail_after(TIMEOUT):
        async with (
            open_gateway(with_settings(config, jwt_secret=SECRET)) as gateway,
            tcp_client(gateway.port) as ws,
        ):
            await ready(ws)
            for odd in ODD_TOKENS:
                assert await request(ws, type="refresh", token=odd) == refused
            assert await request(ws, type="ping") == {"type": "pong"}
    assert not [line for line in info_lines.all() if line["level"] in ("warning", "error")]


# --- HTTP lines ----------------------------------------------------------------------------


async def http_exchange(port: int, data: bytes) -> tuple[int, int]:
    """Send `data` on a fresh connection and read the response head; returns its status and
    the local port the gateway saw the request come from."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        local_port = stream.socket.getsockname()[1]
        await stream.send_all(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = await stream.receive_some()
            assert chunk, f"closed before a response: {received!r}"
            received += chunk
    return int(received.split(b" ", 2)[1]), local_port


async def test_each_http_answer_is_one_line_without_the_query_string(
    gateway: Gateway, info_lines: Lines
) -> None:
    port = gateway.port
    with trio.fail_after(TIMEOUT):
        answered = [
            await http_exchange(port, b"GET /api/health?token=hunter2 HTTP/1.1\r\nHost: t\r\n\r\n"),
            await http_exchange(port, b"POST /api/events HTTP/1.1\r\nHost: t\r\n\r\n"),
            await http_exchange(port, b"NONSENSE\r\n\r\n"),
            # A head still unfinished at 16 KiB (h11 judges only what is incomplete).
            await http_exchange(port, b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000),
            await http_exchange(
                port,
                b"POST /api/publish HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer test-key\r\n"
                b"Content-Length: 9999999\r\n\r\n",
            ),
            await http_exchange(port, b"GET /api/ws?token=hunter2 HTTP/1.1\r\nHost: t\r\n\r\n"),
        ]
    lines = info_lines.events("http request")
    assert [(line["method"], line["path"], line["status"], line["remote"]) for line in lines] == [
        ("GET", "/api/health", 200, f"127.0.0.1:{answered[0][1]}"),
        ("POST", "/api/events", 401, f"127.0.0.1:{answered[1][1]}"),
        (None, None, 400, f"127.0.0.1:{answered[2][1]}"),
        (None, None, 431, f"127.0.0.1:{answered[3][1]}"),
        ("POST", "/api/publish", 413, f"127.0.0.1:{answered[4][1]}"),
        ("GET", "/api/ws", 426, f"127.0.0.1:{answered[5][1]}"),
    ]
    assert [status for status, _ in answered] == [200, 401, 400, 431, 413, 426]
    assert all(isinstance(line["duration_ms"], float) for line in lines if line["method"])
    assert "hunter2" not in info_lines.text()


async def test_requests_that_time_out_are_logged_408_with_their_duration(
    io_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config, info_lines: Lines
) -> None:
    gateway: Gateway = await nursery.start(serve, with_settings(config, request_timeout=2))
    port = gateway.port
    with trio.fail_after(TIMEOUT):
        # A body that stops short, then a head that never ends: request_timeout (2 s) each.
        body = (
            b"POST /api/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer test-key\r\n"
            b"Content-Length: 10\r\n\r\n{}"
        )
        assert (await http_exchange(port, body))[0] == 408
        assert (await http_exchange(port, b"GET /api/health HTTP/1.1\r\n"))[0] == 408
    first, second = info_lines.events("http request")
    assert (first["method"], first["path"], first["status"]) == ("POST", "/api/events", 408)
    assert first["duration_ms"] == pytest.approx(2000, abs=50)
    assert (second["method"], second["status"], second["duration_ms"]) == (None, 408, None)


async def test_a_refused_upgrade_is_one_line_with_the_request_fields(
    gateway: Gateway, info_lines: Lines
) -> None:
    request_head = (
        b"GET /elsewhere?token=hunter2 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    with trio.fail_after(TIMEOUT):
        status, port = await http_exchange(gateway.port, request_head)
    (line,) = info_lines.events("websocket upgrade refused")
    assert status == 404
    assert (line["method"], line["path"], line["status"], line["remote"]) == (
        "GET",
        "/elsewhere",
        404,
        f"127.0.0.1:{port}",
    )
    assert isinstance(line["duration_ms"], float)
    assert "hunter2" not in info_lines.text()


# --- debug level ---------------------------------------------------------------------------


async def test_debug_lines_follow_identify_subscriptions_and_refusals(
    config: Config, debug_lines: Lines
) -> None:
    settings = with_settings(config, jwt_secret=SECRET)
    secret_token = token(sub_topics=["news.*"], pub_topics=[])
    with trio.fail_after(TIMEOUT):
        async with open_gateway(settings) as gateway, tcp_client(gateway.port, None) as ws:
            assert (await receive_json(ws))["type"] == "hello"
            client_id = str((await request(ws, type="identify", token=secret_token))["client_id"])
            await subscribe(ws, topic="news.eu")
            assert (await request(ws, type="subscribe", topic="sport"))["code"] == "forbidden"
            assert (await request(ws, type="publish", topic="news.eu", data={}))["code"] == (
                "forbidden"
            )
            await ws.send_message("{not json")
            assert (await receive_json(ws))["message"] == "Invalid JSON"
            assert (await request(ws, type="unsubscribe", topic="news.eu"))["type"] == (
                "unsubscribed"
            )
            assert (await request(ws, type="unsubscribe"))["type"] == "unsubscribed"
    mine = [
        without_time(line)
        for line in debug_lines.all()
        if line.get("client_id") == client_id and line["level"] == "debug"
    ]
    session = "trio_gateway.session"
    assert mine == [
        {
            "level": "debug",
            "logger": "trio_gateway.connection",
            "event": "identify",
            "client_id": client_id,
            "via": "identify",
            "outcome": "identified",
            "kind": "jwt",
            "user_id": "alice",
        },
        {
            "level": "debug",
            "logger": session,
            "event": "subscribe",
            "client_id": client_id,
            "key": "news.eu",
            "recover": False,
        },
        {
            "level": "debug",
            "logger": session,
            "event": "error reply",
            "client_id": client_id,
            "type": "subscribe",
            "code": "forbidden",
            "error": "Forbidden: may not subscribe to sport",
        },
        {
            "level": "debug",
            "logger": session,
            "event": "error reply",
            "client_id": client_id,
            "type": "publish",
            "code": "forbidden",
            "error": "Forbidden: may not publish on news.eu",
        },
        {
            "level": "debug",
            "logger": session,
            "event": "error reply",
            "client_id": client_id,
            "type": None,
            "code": None,
            "error": "Invalid JSON",
        },
        {
            "level": "debug",
            "logger": session,
            "event": "unsubscribe",
            "client_id": client_id,
            "key": "news.eu",
        },
        {
            "level": "debug",
            "logger": session,
            "event": "unsubscribe",
            "client_id": client_id,
            "key": None,
        },
    ]
    assert secret_token not in debug_lines.text()


async def test_a_refused_identify_is_a_debug_line_without_the_token(
    config: Config, debug_lines: Lines
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_gateway(config) as gateway, tcp_client(gateway.port, None) as ws:
            await receive_json(ws)
            await send_json(ws, {"type": "identify", "token": "not-a-key-at-all"})
            with pytest.raises(Exception, match="4001"):
                await receive_json(ws)
    (line,) = debug_lines.events("identify")
    assert (line["via"], line["outcome"], line["error"]) == (
        "identify",
        "refused",
        "invalid credentials",
    )
    assert "not-a-key-at-all" not in debug_lines.text()


async def test_debug_lines_time_every_command_call_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    config: Config,
    debug_lines: Lines,
) -> None:
    gateway, listener = await serve_in_memory(nursery, config)

    @gateway.commands.command("slow")
    async def slow(caller: Caller, payload: Any) -> tuple[str, Any]:
        await trio.sleep(2.5)
        return "done", {}

    @gateway.commands.command("locked")
    async def locked(caller: Caller, payload: Any) -> tuple[str, Any]:
        raise CommandError("That row is locked", "forbidden")

    async with memory_client(listener) as ws:
        client_id = await ready(ws)
        assert (await request(ws, command="slow", id="1"))["event"] == "done"
        assert (await request(ws, command="locked", id="2"))["payload"]["code"] == "forbidden"
        assert (await request(ws, command="nope"))["payload"]["code"] == "unknown_command"
    calls = [
        (line["client_id"], line["command"], line["id"], line["outcome"], line["duration_ms"])
        for line in debug_lines.events("command")
    ]
    assert calls == [
        (client_id, "slow", "1", "ok", 2500.0),
        (client_id, "locked", "2", "forbidden", 0.0),
        (client_id, "nope", None, "unknown_command", 0.0),
    ]


async def test_no_debug_lines_at_info_level(gateway: Gateway, info_lines: Lines) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, topic="news")
            await request(ws, type="publish", topic="", data={})
    assert info_lines.all()
    assert [line for line in info_lines.all() if line["level"] == "debug"] == []


async def test_a_cancelled_command_is_logged_cancelled(
    nursery: trio.Nursery, config: Config, debug_lines: Lines
) -> None:
    gateway: Gateway = await nursery.start(serve, config)
    entered = trio.Event()

    @gateway.commands.command("forever")
    async def forever(caller: Caller, payload: Any) -> tuple[str, Any]:
        entered.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await send_json(ws, {"command": "forever", "id": "x"})
            await entered.wait()
        await wait_until(lambda: bool(debug_lines.events("command")))
    (line,) = debug_lines.events("command")
    assert (line["command"], line["id"], line["outcome"]) == ("forever", "x", "cancelled")


async def test_identify_lines_name_the_kind_of_credential_at_the_upgrade(
    nursery: trio.Nursery, config: Config, debug_lines: Lines
) -> None:
    async def connect(path: str, body: Any) -> tuple[int, Any]:
        return (200, {"user_id": "bob"}) if body["token"] == "opaque-session" else (401, {})

    backend: Backend = await nursery.start(Backend(connect).serve)
    settings = with_settings(config, jwt_secret=SECRET, connect_url=backend.url("/connect"))
    gateway: Gateway = await nursery.start(serve, settings)
    # kind -> (credential, the user it proves)
    credentials = {
        "api_key": (API_KEY, None),
        "jwt": (token("alice"), "alice"),
        "connect_hook": ("opaque-session", "bob"),
    }
    clients = {}
    with trio.fail_after(TIMEOUT):
        for kind, (credential, _) in credentials.items():
            async with tcp_client(gateway.port, credential) as ws:
                clients[await ready(ws)] = kind
    identified = {
        line["client_id"]: (line["via"], line["outcome"], line["kind"], line["user_id"])
        for line in debug_lines.events("identify")
    }
    assert identified == {
        client_id: (
            "upgrade",
            "identified",
            kind,
            {"api_key": None, "jwt": "alice"}.get(kind, "bob"),
        )
        for client_id, kind in clients.items()
    }
    assert "opaque-session" not in debug_lines.text()
