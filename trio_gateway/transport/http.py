"""The HTTP/1.1 side of the port, parsed by h11: the keep-alive loop and the upgrade handoff.

Theory of operation
-------------------
Every accepted stream starts here. `handle_stream` reads request heads with h11 in a
keep-alive loop. `GET /api/ws` with `Upgrade: websocket` leaves the loop: the parsed head is
replayed to the WebSocket adapter (session/connection.py) and the stream is theirs from then
on. Every other request is read whole and handed to the route table (api/routes.py), whose
answer is written back as one response: JSON, or a `RawBody` with its own headers.

Limits: a request (head and body) must arrive within `request_timeout` or it gets 408; an idle
keep-alive connection is closed after the same time; a head over 16 KiB gets 431 and one with
both Content-Length and Transfer-Encoding 400 (request smuggling). Routing and credentials are
judged on the head, so a refused request's body is never read; a body over `max_body_size`
gets 413, and one that would take all bodies in flight past `max_body_memory` 503. Each of
those closes the connection (the unread rest cannot be skipped safely). An upgrade may not
announce a body. Once shutdown begins, responses carry `Connection: close` and idle
connections are closed at once. Every answer, these included, is one info log line, with the
path but never the query string, and a refusal's error text.

Must not: parse HTTP by hand, know any endpoint (api/ does), or block a publisher on a client.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import attrs
import h11
import trio

from ..api.app import HttpApp, HttpError, RawBody, Request
from ..api.routes import resolve
from ..observability.jsonlog import fields
from ..protocol.headers import header
from ..protocol.jsontext import dumps
from ..protocol.routing import ECHO_PATH
from ..runtime.config import Config
from ..session.auth import AuthError, Credential, token_from_request
from ..session.connection import serve_websocket
from .limits import HANDSHAKES, PER_IP, TOTAL, Slot, host_of
from .origins import cookie_usable
from .websocket import (
    RECEIVE_SIZE,
    VERSION_HEADERS,
    VERSION_STATUS,
    accept_headers,
    handshake_problem,
    is_upgrade,
    linger_close,
)

log = logging.getLogger("trio_gateway.http")

# Largest request head (request line + headers) in bytes; h11 answers 431 beyond it.
MAX_HEAD_SIZE = 16 * 1024
SERVER_HEADER = b"trio-gateway"
# Seconds a client refused for a connection cap is told to wait (`Retry-After`): a handshake
# slot frees within a second or two, a connection slot only when a client leaves.
RETRY_HANDSHAKE = 1
RETRY_CONNECTION = 5
# What each cap's refusal says (HTTP 503), by reason (transport/limits.py).
_CAP_ERRORS = {
    PER_IP: "Too many connections from this address",
    TOTAL: "Too many connections: try again later",
    HANDSHAKES: "Too many handshakes in progress: try again later",
}
_OUT_OF_DESCRIPTORS_BODY = b'{"error":"Out of connections: try again later"}'
#: The whole answer to a connection accepted only to be refused for want of descriptors
#: (listener.py), written without reading its request.
OUT_OF_DESCRIPTORS_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nserver: %s\r\nretry-after: %d\r\nconnection: close\r\n\r\n%s"
    % (len(_OUT_OF_DESCRIPTORS_BODY), SERVER_HEADER, RETRY_HANDSHAKE, _OUT_OF_DESCRIPTORS_BODY)
)


# --- the connection loop -------------------------------------------------------------------


class _PeerGone(Exception):
    pass


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        try:
            data = await stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _PeerGone from None
        conn.receive_data(bytes(data))


# Seconds a client refused for want of body memory should wait: bodies in flight last a
# request at most, usually far less.
BODY_MEMORY_RETRY_AFTER = b"1"


class _BodyMemory:
    """One request's share of `max_body_memory`: what every body being read holds at once
    (`HttpApp.body_bytes`), so that many slow bodies cannot add up to the host's memory."""

    def __init__(self, app: HttpApp) -> None:
        self._app = app
        self._held = 0

    def need(self, size: int) -> None:
        """Hold `size` bytes in all for this body.

        Raises:
            HttpError: 503 (connection closed) when the bodies in flight would exceed it.
        """
        extra = size - self._held
        if extra <= 0:
            return
        if self._app.body_bytes + extra > self._app.context.config.max_body_memory:
            raise HttpError(
                503,
                "Too many request bodies in flight; retry later",
                headers=[(b"retry-after", BODY_MEMORY_RETRY_AFTER)],
                close=True,
            )
        self._app.body_bytes += extra
        self._held = size

    def release(self) -> None:
        self._app.body_bytes -= self._held
        self._held = 0


