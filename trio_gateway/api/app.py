"""What every HTTP handler shares: the app (the running gateway as the API sees it), the
parsed request, the error response, and the body helpers.

Must not: parse HTTP (transport/http.py does, with h11) or know any route (routes.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import trio

from ..fanout.broadcaster import Broadcaster
from ..observability.nodes import Nodes
from ..observability.stats import Stats
from ..protocol.headers import header
from ..protocol.jsontext import loads
from ..session.context import GatewayContext


class HttpError(Exception):
    """An error response: status, JSON body and extra headers. `close` ends the connection."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        close: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}
        self.headers = headers or []
        self.close = close


@attrs.frozen
class RawBody:
    """A response body that is not JSON (the metrics exposition, static files): its bytes,
    type and the response headers that go with it (validators, caching, security).

    With status 304 the data is not sent, nor its type and length (RFC 9110 15.4.5).
    """

    data: bytes
    content_type: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


@attrs.frozen
class Request:
    method: str
    path: str
    head: h11.Request
    body: bytes
    #: The route template's `{name}` segments, percent-decoded (api/routes.py).
    params: Mapping[str, str] = attrs.field(factory=dict)

    def header(self, name: bytes) -> bytes | None:
        return header(self.head.headers, name)

    def query(self, name: str) -> str | None:
        """The first value of query parameter `name`, or None."""
        values = parse_qs(urlsplit(self.head.target.decode("latin-1")).query).get(name)
        return values[0] if values else None


@attrs.define
class HttpApp:
    """What the HTTP handlers need from the running gateway."""

    context: GatewayContext
    broadcaster: Broadcaster
    version: str
    instance: str
    started_at: float
    #: This instance's statistics and the cluster view (observability/).
    stats: Stats
    nodes: Nodes
    # Cancel scopes of keep-alive connections waiting idle for their next request; shutdown
    # cancels them so drain does not wait out the idle timeout.
    idle_scopes: set[trio.CancelScope] = attrs.field(factory=set)
    #: Bytes all HTTP request bodies being read hold now, against `max_body_memory`
    #: (transport/http.py).
    body_bytes: int = 0

    def begin_shutdown(self) -> None:
        for scope in tuple(self.idle_scopes):
            scope.cancel()


#: A handler answers one request with (status, JSON-able body or `RawBody`), or raises
#: HttpError.
Handler = Callable[[HttpApp, Request], Awaitable[tuple[int, object]]]


def json_body(request: Request) -> Any:
    if not request.body:
        raise HttpError(400, "Request body must be JSON")
    try:
        return loads(request.body)
    except ValueError:
        raise HttpError(400, "Invalid JSON") from None


def object_body(request: Request) -> dict[str, Any]:
    body = json_body(request)
    if not isinstance(body, dict):
        raise HttpError(400, "Body must be a JSON object")
    return body


def required_fields(
    body: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...]
) -> list[Any]:
    """The values of `required` then `optional` fields (None when absent), in order."""
    missing = [name for name in required if name not in body]
    if missing:
        raise HttpError(400, f"{missing[0]} is required")
    return [body[name] for name in required] + [body.get(name) for name in optional]
