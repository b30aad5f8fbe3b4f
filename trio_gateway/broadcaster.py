"""The publishing side: build a publication once, queue it, and the one broadcast task.

Owns the publish channel between publishers (in-process callers, the HTTP API) and the hub.
Must not touch clients directly: `run_broadcast` hands each publication to `Hub.publish` in
arrival order, which is what gives every client the same total publish order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import trio

from .hub import Hub
from .protocol.codec import encode
from .protocol.frames import text_frame
from .protocol.messages import EventMessage, RemoteUpdate, SessionUpdate
from .protocol.routing import event_problem, route_keys


class PublishQueueFull(Exception):
    """The publish queue is at capacity; nothing was queued. Retry later or use `publish`."""


class GatewayClosed(Exception):
    """The gateway is shutting down and accepts no more publications."""


@attrs.frozen
class Publication:
    """A server message serialised and framed once, with the subscription keys it goes to."""

    text: str
    keys: tuple[str, ...]
    # The WebSocket frame every recipient's writer sends, derived from `text` once.
    frame: bytes = attrs.field(init=False, eq=False, repr=False)

    @frame.default
    def _frame(self) -> bytes:
        return text_frame(self.text)


# What travels on the publish channel: publications queued together stay together and ordered.
Batch = tuple[Publication, ...]


def _encode(message: EventMessage | SessionUpdate | RemoteUpdate) -> str:
    try:
        return encode(message)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"payload is not JSON-serialisable: {exc}") from None


def _require_text(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")


def event_publication(event: Mapping[str, Any]) -> Publication:
    """An `event` message for `event`'s workspace and session.

    Raises:
        ValueError: the event is not an object with a non-empty string `workspace_id` and a
            string-or-null `session_id`, or it is not JSON-serialisable.
    """
    problem = event_problem(event)
    if problem is not None:
        raise ValueError(problem)
    text = _encode(EventMessage(dict(event)))
    return Publication(text, route_keys(event["workspace_id"], event.get("session_id")))


def session_update_publication(
    session_id: str,
    workspace_id: str,
    lifecycle: str,
    summary: str | None = None,
    stats: Mapping[str, Any] | None = None,
) -> Publication:
    _require_text("session_id", session_id)
    _require_text("workspace_id", workspace_id)
    _require_text("lifecycle", lifecycle)
    if summary is not None and not isinstance(summary, str):
        raise ValueError("summary must be a string")
    if stats is not None and not isinstance(stats, Mapping):
        raise ValueError("stats must be an object")
    message = SessionUpdate(
        session_id, lifecycle, summary, dict(stats) if stats is not None else None
    )
    return Publication(_encode(message), route_keys(workspace_id, session_id))


def remote_update_publication(
    remote_env_id: str, workspace_id: str, status: str, public_ip: str | None = None
) -> Publication:
    _require_text("remote_env_id", remote_env_id)
    _require_text("workspace_id", workspace_id)
    _require_text("status", status)
    _require_text("public_ip", public_ip, optional=True)
    message = RemoteUpdate(remote_env_id, status, public_ip)
    return Publication(_encode(message), route_keys(workspace_id, None))


class Broadcaster:
    """In-process publishing API. The `broadcast_*` methods never block.

    Each builds and serialises the message in the caller, then queues it for the broadcast
    task. They raise `ValueError` for malformed arguments, `PublishQueueFull` when the
    publish queue is full (nothing is dropped silently), and `GatewayClosed` after shutdown
    began. `publish` is the awaiting form: it waits for room instead of raising.
    """

    def __init__(self, channel: trio.MemorySendChannel[Batch]) -> None:
        self._channel = channel

    def broadcast_event(self, event: Mapping[str, Any]) -> None:
        self.publish_nowait(event_publication(event))

    def broadcast_session_update(
        self,
        session_id: str,
        workspace_id: str,
        lifecycle: str,
        summary: str | None = None,
        stats: Mapping[str, Any] | None = None,
    ) -> None:
        self.publish_nowait(
            session_update_publication(session_id, workspace_id, lifecycle, summary, stats)
        )

    def broadcast_remote_update(
        self, remote_env_id: str, workspace_id: str, status: str, public_ip: str | None = None
    ) -> None:
        self.publish_nowait(
            remote_update_publication(remote_env_id, workspace_id, status, public_ip)
        )

    def publish_nowait(self, *publications: Publication) -> None:
        try:
            self._channel.send_nowait(publications)
        except trio.WouldBlock:
            raise PublishQueueFull("publish queue is full") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise GatewayClosed("gateway is shutting down") from None

    async def publish(self, *publications: Publication) -> None:
        """Queue publications as one batch (kept together, in order), waiting for room."""
        try:
            await self._channel.send(publications)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise GatewayClosed("gateway is shutting down") from None

    def close(self) -> None:
        """Refuse further publications; the broadcast task drains what is queued and ends."""
        self._channel.close()


async def run_broadcast(
    channel: trio.MemoryReceiveChannel[Batch],
    hub: Hub,
    round_size: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Fan out publications in arrival order until the publish channel is closed.

    Publications are handed to the hub in rounds of at most `round_size`: within a round each
    client gets one write for all of it (Hub.publish_many), and between rounds the writers
    get to run. Without that pause one large batch would be queued whole before any writer
    ran, and a client reading at full speed would look like a slow consumer.
    """
    async with channel:
        task_status.started()
        async for batch in channel:
            publications = list(batch)
            # Whatever else is already queued joins this round, up to its size.
            while len(publications) < round_size:
                try:
                    publications.extend(channel.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            for start in range(0, len(publications), round_size):
                if start:
                    await trio.lowlevel.checkpoint()
                hub.publish_many(
                    (publication.frame, publication.keys)
                    for publication in publications[start : start + round_size]
                )
