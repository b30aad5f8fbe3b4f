"""The HTTP API on the WebSocket port, end to end over real sockets with an h11 client."""

from __future__ import annotations

import json
from typing import Any

import h11
import pytest
import trio

from trio_gateway import Config, Gateway

from .conftest import with_settings
from .helpers import API_KEY, TIMEOUT, ready, receive_json, subscribe, tcp_client

# The headers of a publisher with a valid API key.
AUTH = [("authorization", f"Bearer {API_KEY}")]


class HttpConnection:
    """One keep-alive HTTP/1.1 connection driven by h11 (the client side)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        with trio.fail_after(TIMEOUT):
            return await self._request(method, path, body, headers)

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | str | None,
        headers: list[tuple[str, str]] | None,
    ) -> tuple[int, dict[str, str], Any]:
        if isinstance(body, str):
            body = body.encode()
        all_headers = [("host", "gateway.test"), *(headers or [])]
        if body is not None:
            all_headers.append(("content-length", str(len(body))))
        await self.stream.send_all(
            self.conn.send(h11.Request(method=method, target=path, headers=all_headers))
        )
        if body:
            await self.stream.send_all(self.conn.send(h11.Data(data=body)))
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))
        return await self.response()

    async def response(self) -> tuple[int, dict[str, str], Any]:
        status = 0
        response_headers: dict[str, str] = {}
        payload = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                payload += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(event)
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return status, response_headers, json.loads(payload) if payload else None

    async def closed_by_server(self) -> bool:
        with trio.fail_after(TIMEOUT):
            return await self.stream.receive_some(1024) == b""


async def connect(gateway: Gateway) -> HttpConnection:
    return HttpConnection(await trio.open_tcp_stream("127.0.0.1", gateway.port))


async def request(gateway: Gateway, method: str, path: str, **kwargs: Any) -> Any:
    http = await connect(gateway)
    async with http.stream:
        return await http.request(method, path, **kwargs)


async def raw_exchange(gateway: Gateway, data: bytes) -> bytes:
    """Send raw bytes, return everything the server sends until it closes."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", gateway.port)
        async with stream:
            await stream.send_all(data)
            received = bytearray()
            while chunk := await stream.receive_some(65536):
                received += chunk
            return bytes(received)


# --- health ------------------------------------------------------------------------------


async def test_health_reports_clients_uptime_version_and_broker(gateway: Gateway) -> None:
    status, headers, body = await request(gateway, "GET", "/api/health")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert body["status"] == "ok"
    assert body["ws_clients"] == 0
    assert body["uptime"] >= 0
    assert body["version"] == "0.1.0"
    assert body["broker"] == {"kind": "memory", "ok": True}
    async with tcp_client(gateway.port) as ws:
        await ready(ws)
        _, _, body = await request(gateway, "GET", "/api/health")
        assert body["ws_clients"] == 1


# --- publishing --------------------------------------------------------------------------


async def test_post_one_event_reaches_subscriber(gateway: Gateway) -> None:
    async with tcp_client(gateway.port) as ws:
        await ready(ws)
        await subscribe(ws, workspace_id="W")
        event = {"workspace_id": "W", "session_id": None, "kind": "x", "nested": {"a": [1, 2]}}
        status, _, body = await request(
            gateway, "POST", "/api/events", body=json.dumps(event), headers=AUTH
        )
        assert (status, body) == (202, {"accepted": 1})
        assert await receive_json(ws) == {"type": "event", "event": event}


async def test_post_batch_is_published_in_order(gateway: Gateway) -> None:
    async with tcp_client(gateway.port) as ws:
        await ready(ws)
        await subscribe(ws, scope="all")
        events = [{"workspace_id": f"W{i}", "n": i} for i in range(20)]
        status, _, body = await request(
            gateway, "POST", "/api/events", body=json.dumps(events), headers=AUTH
        )
        assert (status, body) == (202, {"accepted": 20})
        for event in events:
            assert await receive_json(ws) == {"type": "event", "event": event}


