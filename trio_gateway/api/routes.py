"""The route table: every endpoint on one line, with its methods, handler and policy.

A policy is what must hold before the handler runs, declared per route and applied once by
`resolve`, never inside a handler, on the request head alone, so that transport/http.py can
refuse a request before reading its body: `PUBLIC`; `API_KEY` (the first `Authorization` header
is `Bearer <key>`, 401 with `WWW-Authenticate` otherwise); `METRICS` (an API key or the
`metrics_token`, or nothing at all with `metrics_public`); `ADMIN` (public, but 404, as if
the path did not exist, unless the `admin` setting is on). A new kind of check (a rate
limit) is a new `Policy` value handled in `_enforce`; a new
endpoint is one line here and one handler. The WebSocket paths are configurable
(`ws_paths`), so they are not in the table: a plain GET on one gets 426.

A path is a literal or a template: a `{name}` segment matches one non-empty path segment,
percent-decoded strictly (bad UTF-8 is a 404), and reaches the handler as
`request.params[name]`. HEAD is answered wherever GET is (RFC 9110); other methods get 405
with `Allow`.
"""

from __future__ import annotations

import enum
from urllib.parse import unquote

import attrs

from ..protocol.headers import bearer_token
from ..session.auth import key_matches
from .app import Handler, HttpApp, HttpError, Request
from .health import health, websocket_without_upgrade
from .metrics import get_metrics
from .presence import get_topic_presence, get_user_presence
from .publish import (
    post_events,
    post_publish,
    post_remote_update,
    post_session_deleted,
    post_session_update,
)
from .static import get_admin_asset, get_admin_page, get_client_js, get_client_types
from .stats import get_nodes, get_stats, ready
from .users import post_session_expire, post_user_disconnect, post_user_message


class Policy(enum.Enum):
    PUBLIC = "public"
    API_KEY = "api_key"
    METRICS = "metrics"
    ADMIN = "admin"


PUBLIC, API_KEY, METRICS, ADMIN = Policy.PUBLIC, Policy.API_KEY, Policy.METRICS, Policy.ADMIN


@attrs.frozen
class Route:
    handler: Handler
    policy: Policy


ROUTES: dict[str, dict[str, Route]] = {
    "/api/health": {"GET": Route(health, PUBLIC)},
    "/api/ready": {"GET": Route(ready, PUBLIC)},
    "/api/stats": {"GET": Route(get_stats, API_KEY)},
    "/api/nodes": {"GET": Route(get_nodes, API_KEY)},
    "/metrics": {"GET": Route(get_metrics, METRICS)},
    "/api/events": {"POST": Route(post_events, API_KEY)},
    "/api/session-updates": {"POST": Route(post_session_update, API_KEY)},
    "/api/remote-updates": {"POST": Route(post_remote_update, API_KEY)},
    "/api/session-deleted": {"POST": Route(post_session_deleted, API_KEY)},
    "/api/publish": {"POST": Route(post_publish, API_KEY)},
    "/api/users/{user_id}/messages": {"POST": Route(post_user_message, API_KEY)},
    "/api/users/{user_id}/disconnect": {"POST": Route(post_user_disconnect, API_KEY)},
    "/api/sessions/{session_id}/expire": {"POST": Route(post_session_expire, API_KEY)},
    "/api/presence/{topic}": {"GET": Route(get_topic_presence, API_KEY)},
    "/api/users/{user_id}/presence": {"GET": Route(get_user_presence, API_KEY)},
    "/api/client.js": {"GET": Route(get_client_js, PUBLIC)},
    "/api/client.d.ts": {"GET": Route(get_client_types, PUBLIC)},
    "/admin": {"GET": Route(get_admin_page, ADMIN)},
    "/admin/": {"GET": Route(get_admin_page, ADMIN)},
    "/admin/{asset}": {"GET": Route(get_admin_asset, ADMIN)},
}

# Every WebSocket path (the `ws_paths` setting) answers a plain GET with 426.
_WEBSOCKET = {"GET": Route(websocket_without_upgrade, PUBLIC)}
_LITERAL = {path: methods for path, methods in ROUTES.items() if "{" not in path}
_TEMPLATES = [(path.split("/"), methods) for path, methods in ROUTES.items() if "{" in path]


async def respond(app: HttpApp, request: Request) -> tuple[int, object]:
    """Route `request`, enforce its route's policy, run its handler.

    Raises:
        HttpError: 404, 405, the policy's refusal, or the handler's own error.
    """
    route, request = resolve(app, request)
    return await route.handler(app, request)


def resolve(app: HttpApp, request: Request) -> tuple[Route, Request]:
    """The route `request` is for, once its policy holds, and the request with the path's
    parameters. Reads only the head (method, path, headers): `request.body` may be unread.

    Raises:
        HttpError: 404, 405, or the policy's refusal (401, or 404 for `ADMIN` when off).
    """
    methods, params = _methods(request.path)
    if methods is None and request.path in app.context.config.ws_paths:
        methods = _WEBSOCKET
    if methods is None:
        raise HttpError(404, "Not found")
    method = request.method
    # HEAD is GET without the body (RFC 9110), wherever GET is served.
    route = methods.get("GET" if method == "HEAD" else method)
    if route is None:
        allowed = sorted({*methods, *(["HEAD"] if "GET" in methods else [])})
        raise HttpError(
            405, f"Method {method} not allowed", headers=[(b"allow", ", ".join(allowed).encode())]
        )
    _enforce(app, request, route.policy)
    if params:
        request = attrs.evolve(request, params=params)
    return route, request


def _methods(path: str) -> tuple[dict[str, Route] | None, dict[str, str]]:
    if (methods := _LITERAL.get(path)) is not None:
        return methods, {}
    segments = path.split("/")
    for template, methods in _TEMPLATES:
        params = _match(template, segments)
        if params is not None:
            return methods, params
    return None, {}


def _match(template: list[str], segments: list[str]) -> dict[str, str] | None:
    if len(template) != len(segments):
        return None
    params = {}
    for want, have in zip(template, segments, strict=True):
        if want.startswith("{"):
            try:
                value = unquote(have, errors="strict")
            except UnicodeDecodeError:
                return None
            if not value:
                return None
            params[want[1:-1]] = value
        elif want != have:
            return None
    return params


def _enforce(app: HttpApp, request: Request, policy: Policy) -> None:
    if policy is PUBLIC:
        return
    config = app.context.config
    if policy is ADMIN:
        if not config.admin:
            raise HttpError(404, "Not found")
        return
    if policy is METRICS and config.metrics_public:
        return
    token = bearer_token(request.header(b"authorization"))
    accepted = config.api_keys
    if policy is METRICS and config.metrics_token is not None:
        accepted = (*accepted, config.metrics_token)
    if not key_matches(token, accepted):
        raise HttpError(
            401,
            "Missing or invalid API key" if token else "Missing API key",
            headers=[(b"www-authenticate", b'Bearer realm="trio-gateway"')],
        )
