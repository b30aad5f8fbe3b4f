"""A minimal HTTP/1.1 client for the gateway's API (h11 over a Trio stream): publish, health.

Owns request/response framing and mapping statuses to the client errors. Must not use the
server's runtime; shares only the error classes with client.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import h11
import trio

from .._version import __version__
from .errors import ClientError, ConnectFailed, Unauthorized
from .urls import split_url

__all__ = ["ApiError", "health", "http_request", "publish_events"]

# Bytes read from the socket per receive call.
RECEIVE_SIZE = 64 * 1024
USER_AGENT = f"trio-gateway-client/{__version__}"


class ApiError(ClientError):
    """An HTTP API call got a non-2xx status other than 401.

    `body` is the decoded JSON response (normally `{"error": "..."}`), or None if it was not
    JSON.
    """

    def __init__(self, status: int, message: str, body: object) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


async def http_request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One HTTP/1.1 request on a fresh connection (h11 over a Trio TCP or TLS stream).

    It has no timeout of its own, as is the Trio way: bound the call with `trio.fail_after`.

    Args:
        method: e.g. "GET", "POST".
        url: an http:// or https:// URL.
        body: the request body; sent with Content-Length.
        headers: extra request headers (Host, User-Agent and Connection are set here).

    Returns:
        (status, headers, body): header names lower-cased, values decoded as latin-1.

    Raises:
        ValueError: not an http(s) URL.
        ConnectFailed: the server could not be reached, or the connection broke.
        ClientError: the response was not valid HTTP/1.1.
    """
    where = split_url(url, "http", "https")
    host, port = where.host, where.port
    request_headers = [
        ("host", where.host_header),
        ("user-agent", USER_AGENT),
        ("accept", "application/json"),
        ("connection", "close"),
        *(headers or {}).items(),
    ]
    if body is not None:
        request_headers.append(("content-length", str(len(body))))
    request = h11.Request(method=method, target=where.target, headers=request_headers)
    try:
        stream: trio.abc.Stream
        if where.tls:
            stream = await trio.open_ssl_over_tcp_stream(host, port)
        else:
            stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise ConnectFailed(f"cannot connect to {host}:{port}: {exc}") from exc
    async with stream:
        try:
            return await _exchange(stream, request, body)
        except trio.BrokenResourceError as exc:
            raise ConnectFailed(f"connection to {host}:{port} broke: {exc}") from exc
        except h11.ProtocolError as exc:
            raise ClientError(f"invalid HTTP response: {exc}") from exc


async def _exchange(
    stream: trio.abc.Stream, request: h11.Request, body: bytes | None
) -> tuple[int, list[tuple[str, str]], bytes]:
    conn = h11.Connection(h11.CLIENT)
    try:
        await stream.send_all(conn.send(request))
        if body:
            await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
    except trio.BrokenResourceError:
        # The server may answer early and close without reading the body (413 is the usual
        # case); its response is still worth reading.
        pass
    response: h11.Response | None = None
    chunks: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise ClientError("the server closed the connection without a response")
        # An InformationalResponse (1xx) precedes the real response: skip it.
    assert response is not None  # h11 yields EndOfMessage only after a Response
    headers = [
        (bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in response.headers
    ]
    return response.status_code, headers, b"".join(chunks)


async def _call_api(
    method: str, base_url: str, path: str, *, key: str | None = None, payload: object = None
) -> Any:
    headers: dict[str, str] = {}
    body: bytes | None = None
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    if payload is not None:
        headers["content-type"] = "application/json"
        body = json.dumps(payload).encode()
    status, _headers, raw = await http_request(
        method, base_url.rstrip("/") + path, body=body, headers=headers
    )
    try:
        decoded: Any = json.loads(raw)
    except ValueError:
        decoded = None
    if 200 <= status < 300:
        if decoded is None:
            raise ClientError(f"HTTP {status} with a body that is not JSON: {raw[:100]!r}")
        return decoded
    message = decoded.get("error") if isinstance(decoded, dict) else None
    if not isinstance(message, str):
        message = raw[:200].decode("utf-8", "replace")
    if status == 401:
        raise Unauthorized(message)
    raise ApiError(status, message, decoded)


async def publish_events(
    base_url: str, key: str | None, events: Mapping[str, Any] | Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """POST one event (a mapping) or a batch (a sequence of them) to `/api/events`.

    A batch is published in order, with nothing from other publishers in between; if any
    event is invalid, none is published.

    Returns:
        The server's answer, `{"accepted": n}`.

    Raises:
        Unauthorized: missing or wrong key (HTTP 401).
        ApiError: any other non-2xx status; 400 names the invalid field (and `index` in a
            batch).
        ConnectFailed, ClientError: as `http_request`.
    """
    payload = dict(events) if isinstance(events, Mapping) else list(events)
    answer: dict[str, Any] = await _call_api(
        "POST", base_url, "/api/events", key=key, payload=payload
    )
    return answer


async def health(base_url: str) -> dict[str, Any]:
    """GET `/api/health` (no auth needed).

    Returns:
        e.g. `{"status": "ok", "ws_clients": 2, "uptime": 12.3, "version": "0.1.0",
        "broker": {"kind": "memory", "ok": true}}`.

    Raises:
        ApiError: a non-2xx status.
        ConnectFailed, ClientError: as `http_request`.
    """
    answer: dict[str, Any] = await _call_api("GET", base_url, "/api/health")
    return answer
