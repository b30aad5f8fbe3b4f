"""Gateway URLs as the client library needs them. Pure.

Owns splitting a URL into what a connection needs (host, port, TLS, the Host header, the
request target) and turning an HTTP base URL into the WebSocket one.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

from ..protocol.routing import WS_PATH


class Endpoint(NamedTuple):
    """Where a URL points, split the way a request on a fresh connection needs it."""

    host: str
    port: int
    tls: bool
    #: The Host header: the URL's authority without any userinfo.
    host_header: str
    #: The request target: path (at least "/") and query.
    target: str


def split_url(url: str, plain: str, secure: str) -> Endpoint:
    """`url` split, its scheme one of `plain` (port 80) or `secure` (TLS, port 443).

    Raises:
        ValueError: another scheme, or no host.
    """
    parts = urlsplit(url)
    if parts.scheme not in (plain, secure) or not parts.hostname:
        raise ValueError(f"expected a {plain}:// or {secure}:// URL, got {url!r}")
    tls = parts.scheme == secure
    return Endpoint(
        host=parts.hostname,
        port=parts.port or (443 if tls else 80),
        tls=tls,
        host_header=parts.netloc.rpartition("@")[2],
        target=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
    )


def websocket_url(base_url: str) -> str:
    """The gateway's WebSocket URL for an HTTP base URL.

    `http://host:8000` gives `ws://host:8000/api/ws` (https gives wss; a path prefix is kept,
    for a gateway behind a proxy). A ws:// or wss:// URL is returned unchanged.

    Raises:
        ValueError: any other scheme.
    """
    parts = urlsplit(base_url)
    if parts.scheme in ("ws", "wss"):
        return base_url
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"expected an http(s) or ws(s) URL, got {base_url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + WS_PATH, "", ""))
