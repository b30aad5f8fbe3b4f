"""Commands (seed 002): in-process handlers and the backend proxy, as a client sees them.

Real sockets, and for the proxy a real HTTP backend (tests/backend_server.py) in the same
trio run; what is asserted is what the client reads on the wire.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
import trio
import trio.testing

from trio_gateway import Config, Gateway, serve
from trio_gateway.commands import Caller, CommandError

from .backend_server import Backend, unused_port
from .conftest import with_settings
from .helpers import TIMEOUT, ready, receive_json, request, send_json, tcp_client

# Seed 002's command vocabulary and the event each answers with.
SEED_COMMANDS = {
    "getNamespaces": "namespacesLoaded",
    "getTables": "tablesLoaded",
    "selectTable": "tableSelected",
    "requestData": "dataLoaded",
    "paginate": "dataLoaded",
    "refreshData": "dataLoaded",
    "updateRow": "rowUpdated",
    "insertRow": "rowInserted",
    "deleteRow": "rowDeleted",
}
SECRET = "command-test-secret-0123456789abcdef"


def error_event(command: str, code: str, message: str | None = None) -> dict[str, Any]:
    return {"event": "error", "payload": {"command": command, "message": message, "code": code}}


def without_message(answer: dict[str, Any]) -> dict[str, Any]:
    """`answer` with its error message replaced by None, for comparing codes and shapes."""
    payload = dict(answer["payload"])
    assert isinstance(payload.pop("message"), str)
    return {**answer, "payload": {**payload, "message": None}}


class SeedBackend:
    """Answers seed 002's commands at /commands; `hold` makes one command wait."""

    def __init__(self) -> None:
        self.hold: str | None = None
        self.release = trio.Event()

    async def answer(self, path: str, body: Any) -> tuple[int, Any]:
        if path != "/commands":
            return 404, {"message": "no such path"}
        name = body["command"]
        if name == self.hold:
            await self.release.wait()
        if name == "explode":
            return 500, b"Traceback (most recent call last): secret internals"
        if name == "refuse":
            return 403, {"message": "Not your table"}
        if name == "garbage":
            return 200, b"<html>not json</html>"
        if name not in SEED_COMMANDS:
            return 404, {"message": f"no command {name}"}
        echo = {key: body[key] for key in ("payload", "client_id", "user_id", "session_id")}
        return 200, {"event": SEED_COMMANDS[name], "payload": {"echo": echo}}


@pytest.fixture
async def seed_backend(nursery: trio.Nursery) -> tuple[Backend, SeedBackend]:
    seed = SeedBackend()
    backend: Backend = await nursery.start(Backend(seed.answer).serve)
    return backend, seed


@pytest.fixture
async def proxied(
    nursery: trio.Nursery, config: Config, seed_backend: tuple[Backend, SeedBackend]
) -> Gateway:
    backend, _ = seed_backend
    settings = with_settings(config, command_url=backend.url("/commands"))
    gateway: Gateway = await nursery.start(serve, settings)
    return gateway


async def test_each_seed_command_round_trips_through_the_backend(
    proxied: Gateway, seed_backend: tuple[Backend, SeedBackend]
) -> None:
    backend, _ = seed_backend
    with trio.fail_after(TIMEOUT):
        async with tcp_client(proxied.port) as ws:
            client_id = await ready(ws)
            for number, (name, event) in enumerate(SEED_COMMANDS.items()):
                payload = {"table": "T", "page": number}
                answer = await request(ws, command=name, payload=payload, id=f"c{number}")
                assert answer == {
                    "event": event,
                    "payload": {
                        "echo": {
                            "payload": payload,
                            "client_id": client_id,
                            "user_id": None,
                            "session_id": None,
                        }
                    },
                    "id": f"c{number}",
                }
            # No id, no payload: the answer has no id, the backend gets a null payload.
            answer = await request(ws, command="getNamespaces")
            assert answer["event"] == "namespacesLoaded"
            assert "id" not in answer
    assert backend.requests[-1] == (
        "/commands",
        {
            "command": "getNamespaces",
            "payload": None,
            "client_id": client_id,
            "user_id": None,
            "session_id": None,
            "info": None,
        },
    )


