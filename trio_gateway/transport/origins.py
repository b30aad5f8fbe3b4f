"""Which browser pages may ride on a connection's ambient credential, the auth cookie.

A browser sends its cookies with every WebSocket it opens, whichever page opens it, and
WebSockets are not bound by CORS: any site the user visits could otherwise connect as them
(cross-site WebSocket hijacking). So a token from the cookie counts only when the upgrade's
`Origin` is the gateway's own (the host and port of `Host`, a scheme's default port when
none is given), or one of `allowed_origins`, or when there is no `Origin` at all (not a
browser). Tokens a page must hold itself (query, `Authorization`, identify) are not ambient
and are never affected.

Pure: header values in, a verdict out. Must not read credentials (session/auth.py does) or
answer requests (transport/http.py does).
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def cookie_usable(origin: str | None, host: str | None, allowed: Collection[str]) -> bool:
    """Whether the auth cookie of an upgrade with these `Origin` and `Host` may be used."""
    if origin is None:
        return True
    return origin in allowed or same_origin(origin, host)


def same_origin(origin: str, host: str | None) -> bool:
    """Whether `origin` (`scheme://host[:port]`) names the host and port of `host` (the
    request's `Host` header). An opaque origin (`null`) is never the same."""
    parts = urlsplit(origin)
    default = _DEFAULT_PORTS.get(parts.scheme)
    if default is None or not parts.hostname or host is None:
        return False
    served = urlsplit("//" + host)
    try:
        return served.hostname == parts.hostname and (served.port or default) == (
            parts.port or default
        )
    except ValueError:  # a port that is not a number
        return False