async def test_batch_with_one_invalid_event_publishes_nothing(gateway: Gateway) -> None:
    async with tcp_client(gateway.port) as ws:
        await ready(ws)
        await subscribe(ws, scope="all")
        events = [{"workspace_id": "W"}, {"workspace_id": "W"}, {"workspace_id": ""}]
        status, _, body = await request(
            gateway, "POST", "/api/events", body=json.dumps(events), headers=AUTH
        )
        assert status == 400
        assert body["index"] == 2
        assert "workspace_id" in body["error"]
        # Nothing from the rejected batch arrives: the next message is the marker.
        gateway.broadcaster.broadcast_event({"workspace_id": "marker"})
        assert (await receive_json(ws))["event"] == {"workspace_id": "marker"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{nope", "Invalid JSON"),
        ("", "Request body must be JSON"),
        ("NaN", "Invalid JSON"),
        ('{"workspace_id": NaN}', "Invalid JSON"),
        ("42", "event must be a JSON object"),
        ('"text"', "event must be a JSON object"),
        ("{}", "workspace_id must be a non-empty string"),
        ('{"workspace_id": 7}', "workspace_id must be a non-empty string"),
        ('{"workspace_id": "W", "session_id": 3}', "session_id must be a string or null"),
        (b"\xff\xfe\x00garbage", "Invalid JSON"),
    ],
)
async def test_invalid_event_bodies_get_400_with_reason(
    gateway: Gateway, body: str | bytes, reason: str
) -> None:
    status, _, payload = await request(gateway, "POST", "/api/events", body=body, headers=AUTH)
    assert status == 400
    assert reason in payload["error"]


async def test_session_update_endpoint(gateway: Gateway) -> None:
    async with tcp_client(gateway.port) as ws:
        await ready(ws)
        await subscribe(ws, session_id="S")
        update = {
            "session_id": "S",
            "workspace_id": "W",
            "lifecycle": "ended",
            "summary": "done",
            "stats": {"total_messages": 3},
        }
        status, _, body = await request(
            gateway, "POST", "/api/session-updates", body=json.dumps(update), headers=AUTH
        )
        assert (status, body) == (202, {"accepted": 1})
        assert await receive_json(ws) == {
            "type": "session.update",
            "session_id": "S",
            "lifecycle": "ended",
            "summary": "done",
            "stats": {"total_messages": 3},
        }


async def test_remote_update_endpoint(gateway: Gateway) -> None:
    async with tcp_client(gateway.port) as ws:
        await ready(ws)
        await subscribe(ws, workspace_id="W")
        update = {"remote_env_id": "R", "workspace_id": "W", "status": "ready"}
        status, _, _ = await request(
            gateway, "POST", "/api/remote-updates", body=json.dumps(update), headers=AUTH
        )
        assert status == 202
        assert await receive_json(ws) == {
            "type": "remote.update",
            "remote_env_id": "R",
            "status": "ready",
        }


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/api/session-updates", {"workspace_id": "W", "lifecycle": "x"}, "session_id is required"),
        (
            "/api/session-updates",
            {"session_id": "S", "workspace_id": "W", "lifecycle": 1},
            "lifecycle",
        ),
        (
            "/api/session-updates",
            {"session_id": "S", "workspace_id": "W", "lifecycle": "x", "stats": []},
            "stats",
        ),
        ("/api/session-updates", [], "Body must be a JSON object"),
        ("/api/remote-updates", {"remote_env_id": "R", "workspace_id": "W"}, "status is required"),
        (
            "/api/remote-updates",
            {"remote_env_id": "R", "workspace_id": "W", "status": "s", "public_ip": 5},
            "public_ip",
        ),
    ],
)
async def test_invalid_update_bodies_get_400(
    gateway: Gateway, path: str, body: object, reason: str
) -> None:
    status, _, payload = await request(gateway, "POST", path, body=json.dumps(body), headers=AUTH)
    assert status == 400
    assert reason in payload["error"]