async def test_backend_failures_become_error_events_and_the_connection_stays_open(
    proxied: Gateway,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(proxied.port) as ws:
            await ready(ws)
            assert await request(ws, command="nope", id="1") == {
                **error_event("nope", "unknown_command", "no command nope"),
                "id": "1",
            }
            assert await request(ws, command="refuse") == error_event(
                "refuse", "forbidden", "Not your table"
            )
            # A 500's body is not relayed: it may be a traceback.
            assert await request(ws, command="explode") == error_event(
                "explode", "failed", "The command backend answered 500"
            )
            assert await request(ws, command="garbage") == error_event(
                "garbage", "failed", "The command backend gave no answer"
            )
            assert await request(ws, type="ping") == {"type": "pong"}


async def test_an_unreachable_backend_answers_unavailable(
    nursery: trio.Nursery, config: Config
) -> None:
    port = await unused_port()
    settings = with_settings(config, command_url=f"http://127.0.0.1:{port}/commands")
    gateway: Gateway = await nursery.start(serve, settings)
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            assert without_message(await request(ws, command="getTables")) == error_event(
                "getTables", "unavailable"
            )


@pytest.mark.parametrize(
    ("frame", "command", "has_id"),
    [
        ({"command": 7}, "", False),
        ({"command": ""}, "", False),
        ({"command": None, "id": "n"}, "", True),
        ({"command": "x" * 10_000, "id": "big"}, "x" * 100, True),
        ({"command": "getTables", "id": 12}, "getTables", False),
        ({"command": "getTables", "id": "i" * 129}, "getTables", False),
        ({"command": "getTables", "id": ["a"]}, "getTables", False),
        ({"command": "bad\ud800", "id": "s"}, "", True),
    ],
)
async def test_malformed_command_frames_get_the_error_event(
    proxied: Gateway, frame: dict[str, Any], command: str, has_id: bool
) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(proxied.port) as ws:
            await ready(ws)
            await ws.send_message(json.dumps(frame))
            answer = await receive_json(ws)
            expected = error_event(command, "invalid")
            if has_id:
                expected["id"] = frame["id"]
            assert without_message(answer) == expected
            assert answer["payload"]["message"].startswith("Invalid command: ")
            assert await request(ws, type="ping") == {"type": "pong"}


async def test_a_payload_at_the_size_limit_reaches_the_backend(
    nursery: trio.Nursery, config: Config, seed_backend: tuple[Backend, SeedBackend]
) -> None:
    backend, _ = seed_backend
    limit = 4096
    settings = with_settings(config, command_url=backend.url("/commands"), max_message_size=limit)
    gateway: Gateway = await nursery.start(serve, settings)
    frame = {"command": "updateRow", "payload": ""}
    frame["payload"] = "p" * (limit - len(json.dumps(frame)))
    text = json.dumps(frame)
    assert len(text) == limit
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await ws.send_message(text)
            answer = await receive_json(ws)
            assert answer["event"] == "rowUpdated"
            assert answer["payload"]["echo"]["payload"] == frame["payload"]


async def test_a_slow_command_delays_neither_pings_nor_acks_and_the_ninth_is_refused(
    proxied: Gateway, seed_backend: tuple[Backend, SeedBackend]
) -> None:
    backend, seed = seed_backend
    seed.hold = "requestData"
    with trio.fail_after(TIMEOUT):
        async with tcp_client(proxied.port) as ws:
            await ready(ws)
            for number in range(8):
                await send_json(ws, {"command": "requestData", "id": str(number)})
            await backend.wait_for(lambda backend: len(backend.requests) == 8)
            # All eight are held at the backend; the connection still answers at once.
            assert await request(ws, type="ping") == {"type": "pong"}
            assert await request(ws, type="subscribe", scope="all") == {
                "type": "subscribed",
                "subscription": "all",
            }
            assert await request(ws, command="getTables", id="9") == {
                **error_event(
                    "getTables",
                    "too_many",
                    "Too many commands in flight: at most 8 per connection",
                ),
                "id": "9",
            }
            seed.release.set()
            ids = sorted([(await receive_json(ws))["id"] for _ in range(8)])
            assert ids == [str(number) for number in range(8)]
            # With the calls answered, the connection may call again.
            assert (await request(ws, command="getTables"))["event"] == "tablesLoaded"


async def test_a_disconnect_cancels_the_backend_request(
    proxied: Gateway, seed_backend: tuple[Backend, SeedBackend]
) -> None:
    backend, seed = seed_backend
    seed.hold = "requestData"
    with trio.fail_after(TIMEOUT):
        async with tcp_client(proxied.port) as ws:
            await ready(ws)
            await send_json(ws, {"command": "requestData"})
            await backend.wait_for(lambda backend: bool(backend.requests))
        await backend.wait_for(lambda backend: bool(backend.cancelled))
    assert backend.cancelled == ["/commands"]
    assert proxied.client_count() == 0


async def test_a_command_times_out_after_command_timeout_in_virtual_time(
    io_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    config: Config,
    seed_backend: tuple[Backend, SeedBackend],
) -> None:
    backend, seed = seed_backend
    seed.hold = "requestData"
    settings = with_settings(config, command_url=backend.url("/commands"), command_timeout=3)
    gateway: Gateway = await nursery.start(serve, settings)
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            started = trio.current_time()
            answer = await request(ws, command="requestData", id="slow")
            assert trio.current_time() - started == pytest.approx(3, abs=0.1)
            assert answer == {
                **error_event("requestData", "timeout", "Command timed out after 3 s"),
                "id": "slow",
            }
            # The timed-out call was cancelled at the backend too.
            await backend.wait_for(lambda backend: bool(backend.cancelled))


# --- in-process handlers ----------------------------------------------------------------------


@pytest.fixture
async def embedded(nursery: trio.Nursery, config: Config) -> Gateway:
    gateway: Gateway = await nursery.start(serve, config)
    commands = gateway.commands

    @commands.command("selectTable")
    async def select_table(caller: Caller, payload: Any) -> tuple[str, Any]:
        caller.state["table"] = payload["table"]
        return "tableSelected", {"table": payload["table"]}

    @commands.command("whichTable")
    async def which_table(caller: Caller, payload: Any) -> tuple[str, Any]:
        return "currentTable", {"table": caller.state.get("table"), "client": caller.client_id}

    async def crash(caller: Caller, payload: Any) -> tuple[str, Any]:
        raise RuntimeError("database password is hunter2")

    async def refuse(caller: Caller, payload: Any) -> tuple[str, Any]:
        raise CommandError("That row is locked", "forbidden")

    async def not_json(caller: Caller, payload: Any) -> tuple[str, Any]:
        return "odd", {1, 2}

    async def wrong_shape(caller: Caller, payload: Any) -> Any:
        return {"event": "odd"}

    commands.register("crash", crash)
    commands.register("refuse", refuse)
    commands.register("notJson", not_json)
    commands.register("wrongShape", wrong_shape)
    return gateway


async def test_per_connection_state_lives_as_long_as_the_connection(embedded: Gateway) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(embedded.port) as ws:
            client_id = await ready(ws)
            await request(ws, command="selectTable", payload={"table": "Orders"})
            assert await request(ws, command="whichTable") == {
                "event": "currentTable",
                "payload": {"table": "Orders", "client": client_id},
            }
        async with tcp_client(embedded.port) as ws:
            other = await ready(ws)
            assert await request(ws, command="whichTable") == {
                "event": "currentTable",
                "payload": {"table": None, "client": other},
            }


async def test_handler_exceptions_never_reach_the_client_as_text(
    embedded: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(embedded.port) as ws:
            await ready(ws)
            await send_json(ws, {"command": "crash", "id": "c"})
            crashed = await ws.get_message()
            assert json.loads(crashed) == {
                **error_event("crash", "failed", "Command failed"),
                "id": "c",
            }
            assert "hunter2" not in crashed
            assert "RuntimeError" not in crashed
            assert await request(ws, command="refuse") == error_event(
                "refuse", "forbidden", "That row is locked"
            )
            for name in ("notJson", "wrongShape"):
                assert await request(ws, command=name) == error_event(
                    name, "failed", "Command failed"
                )
            assert without_message(await request(ws, command="nope")) == error_event(
                "nope", "unknown_command"
            )
            assert await request(ws, type="ping") == {"type": "pong"}
    assert "hunter2" in caplog.text


def user_token(**claims: Any) -> str:
    return jwt.encode({"sub": "alice", "exp": time.time() + 600, **claims}, SECRET, "HS256")


@pytest.mark.parametrize(
    ("grant", "allowed"),
    [(None, set()), (["whichTable"], {"whichTable"}), ("*", {"whichTable", "crash"})],
)
async def test_a_jwt_commands_claim_limits_what_its_user_may_call(
    nursery: trio.Nursery, config: Config, grant: Any, allowed: set[str]
) -> None:
    gateway: Gateway = await nursery.start(serve, with_settings(config, jwt_secret=SECRET))

    async def answer(caller: Caller, payload: Any) -> tuple[str, Any]:
        return "done", caller.user_id

    gateway.commands.register("whichTable", answer)
    gateway.commands.register("crash", answer)
    claims = {} if grant is None else {"commands": grant}
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, user_token(**claims)) as ws:
            await ready(ws)
            for name in ("whichTable", "crash"):
                reply = await request(ws, command=name)
                if name in allowed:
                    assert reply == {"event": "done", "payload": "alice"}
                else:
                    assert reply == error_event(
                        name, "forbidden", f"Forbidden: may not call {name}"
                    )


async def test_a_command_frame_never_carries_a_type_and_a_typed_command_is_unknown(
    embedded: Gateway,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_client(embedded.port) as ws:
            await ready(ws)
            assert await request(ws, type="command", command="whichTable") == {
                "type": "error",
                "message": "Unknown message type: command",
            }
