"""The publish endpoints: seed 000's events, session and remote updates, and generic topics.

Each builds publications from the body (fanout/broadcaster.py validates) and answers 202 once
the broker has accepted them. A publication may carry an `idempotency_key`: a repeat within
`idempotency_ttl` is answered 202 again, counted in `duplicates`, and not delivered twice.
When the broker did not confirm a publish (it may or may not have gone out) the answer is 504
`outcome_unknown`, which a publisher retries with the same keys. Must not: check credentials
(the route's policy does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ..broker import BrokerUnavailable, PublishOutcomeUnknown
from ..fanout.broadcaster import (
    Assigned,
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
IDEMPOTENCY_FIELD = "idempotency_key"
# Characters: room for a UUID or a hash with a namespace, little enough to keep in Redis.
IDEMPOTENCY_KEY_LIMIT = 200
OUTCOME_UNKNOWN = "outcome_unknown"


def idempotency_key(value: object) -> str | None:
    """A body's `idempotency_key`, checked; None when absent or null.

    Raises:
        ValueError: not a non-empty string of at most IDEMPOTENCY_KEY_LIMIT characters.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= IDEMPOTENCY_KEY_LIMIT:
        raise ValueError(
            f"{IDEMPOTENCY_FIELD} must be a non-empty string of at most "
            f"{IDEMPOTENCY_KEY_LIMIT} characters"
        )
    return value


def keyed(publication: Publication, key: str | None) -> Publication:
    return publication if key is None else attrs.evolve(publication, idempotency_key=key)


async def publish(app: HttpApp, publications: list[Publication]) -> list[Assigned]:
    """Hand `publications` to the broadcaster; what the broker did with each."""
    try:
        return await app.broadcaster.send_assigned(*publications)
    except GatewayClosed:
        raise HttpError(503, "Server shutting down", close=True) from None
    except PublishOutcomeUnknown:
        raise HttpError(
            504,
            "Publish outcome unknown: the broker did not confirm it; retry with the same "
            f"{IDEMPOTENCY_FIELD} to publish it at most once",
            code=OUTCOME_UNKNOWN,
        ) from None
    except BrokerUnavailable:
        raise HttpError(
            503,
            "Broker unavailable: nothing was published; retry later",
            headers=[(b"retry-after", BROKER_RETRY_AFTER)],
        ) from None


def accepted(publications: list[Publication], assigned: list[Assigned]) -> dict[str, Any]:
    """The 202 body: `accepted`, and `duplicates` when any publication carried a key."""
    body: dict[str, Any] = {"accepted": len(publications)}
    if any(publication.idempotency_key is not None for publication in publications):
        body["duplicates"] = sum(each.duplicate for each in assigned)
    return body


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
    body = object_body(request)
    values = required_fields(body, required, optional)
    try:
        publication = keyed(build(*leading, *values), idempotency_key(body.get(IDEMPOTENCY_FIELD)))
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    publications = [publication]
    return 202, accepted(publications, await publish(app, publications))


async def post_events(app: HttpApp, request: Request) -> tuple[int, object]:
    body = json_body(request)
    events = body if isinstance(body, list) else [body]
    publications = []
    for index, event in enumerate(events):
        try:
            key = None
            if isinstance(event, dict) and IDEMPOTENCY_FIELD in event:
                # The publisher's, not part of the event clients receive.
                event = {name: value for name, value in event.items() if name != IDEMPOTENCY_FIELD}
                key = idempotency_key(events[index][IDEMPOTENCY_FIELD])
            publications.append(keyed(event_publication(event), key))
        except ValueError as exc:
            if isinstance(body, list):
                raise HttpError(400, f"events[{index}]: {exc}", index=index) from None
            raise HttpError(400, str(exc)) from None
    assigned = await publish(app, publications) if publications else []
    return 202, accepted(publications, assigned)


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
            topic, data, exclude_user, exclude_client, key = required_fields(
                item,
                ("topic", "data"),
                ("exclude_user_id", "exclude_client_id", IDEMPOTENCY_FIELD),
            )
            publication = topic_publication(
                topic, data, exclude_user_id=exclude_user, exclude_client_id=exclude_client
            )
            publications.append(keyed(publication, idempotency_key(key)))
        except (ValueError, HttpError) as exc:
            message = exc.body["error"] if isinstance(exc, HttpError) else str(exc)
            if isinstance(body, list):
                raise HttpError(400, where + message, index=index) from None
            raise HttpError(400, message) from None
    assigned = await publish(app, publications) if publications else []
    reply = accepted(publications, assigned)
    reply["offsets"] = [each.offsets[0] for each in assigned]
    return 202, reply