def _take_body(conn: h11.Connection, body: bytearray, limit: int, memory: _BodyMemory) -> bool:
    """Add to `body` what h11 has of it without another byte; True once it is complete."""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:
                raise HttpError(413, f"Body larger than {limit} bytes", close=True)
            memory.need(len(body))
        elif isinstance(event, h11.EndOfMessage):
            return True
        elif event is h11.NEED_DATA:
            return False
        else:
            raise _PeerGone


async def _read_body(
    conn: h11.Connection, stream: trio.abc.Stream, limit: int, memory: _BodyMemory, within: float
) -> bytes:
    """The request's body, read within `within` seconds.

    Raises:
        HttpError: 413 past `limit`, 408 when the rest did not arrive in time.
    """
    body = bytearray()
    # Most bodies came with their head: no timer to set up for those.
    if not _take_body(conn, body, limit, memory):
        with trio.move_on_after(within) as timer:
            while not _take_body(conn, body, limit, memory):
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise _PeerGone from None
                conn.receive_data(bytes(data))
        if timer.cancelled_caught:
            raise HttpError(408, "Request body not received in time", close=True)
    return bytes(body)


def _announces_body(head: h11.Request) -> bool:
    length = header(head.headers, b"content-length")
    return header(head.headers, b"transfer-encoding") is not None or length not in (None, b"0")


def _declared_length(head: h11.Request) -> int | None:
    value = header(head.headers, b"content-length")
    return int(value) if value is not None else None


async def _send_response(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    status: int,
    body: object,
    headers: list[tuple[bytes, bytes]],
    close: bool,
    *,
    head_only: bool = False,
) -> None:
    if isinstance(body, RawBody):
        payload, content_type = body.data, body.content_type.encode()
        headers = [*body.headers, *headers]
    else:
        payload, content_type = dumps(body).encode(), b"application/json"
    # A 304 has no body, so no framing for one: only the validators and caching headers.
    not_modified = status == 304
    all_headers = (
        []
        if not_modified
        else [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())]
    )
    all_headers += [(b"server", SERVER_HEADER), *headers]
    if close:
        all_headers.append((b"connection", b"close"))
    # One write for the whole response: a publish is answered while its fan-out is under way,
    # and every extra write and scheduling point there delays the recipients.
    response = conn.send(h11.Response(status_code=status, headers=all_headers)) or b""
    if not head_only and not not_modified:
        response += conn.send(h11.Data(data=payload)) or b""
    response += conn.send(h11.EndOfMessage()) or b""
    try:
        await stream.send_all(response)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise _PeerGone from None


async def _answer(
    app: HttpApp,
    conn: h11.Connection,
    stream: trio.abc.Stream,
    head: h11.Request,
    remote: str | None,
) -> bool:
    """Route and check the head, read the body, run the handler and respond. Returns False
    when the connection must end."""
    config = app.context.config
    started = trio.current_time()
    method, path = _method(head), _path(head)
    memory = _BodyMemory(app)
    try:
        # Routing and credentials need only the head: a request refused (401, 404, 405) is
        # answered before any of its body is read, and, if it has one, the connection closed
        # (the unread rest cannot be skipped safely). One without a body stays reusable.
        try:
            route, request = resolve(app, Request(method, path, head, b""))
        except HttpError as exc:
            if _announces_body(head):
                exc.close = True
            else:
                # Its end of message, which h11 has without another byte.
                await _read_body(conn, stream, 0, memory, config.request_timeout)
            raise
        declared = _declared_length(head)
        if declared is not None and declared > config.max_body_size:
            raise HttpError(413, f"Body larger than {config.max_body_size} bytes", close=True)
        memory.need(declared or 0)
        body = await _read_body(conn, stream, config.max_body_size, memory, config.request_timeout)
        status, payload = await route.handler(app, attrs.evolve(request, body=body))
        headers: list[tuple[bytes, bytes]] = []
        close = False
    except HttpError as exc:
        status, payload, headers, close = exc.status, exc.body, exc.headers, exc.close
    finally:
        memory.release()
    close = close or app.context.shutting_down.is_set() or conn.their_state is not h11.DONE
    try:
        await _send_response(
            conn, stream, status, payload, headers, close, head_only=method == "HEAD"
        )
    finally:
        _log_request("http request", method, path, status, started, remote, payload)
    return not close and conn.our_state is h11.DONE


