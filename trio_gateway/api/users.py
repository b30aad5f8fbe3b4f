"""Per-user endpoints, `/api/users/{user_id}/...`: a message to every connection of a user,
and ending a user's sessions. The route table decodes `{user_id}` from the path."""

from __future__ import annotations

from ..fanout.broadcaster import expiry_publication, user_message_publication
from .app import HttpApp, Request
from .publish import publish, publish_one


async def post_user_message(app: HttpApp, request: Request) -> tuple[int, object]:
    user_id = request.params["user_id"]
    return await publish_one(
        app, request, user_message_publication, ("data",), ("exclude_client_id",), user_id
    )


async def post_user_disconnect(app: HttpApp, request: Request) -> tuple[int, object]:
    await publish(app, [expiry_publication(request.params["user_id"])])
    return 202, {"accepted": 1}
