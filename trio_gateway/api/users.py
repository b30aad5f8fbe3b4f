"""Per-user and per-session endpoints: a message to every connection of a user, ending a
user's sessions (`/api/users/{user_id}/...`), and ending one backend session
(`/api/sessions/{session_id}/expire`). The route table decodes the ids from the path."""

from __future__ import annotations

from ..fanout.broadcaster import (
    expiry_publication,
    login_expiry_publication,
    user_message_publication,
)
from .app import HttpApp, HttpError, Request
from .publish import publish, publish_one


async def post_user_message(app: HttpApp, request: Request) -> tuple[int, object]:
    user_id = request.params["user_id"]
    return await publish_one(
        app, request, user_message_publication, ("data",), ("exclude_client_id",), user_id
    )


async def post_user_disconnect(app: HttpApp, request: Request) -> tuple[int, object]:
    try:
        publication = expiry_publication(request.params["user_id"])
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    await publish(app, [publication])
    return 202, {"accepted": 1}


async def post_session_expire(app: HttpApp, request: Request) -> tuple[int, object]:
    try:
        publication = login_expiry_publication(request.params["session_id"])
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    await publish(app, [publication])
    return 202, {"accepted": 1}