# Our texts for the heads h11 refuses: its own messages describe its parser, and quote
# what the client sent.
_HEAD_ERRORS = {
    431: "Request head too large",
    501: "Transfer-Encoding not supported: send Content-Length or chunked",
}


def _head_error(status: int) -> str:
    return _HEAD_ERRORS.get(status, "Malformed HTTP request")


class _Head(NamedTuple):
    """A request head with its headers in a list: the upgrade path looks its headers up a
    dozen times, and iterating h11's `Headers` costs a Python call per header (its
    Sequence methods), a list none."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]

    @classmethod
    def of(cls, head: h11.Request) -> _Head:
        return cls(head.method, head.target, list(head.headers))


def _method(head: h11.Request | _Head) -> str:
    return head.method.decode("ascii", "replace")


def _path(head: h11.Request | _Head) -> str:
    # Never the query string: it may hold a token (`?token=` at the upgrade, for one).
    return urlsplit(head.target.decode("latin-1")).path


def _log_request(
    event: str,
    method: str | None,
    path: str | None,
    status: int | None,
    started: float | None,
    remote: str | None,
    body: object = None,
    **extra: str,
) -> None:
    """One line per answer; a refusal's line also has `error`, the text the client got."""
    if not log.isEnabledFor(logging.INFO):
        # Built for nothing otherwise, once per request (every publish).
        return
    duration = None if started is None else round((trio.current_time() - started) * 1000, 3)
    values: dict[str, object] = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration,
        "remote": remote,
        **extra,
    }
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        values["error"] = body["error"]
    log.info(event, extra=fields(**values))


def _read_now(stream: trio.abc.Stream) -> bytes | None:
    """What a socket stream holds right now (b"": the peer closed), or None: nothing yet,
    or not a socket."""
    if not isinstance(stream, trio.SocketStream):
        return None
    try:
        return os.read(stream.socket.fileno(), RECEIVE_SIZE)
    except BlockingIOError:
        return None
    except OSError:
        raise _PeerGone from None


