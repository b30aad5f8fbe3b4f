"""Presence queries over HTTP: who is on a topic, and where one user is present.

Must not: change presence (only clients do, by subscribing); reads go through the tracker
(its view when this instance observes the topic) or the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..broker import BrokerUnavailable
from ..protocol.presence import ONLINE
from ..protocol.routing import id_problem
from ..protocol.topics import is_pattern, topic_problem
from .app import HttpApp, HttpError, Request

if TYPE_CHECKING:
    from ..presence.service import Presence


def _presence(app: HttpApp) -> Presence:
    presence = app.context.presence
    assert presence is not None
    return presence


async def get_topic_presence(app: HttpApp, request: Request) -> tuple[int, object]:
    topic = request.params["topic"]
    if is_pattern(topic):
        raise HttpError(400, "wildcard topics have no presence")
    problem = topic_problem(topic)
    if problem is not None:
        raise HttpError(400, problem)
    tracker = _presence(app).tracker
    if not tracker.tracks(topic):
        raise HttpError(404, "presence is not tracked on this topic")
    try:
        members = await tracker.members(topic)
    except BrokerUnavailable:
        raise HttpError(503, "Broker unavailable") from None
    return 200, {"topic": topic, "members": [entry.wire() for entry in members]}


async def get_user_presence(app: HttpApp, request: Request) -> tuple[int, object]:
    user_id = request.params["user_id"]
    problem = id_problem("user_id", user_id)
    if problem is not None:
        raise HttpError(400, problem)
    try:
        status, topics = await _presence(app).store.user(user_id)
    except BrokerUnavailable:
        raise HttpError(503, "Broker unavailable") from None
    if not topics:
        return 200, {"user_id": user_id, "status": "offline", "topics": []}
    return 200, {"user_id": user_id, "status": status or ONLINE, "topics": topics}