# --- auth --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("authorization", "Bearer wrong")],
        [("authorization", f"Basic {API_KEY}")],
        [("authorization", "Bearer")],
    ],
)
async def test_publish_without_valid_key_is_401(
    gateway: Gateway, headers: list[tuple[str, str]]
) -> None:
    status, response_headers, body = await request(
        gateway, "POST", "/api/events", body='{"workspace_id":"W"}', headers=headers
    )
    assert status == 401
    assert response_headers["www-authenticate"].startswith("Bearer")
    assert "API key" in body["error"]


async def test_query_token_is_not_accepted_for_http(gateway: Gateway) -> None:
    status, _, _ = await request(
        gateway, "POST", f"/api/events?token={API_KEY}", body='{"workspace_id":"W"}'
    )
    assert status == 401


@pytest.mark.parametrize("first", [b"Basic " + API_KEY.encode(), b"Bearer"])
async def test_upgrade_takes_the_first_bearer_among_authorization_headers(
    gateway: Gateway, first: bytes
) -> None:
    headers = [(b"authorization", first), (b"authorization", b"Bearer " + API_KEY.encode())]
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port, token=None, extra_headers=headers) as ws:
            await ready(ws)


async def test_api_key_comes_from_the_first_authorization_header_only(gateway: Gateway) -> None:
    headers = [("authorization", f"Basic {API_KEY}"), *AUTH]
    status, response_headers, body = await request(
        gateway, "POST", "/api/events", body="{}", headers=headers
    )
    assert (status, body) == (401, {"error": "Missing API key"})
    assert response_headers["www-authenticate"] == 'Bearer realm="trio-gateway"'


# --- routing errors ----------------------------------------------------------------------


async def test_unknown_path_is_404(gateway: Gateway) -> None:
    status, _, body = await request(gateway, "GET", "/nope")
    assert (status, body) == (404, {"error": "Not found"})


async def test_wrong_method_is_405_with_allow(gateway: Gateway) -> None:
    status, headers, _ = await request(gateway, "DELETE", "/api/events")
    assert status == 405
    assert headers["allow"] == "POST"
    status, headers, _ = await request(gateway, "POST", "/api/health", body="{}")
    assert (status, headers["allow"]) == (405, "GET, HEAD")


async def test_head_is_get_without_a_body_and_keeps_the_connection(gateway: Gateway) -> None:
    http = await connect(gateway)
    async with http.stream:
        for _ in range(2):
            status, headers, body = await http.request("HEAD", "/api/health")
            assert (status, body) == (200, None)
            assert int(headers["content-length"]) > 0
        status, headers, body = await http.request("HEAD", "/api/events")
        assert (status, headers["allow"], body) == (405, "POST", None)
        status, _, body = await http.request("GET", "/api/health")
        assert (status, body["status"]) == (200, "ok")


async def test_plain_get_on_websocket_path_is_426(gateway: Gateway) -> None:
    status, headers, _ = await request(gateway, "GET", "/api/ws")
    assert status == 426
    assert headers["upgrade"] == "websocket"


