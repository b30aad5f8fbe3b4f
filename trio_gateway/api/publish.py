"""The publish endpoints: seed 000's events, session and remote updates, and generic topics.

Each builds publications from the body (fanout/broadcaster.py validates) and answers 202 once
the broker has accepted them. Must not: check credentials (the route's policy does).
"""

from __future__ import annotations

from collections.abc import Callable

from ..broker import BrokerUnavailable
from ..fanout.broadcaster import (
    GatewayClosed,
    Publication,
    event_publication,
    remote_update_publication,
    session_deleted_publication,
    session_update_publication,
    topic_publication,
)
from .app import HttpApp, HttpError, Request, json_body, object_body, required_fields

# Seconds a publisher should wait after a 503 for an unavailable broker: about one reconnect
# attempt of the subscriber's backoff.
BROKER_RETRY_AFTER = b"1"


async def publish(app: HttpApp, publications: list[Publication]) -> list[tuple[int, ...]]:
    """Hand `publications` to the broadcaster; their offsets once the broker accepted them."""
    try:
        return await app.broadcaster.send(*publications)
    except GatewayClosed:
        raise HttpError(503, "Server shutting down", close=True) from None
    except BrokerUnavailable:
        raise HttpError(
            503,
            "Broker unavailable: nothing was published; retry later",
            headers=[(b"retry-after", BROKER_RETRY_AFTER)],
        ) from None


async def publish_one(
    app: HttpApp,
    request: Request,
    build: Callable[..., Publication],
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
    *leading: str,
) -> tuple[int, object]:
    """The endpoints that take one object: its fields (after `leading` arguments taken from
    the path) build one publication, published before the 202."""
    values = required_fields(object_body(request), required, optional)
    try:
        publication = build(*leading, *values)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    await publish(app, [publication])
    return 202, {"accepted": 1}


async def post_events(app: HttpApp, request: Request) -> tuple[int, object]:
    body = json_body(request)
    events = body if isinstance(body, list) else [body]
    publications = []
    for index, event in enumerate(events):
        try:
            publications.append(event_publication(event))
        except ValueError as exc:
            if isinstance(body, list):
                raise HttpError(400, f"events[{index}]: {exc}", index=index) from None
            raise HttpError(400, str(exc)) from None
    if publications:
        await publish(app, publications)
    return 202, {"accepted": len(publications)}


async def post_session_update(app: HttpApp, request: Request) -> tuple[int, object]:
    return await publish_one(
        app,
        request,
        session_update_publication,
        ("session_id", "workspace_id", "lifecycle"),
        ("summary", "stats"),
    )


async def post_session_deleted(app: HttpApp, request: Request) -> tuple[int, object]:
    return await publish_one(
        app, request, session_deleted_publication, ("session_id", "workspace_id")
    )


async def post_remote_update(app: HttpApp, request: Request) -> tuple[int, object]:
    return await publish_one(
        app,
        request,
        remote_update_publication,
        ("remote_env_id", "workspace_id", "status"),
        ("public_ip",),
    )


async def post_publish(app: HttpApp, request: Request) -> tuple[int, object]:
    body = json_body(request)
    items = body if isinstance(body, list) else [body]
    publications = []
    for index, item in enumerate(items):
        where = f"messages[{index}]: " if isinstance(body, list) else ""
        try:
            if not isinstance(item, dict):
                raise ValueError("message must be a JSON object")
            topic, data, exclude_user, exclude_client = required_fields(
                item, ("topic", "data"), ("exclude_user_id", "exclude_client_id")
            )
            publications.append(
                topic_publication(
                    topic, data, exclude_user_id=exclude_user, exclude_client_id=exclude_client
                )
            )
        except (ValueError, HttpError) as exc:
            message = exc.body["error"] if isinstance(exc, HttpError) else str(exc)
            if isinstance(body, list):
                raise HttpError(400, where + message, index=index) from None
            raise HttpError(400, message) from None
    offsets = await publish(app, publications) if publications else []
    return 202, {"accepted": len(publications), "offsets": [each[0] for each in offsets]}