def _event_now(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    """The next h11 event if it needs no waiting, else h11.NEED_DATA."""
    event = conn.next_event()
    while event is h11.NEED_DATA:
        data = _read_now(stream)
        if data is None:
            break
        conn.receive_data(data)
        event = conn.next_event()
    return event


async def _next_request(
    app: HttpApp, conn: h11.Connection, stream: trio.abc.Stream
) -> h11.Request | None:
    """The next request head, or None if the peer left or stayed idle too long."""
    # Most heads are in the socket by the time their connection is served (a client sends
    # its request as soon as it is connected): taken at once, with no timer to set up and
    # no trip through the scheduler, which a storm of connects would pay on each.
    event = _event_now(conn, stream)
    if event is not h11.NEED_DATA:
        return event if isinstance(event, h11.Request) else None
    timeout = app.context.config.request_timeout
    idle = not conn.trailing_data[0]
    with trio.CancelScope() as idle_scope:
        if idle:
            app.idle_scopes.add(idle_scope)
        try:
            with trio.move_on_after(timeout) as timer:
                event = await _next_event(conn, stream)
        finally:
            app.idle_scopes.discard(idle_scope)
    if idle_scope.cancelled_caught:
        return None
    if timer.cancelled_caught:
        if conn.trailing_data[0] or conn.their_state is not h11.IDLE:
            raise HttpError(408, "Request head not received in time", close=True)
        return None
    if isinstance(event, h11.Request):
        return event
    return None


# RFC 9112 6.1: a request with both may be read one way here and another way by a proxy in
# front (request smuggling), so it is refused and the connection closed, its body unread.
AMBIGUOUS_LENGTH = "Request has both Content-Length and Transfer-Encoding"


def _head_size(head: _Head) -> int:
    # h11 bounds only a head still incomplete; one that arrived whole in a read (up to
    # RECEIVE_SIZE) is measured here, as the bytes it took less optional whitespace.
    size = len(head.method) + len(head.target) + len(b" HTTP/1.1\r\n\r\n")
    return size + sum(len(name) + len(value) + 4 for name, value in head.headers)


def _ambiguous_length(head: _Head) -> bool:
    names = {name for name, _ in head.headers}
    return b"content-length" in names and b"transfer-encoding" in names


async def _refuse_head(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    head: h11.Request,
    remote: str | None,
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer a request from its head alone and end the connection (the body is not read)."""
    started = trio.current_time()
    body = {"error": message}
    try:
        await _send_response(
            conn, stream, status, body, headers or [], True, head_only=head.method == b"HEAD"
        )
    finally:
        _log_request("http request", _method(head), _path(head), status, started, remote, body)


@attrs.frozen
class _Handoff:
    """What the WebSocket side needs once the upgrade is accepted (and nothing of HTTP)."""

    credential: Credential
    trailing: bytes
    echo: bool
    #: The request's Origin header (browsers), for the connect hook.
    origin: str | None
    #: This WebSocket's place in the connection caps, given back when it ends.
    slot: Slot


async def handle_stream(app: HttpApp, stream: trio.abc.Stream) -> None:
    """Serve one accepted stream: HTTP requests until close, or one WebSocket client.

    Resource handling:
        Closes `stream` before returning (the WebSocket side closes it itself), lingering
        so that a client still sending gets our error response rather than a reset.
    Error handling:
        Never raises except `Cancelled`; malformed HTTP gets 400/431, failures are logged.
    """
    # Read once, now: once the peer has gone the socket no longer knows who it was.
    remote = _peer_address(stream)
    handoff = await _serve_http(app, stream, remote)
    if handoff is not None:
        # The h11 connection is gone by now: an idle WebSocket keeps no HTTP state alive.
        # The WebSocket side gives the slot back when it ends.
        await serve_websocket(
            stream,
            handoff.credential,
            handoff.trailing,
            app.context,
            echo=handoff.echo,
            origin=handoff.origin,
            remote=remote,
            slot=handoff.slot,
        )


def _peer_address(stream: trio.abc.Stream) -> str | None:
    """The peer's "ip:port", or None when `stream` is not a connected socket."""
    socket = getattr(stream, "socket", None)
    if socket is None:
        return None
    try:
        host, port, *_ = socket.getpeername()
    except (OSError, ValueError):
        return None
    return f"{host}:{port}"


async def _serve_http(app: HttpApp, stream: trio.abc.Stream, remote: str | None) -> _Handoff | None:
    """Answer HTTP requests until the connection ends; a `_Handoff` once an upgrade is
    accepted (then the stream is the WebSocket side's to close)."""
    try:
        handoff = await _serve_requests(app, stream, remote)
    except _PeerGone:
        handoff = None
    except h11.RemoteProtocolError:
        handoff = None
    except Exception:
        log.exception("http connection failed")
        handoff = None
    if handoff is None:
        # The h11 connection, and what its buffer held, is gone by now: a connection closed
        # after refusing a body holds none of it while it lingers.
        await linger_close(stream, app.context.config.close_timeout)
    return handoff


async def _serve_requests(
    app: HttpApp, stream: trio.abc.Stream, remote: str | None
) -> _Handoff | None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
    while not app.context.shutting_down.is_set():
        try:
            head = await _next_request(app, conn, stream)
        except h11.RemoteProtocolError as exc:
            # No head to name (400, 431): the line has the status and the peer only.
            status = exc.error_status_hint
            body = {"error": _head_error(status)}
            _log_request("http request", None, None, status, None, remote, body)
            await _send_response(conn, stream, status, body, [], True)
            break
        except HttpError as exc:
            # A head that did not arrive in time (408).
            _log_request("http request", None, None, exc.status, None, remote, exc.body)
            await _send_response(conn, stream, exc.status, exc.body, exc.headers, True)
            break
        if head is None:
            break
        view = _Head.of(head)
        if _head_size(view) > MAX_HEAD_SIZE:
            await _refuse_head(conn, stream, head, remote, 431, _head_error(431))
            break
        if _ambiguous_length(view):
            await _refuse_head(conn, stream, head, remote, 400, AMBIGUOUS_LENGTH)
            break
        if is_upgrade(view):
            handoff = await _upgrade(app, conn, stream, view, remote)
            if handoff is not None:
                return handoff
            break
        if not await _answer(app, conn, stream, head, remote):
            break
        conn.start_next_cycle()
    return None


async def _upgrade(
    app: HttpApp,
    conn: h11.Connection,
    stream: trio.abc.Stream,
    head: _Head,
    remote: str | None,
) -> _Handoff | None:
    """Answer 101 and describe the handoff, or answer an error and return None."""
    started = trio.current_time()
    path = _path(head)
    echo = path == ECHO_PATH and app.context.config.enable_echo
    if path not in app.context.config.ws_paths and not echo:
        status, message, reason = 404, "Not found", "not_found"
    elif app.context.shutting_down.is_set():
        status, message, reason = 503, "Server shutting down", "shutting_down"
    elif (problem := handshake_problem(head)) is not None:
        (status, message), reason = problem, "bad_handshake"
    elif not _origin_allowed(app.context.config, head):
        # A browser page from another site (cross-site WebSocket hijacking would ride on the
        # user's cookie); clients without an Origin header are not browsers and pass.
        status, message, reason = 403, "Origin not allowed", "origin"
    elif (cap := app.context.limits.refusal(host_of(remote))) is not None:
        # Before the token is judged: a refused client costs no JWT check or backend call.
        status, message, reason = 503, _CAP_ERRORS.get(cap, _CAP_ERRORS[TOTAL]), cap
    elif (credential := _credential(app, head, echo)) is REJECTED:
        status, message, reason = 401, "Invalid credentials", "unauthorized"
    else:
        slot = app.context.limits.open(host_of(remote))
        try:
            switched = await _send_switch(app.context.config, stream, head)
        except BaseException:
            slot.release()
            raise
        if not switched:
            slot.release()
            _log_request(
                "websocket upgrade refused",
                _method(head),
                path,
                None,
                started,
                remote,
                {"error": "101 not taken within request_timeout"},
            )
            return None
        trailing, _closed = conn.trailing_data
        origin = header(head.headers, b"origin")
        return _Handoff(
            credential,
            bytes(trailing),
            echo,
            origin.decode("latin-1") if origin else None,
            slot,
        )
    app.context.metrics.refused[reason] += 1
    headers: list[tuple[bytes, bytes]] = []
    if status == 401:
        headers = [(b"www-authenticate", b'Bearer realm="trio-gateway"')]
    elif status == VERSION_STATUS:
        headers = list(VERSION_HEADERS)
    if reason == HANDSHAKES:
        headers.append((b"retry-after", str(RETRY_HANDSHAKE).encode()))
    elif status == 503 and reason != "shutting_down":
        headers.append((b"retry-after", str(RETRY_CONNECTION).encode()))
    body = {"error": message}
    try:
        await _send_response(
            conn, stream, status, body, headers, True, head_only=head.method == b"HEAD"
        )
    finally:
        _log_request(
            "websocket upgrade refused",
            _method(head),
            path,
            status,
            started,
            remote,
            body,
            reason=reason,
        )
    return None


# The 101 as h11 writes it: h11 is not asked to write it, since it would first want the
# request's end of message, and the connection is not HTTP from here on anyway.
SWITCHING = b"HTTP/1.1 101 \r\n"


async def _send_switch(config: Config, stream: trio.abc.Stream, head: _Head) -> bool:
    """Write the 101; False if the peer did not take it within `request_timeout`."""
    response = SWITCHING + b"".join(b"%s: %s\r\n" % pair for pair in accept_headers(head))
    response += b"\r\n"
    sent = 0
    if isinstance(stream, trio.SocketStream):
        # A fresh socket takes a 101 whole in one write, which needs no timer and no
        # scheduling point; only what it did not take goes through the bounded send_all.
        try:
            sent = os.write(stream.socket.fileno(), response)
        except BlockingIOError:
            pass
        except OSError:
            raise _PeerGone from None
        if sent == len(response):
            return True
    # Bounded like any request: a peer that does not take our 101 is dropped.
    with trio.move_on_after(config.request_timeout):
        try:
            await stream.send_all(memoryview(response)[sent:])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _PeerGone from None
        return True
    return False


# An upgrade refused at once (reject_at_upgrade) rather than accepted and closed 4001.
REJECTED = AuthError("rejected at the upgrade")


def _credential(app: HttpApp, head: _Head, echo: bool) -> Credential:
    config = app.context.config
    cookie = config.auth_cookie
    if cookie is not None and not _cookie_usable(config, head):
        # A cross-origin page: the browser's cookie is not the page's credential.
        cookie = None
    token = token_from_request(head.target, head.headers, cookie)
    if token is None:
        # The echo peer is a diagnostics tool: no identify handshake, a key is required.
        return AuthError("no credentials") if echo else None
    credential = app.context.auth.judge(token, time.time(), hook=config.connect_url is not None)
    if isinstance(credential, AuthError) and config.reject_at_upgrade:
        return REJECTED
    return credential


def _cookie_usable(config: Config, head: _Head) -> bool:
    origin, host = header(head.headers, b"origin"), header(head.headers, b"host")
    return cookie_usable(
        origin.decode("latin-1") if origin is not None else None,
        host.decode("latin-1") if host is not None else None,
        config.allowed_origins,
    )


def _origin_allowed(config: Config, head: _Head) -> bool:
    if not config.allowed_origins:
        return True
    origin = header(head.headers, b"origin")
    return origin is None or origin.decode("latin-1") in config.allowed_origins