async def test_upgrade_on_wrong_path_is_404(gateway: Gateway) -> None:
    head = (
        b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    response = await raw_exchange(gateway, head)
    assert response.startswith(b"HTTP/1.1 404 ")


async def test_upgrade_without_a_version_is_426(gateway: Gateway) -> None:
    head = b"GET /api/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    response = await raw_exchange(gateway, head)
    assert response.startswith(b"HTTP/1.1 426 ")
    assert b"sec-websocket-version: 13" in response


# --- limits and garbage --------------------------------------------------------------------


@pytest.fixture
def config(config: Config) -> Config:
    return with_settings(config, max_body_size=1000, request_timeout=0.5)


async def test_declared_oversize_body_is_413_and_closed(gateway: Gateway) -> None:
    http = await connect(gateway)
    async with http.stream:
        status, headers, body = await http.request(
            "POST", "/api/events", body="x" * 1001, headers=AUTH
        )
        assert status == 413
        assert headers["connection"] == "close"
        assert "1000" in body["error"]
        assert await http.closed_by_server()


async def test_chunked_oversize_body_is_413(gateway: Gateway) -> None:
    head = (
        b"POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (600, b"x" * 600)
    response = await raw_exchange(gateway, head + chunk + chunk + b"0\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 413 ")


async def test_body_at_the_limit_is_read(gateway: Gateway) -> None:
    event = {"workspace_id": "W", "pad": ""}
    event["pad"] = "x" * (1000 - len(json.dumps(event)))
    body = json.dumps(event)
    assert len(body) == 1000
    status, _, _ = await request(gateway, "POST", "/api/events", body=body, headers=AUTH)
    assert status == 202


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS ClientHello
        b"HELLO\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ],
)
async def test_http_garbage_gets_400_and_close(gateway: Gateway, garbage: bytes) -> None:
    response = await raw_exchange(gateway, garbage)
    assert response.startswith(b"HTTP/1.1 4"), response
    assert b'"error"' in response


async def test_oversize_head_gets_431(gateway: Gateway) -> None:
    head = b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    response = await raw_exchange(gateway, head)
    assert response.startswith(b"HTTP/1.1 431 ")


async def test_stalled_request_gets_408(gateway: Gateway) -> None:
    response = await raw_exchange(gateway, b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
    assert response.startswith(b"HTTP/1.1 408 ")


async def test_stalled_body_gets_408(gateway: Gateway) -> None:
    head = (
        b"POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    response = await raw_exchange(gateway, head)
    assert response.startswith(b"HTTP/1.1 408 ")


async def test_idle_keepalive_connection_is_closed_silently(gateway: Gateway) -> None:
    assert await raw_exchange(gateway, b"") == b""


# --- keep-alive and shutdown -------------------------------------------------------------


async def test_many_requests_on_one_connection(gateway: Gateway) -> None:
    http = await connect(gateway)
    async with http.stream:
        for i in range(50):
            status, _, _ = await http.request(
                "POST", "/api/events", body=json.dumps({"workspace_id": f"W{i}"}), headers=AUTH
            )
            assert status == 202
        status, _, body = await http.request("GET", "/api/health")
        assert (status, body["status"]) == (200, "ok")
        status, _, _ = await http.request("GET", "/nope")
        assert status == 404
        status, _, _ = await http.request("GET", "/api/health")
        assert status == 200


async def test_pipelined_requests_are_answered_in_order(gateway: Gateway) -> None:
    one = b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    response = await raw_exchange(gateway, one * 3 + last)
    assert response.count(b"HTTP/1.1 200 ") == 3
    assert response.rindex(b"HTTP/1.1 404 ") > response.rindex(b"HTTP/1.1 200 ")


async def test_websocket_upgrade_after_http_request_on_same_connection(gateway: Gateway) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", gateway.port)
    async with stream:
        await stream.send_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        await stream.send_all(
            b"GET /api/ws?token=test-key HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        received = bytearray()
        while b"ready" not in received:
            received += await stream.receive_some(65536)
        assert received.startswith(b"HTTP/1.1 200 ")
        assert b"HTTP/1.1 101 " in received


async def test_shutdown_closes_idle_keepalive_connections(
    nursery: trio.Nursery, config: Config
) -> None:
    from trio_gateway import serve

    gateway: Gateway = await nursery.start(serve, with_settings(config, request_timeout=30))
    http = await connect(gateway)
    async with http.stream:
        status, _, _ = await http.request("GET", "/api/health")
        assert status == 200
        gateway.shutdown()
        assert await http.closed_by_server()
