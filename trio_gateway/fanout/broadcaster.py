"""The publishing side: build a publication once, queue it, and the one publisher task.

Owns the publish channel between publishers (in-process callers, the HTTP API) and the broker.
Must not touch clients or the hub: `run_publisher` hands publications to the broker in arrival
order, one round at a time, and the broker brings them to every instance's hub. One task per
instance is what keeps a publisher's publications in the order they were made.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from ..broker import Broker, BrokerUnavailable, PublishOutcomeUnknown
from ..observability.jsonlog import fields
from ..protocol.codec import encode, encode_event
from ..protocol.messages import (
    RemoteUpdate,
    ServerMessage,
    SessionDeleted,
    SessionExpired,
    SessionState,
    SessionUpdate,
    TopicMessage,
    UserMessage,
)
from ..protocol.routing import (
    encodable,
    event_problem,
    id_problem,
    login_key,
    route_keys,
    session_key,
    user_key,
)
from ..protocol.topics import topic_problem
from .publication import EXPIRE, UNBIND, Assigned, Extra, Publication, Retain

log = logging.getLogger("trio_gateway.broadcaster")

__all__ = [
    "Assigned",
    "Batch",
    "Broadcaster",
    "BrokerUnavailable",
    "GatewayClosed",
    "Publication",
    "PublishOutcomeUnknown",
    "PublishQueueFull",
    "event_publication",
    "remote_update_publication",
    "run_publisher",
    "session_deleted_publication",
    "session_update_publication",
    "topic_publication",
    "user_message_publication",
]


class PublishQueueFull(Exception):
    """The publish queue is at capacity; nothing was queued. Retry later or use `publish`."""


class GatewayClosed(Exception):
    """The gateway is shutting down and accepts no more publications."""


@attrs.define(eq=False)
class Batch:
    """Publications queued together: they stay together and in order.

    An awaited publish carries `done`, set once the broker took the batch or refused it
    (`error`); a fire-and-forget one carries none.
    """

    publications: tuple[Publication, ...]
    done: trio.Event | None = None
    #: Who published it, for the metrics: "inprocess", "http" or "client".
    source: str = "inprocess"
    error: Exception | None = None
    #: Each publication's offsets (aligned with its keys) and whether it was a duplicate,
    #: once published.
    assigned: list[Assigned] = attrs.field(factory=list)


def _encode(message: ServerMessage | Mapping[str, Any]) -> str:
    """`message` as text, or an event's message (`encode_event`) if given an event."""
    try:
        return encode(message) if isinstance(message, ServerMessage) else encode_event(message)
    except (TypeError, ValueError):
        # Not the exception's text: it may quote the payload, and it reaches clients.
        raise ValueError("payload is not JSON-serialisable") from None
    except RecursionError:
        # Parsed JSON can nest deeper than the converter can walk (a client's publish).
        raise ValueError("payload is nested too deeply") from None


def _require_id(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    problem = id_problem(name, value)
    if problem is not None:
        raise ValueError(problem)


def _require_text(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    if not encodable(value):
        raise ValueError(f"{name} must be valid Unicode text")


def event_publication(event: Mapping[str, Any]) -> Publication:
    """An `event` message for `event`'s workspace and session.

    Raises:
        ValueError: the event is not an object with a non-empty string `workspace_id` and a
            string-or-null `session_id`, or it is not JSON-serialisable.
    """
    problem = event_problem(event)
    if problem is not None:
        raise ValueError(problem)
    text = _encode(event)
    return Publication(text, route_keys(event["workspace_id"], event.get("session_id")))


def session_update_publication(
    session_id: str,
    workspace_id: str,
    lifecycle: str,
    summary: str | None = None,
    stats: Mapping[str, Any] | None = None,
) -> Publication:
    _require_id("session_id", session_id)
    _require_id("workspace_id", workspace_id)
    _require_text("lifecycle", lifecycle)
    if summary is not None and not isinstance(summary, str):
        raise ValueError("summary must be a string")
    if stats is not None and not isinstance(stats, Mapping):
        raise ValueError("stats must be an object")
    copied = dict(stats) if stats is not None else None
    message = SessionUpdate(session_id, lifecycle, summary, copied)
    # Kept as the session's state for clients that subscribe or sync later.
    state = _encode(SessionState(session_id, lifecycle, summary, copied))
    return Publication(
        _encode(message),
        route_keys(workspace_id, session_id),
        retain=Retain(session_key(session_id), state),
    )


def session_deleted_publication(session_id: str, workspace_id: str) -> Publication:
    """A `session.deleted` message; it also clears the session's retained state and closes
    the connections bound to the session by the connect hook."""
    _require_id("session_id", session_id)
    _require_id("workspace_id", workspace_id)
    return Publication(
        _encode(SessionDeleted(session_id)),
        route_keys(workspace_id, session_id),
        retain=Retain(session_key(session_id), None),
        extra=Extra(control=UNBIND),
    )


def topic_publication(
    topic: str,
    data: Any,
    user_id: str | None = None,
    *,
    exclude_user_id: str | None = None,
    exclude_client_id: str | None = None,
) -> Publication:
    """A `message` on a generic topic; `data` is any JSON value; `user_id` names the
    publishing user (a client publish), stamped by the server.

    Raises:
        ValueError: `topic` is not a valid topic (a pattern is not), or `data` is not JSON.
    """
    if not isinstance(topic, str):
        raise ValueError("topic must be a string")
    problem = topic_problem(topic)
    if problem is not None:
        raise ValueError(problem)
    return Publication(
        _encode(TopicMessage(topic, data, user_id)),
        (topic,),
        topic=topic,
        extra=_exclusions(exclude_user_id, exclude_client_id),
    )


def _exclusions(user_id: str | None, client_id: str | None) -> Extra | None:
    _require_id("exclude_user_id", user_id, optional=True)
    _require_id("exclude_client_id", client_id, optional=True)
    if user_id is None and client_id is None:
        return None
    return Extra(exclude_user=user_id, exclude_client=client_id)


def user_message_publication(
    user_id: str, data: Any, exclude_client_id: str | None = None
) -> Publication:
    """A `user.message` for every connection of `user_id`, on every instance."""
    _require_id("user_id", user_id)
    return Publication(
        _encode(UserMessage(data)),
        (user_key(user_id),),
        extra=_exclusions(None, exclude_client_id),
    )


def expiry_publication(user_id: str) -> Publication:
    """Ends every session of `user_id` (session.expired, then close 4002), on every instance."""
    _require_id("user_id", user_id)
    return Publication(_encode(SessionExpired()), (user_key(user_id),), extra=Extra(control=EXPIRE))


def login_expiry_publication(session_id: str) -> Publication:
    """Ends every connection of the backend session `session_id` (the connect hook's), as
    `expiry_publication` does for a user."""
    _require_id("session_id", session_id)
    return Publication(
        _encode(SessionExpired()), (login_key(session_id),), extra=Extra(control=EXPIRE)
    )


def remote_update_publication(
    remote_env_id: str, workspace_id: str, status: str, public_ip: str | None = None
) -> Publication:
    _require_id("remote_env_id", remote_env_id)
    _require_id("workspace_id", workspace_id)
    _require_text("status", status)
    _require_text("public_ip", public_ip, optional=True)
    message = RemoteUpdate(remote_env_id, status, public_ip)
    return Publication(_encode(message), route_keys(workspace_id, None))


class Broadcaster:
    """In-process publishing API.

    The `broadcast_*` methods and `publish_nowait` never block: each builds and serialises
    the message in the caller, then queues it for the publisher task. They raise `ValueError`
    for malformed arguments, `PublishQueueFull` when the publish queue is full,
    `BrokerUnavailable` when the broker is known to be down, and `GatewayClosed` after
    shutdown began. They are fire-and-forget: if the broker fails while the publication is
    queued, it is dropped and logged.

    `publish` and `send` are the awaiting forms: they wait for room in the queue, then for the
    broker to take the publications, and return the offsets assigned; they raise
    `BrokerUnavailable` if the broker did not take them (`PublishOutcomeUnknown` when it may
    have: sent, not confirmed). A publication with an idempotency key already published within
    `idempotency_ttl` is not published again (`send_assigned` says which).
    """

    def __init__(
        self, channel: trio.MemorySendChannel[Batch], broker: Broker, source: str = "inprocess"
    ) -> None:
        self._channel = channel
        self._broker = broker
        self._source = source

    def tagged(self, source: str) -> Broadcaster:
        """This broadcaster for another kind of publisher: the same queue, with what it
        publishes counted under `source` (the HTTP API, clients)."""
        return Broadcaster(self._channel, self._broker, source)

    def broadcast_event(self, event: Mapping[str, Any]) -> None:
        self.send_nowait(event_publication(event))

    def broadcast_session_update(
        self,
        session_id: str,
        workspace_id: str,
        lifecycle: str,
        summary: str | None = None,
        stats: Mapping[str, Any] | None = None,
    ) -> None:
        self.send_nowait(
            session_update_publication(session_id, workspace_id, lifecycle, summary, stats)
        )

    def broadcast_session_deleted(self, session_id: str, workspace_id: str) -> None:
        self.send_nowait(session_deleted_publication(session_id, workspace_id))

    def broadcast_remote_update(
        self, remote_env_id: str, workspace_id: str, status: str, public_ip: str | None = None
    ) -> None:
        self.send_nowait(remote_update_publication(remote_env_id, workspace_id, status, public_ip))

    def publish_nowait(
        self,
        topic: str,
        data: Any,
        *,
        exclude_user_id: str | None = None,
        exclude_client_id: str | None = None,
    ) -> None:
        """Publish `data` on a generic topic, fire-and-forget."""
        self.send_nowait(
            topic_publication(
                topic, data, exclude_user_id=exclude_user_id, exclude_client_id=exclude_client_id
            )
        )

    async def publish(
        self,
        topic: str,
        data: Any,
        *,
        exclude_user_id: str | None = None,
        exclude_client_id: str | None = None,
    ) -> int:
        """Publish `data` on a generic topic; returns its offset once the broker took it.

        `exclude_user_id` / `exclude_client_id` leave out that user's connections / that one
        connection (e.g. the one whose action caused the message).
        """
        publication = topic_publication(
            topic, data, exclude_user_id=exclude_user_id, exclude_client_id=exclude_client_id
        )
        (offsets,) = await self.send(publication)
        return offsets[0]

    async def send_to_user(
        self, user_id: str, data: Any, *, exclude_client_id: str | None = None
    ) -> None:
        """Deliver `data` as `user.message` to every connection of `user_id`, everywhere."""
        await self.send(
            user_message_publication(user_id, data, exclude_client_id=exclude_client_id)
        )

    async def expire_sessions(self, user_id: str) -> None:
        """Close every connection of `user_id`, on every instance, with 4002."""
        await self.send(expiry_publication(user_id))

    async def expire_session(self, session_id: str) -> None:
        """Close every connection of the backend session `session_id` (the connect hook's
        `session_id`), on every instance, with 4002."""
        await self.send(login_expiry_publication(session_id))

    def send_nowait(self, *publications: Publication) -> None:
        """Queue publications as one batch (kept together, in order), fire-and-forget."""
        self._check_broker()
        try:
            self._channel.send_nowait(Batch(publications, source=self._source))
        except trio.WouldBlock:
            raise PublishQueueFull("publish queue is full") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise GatewayClosed("gateway is shutting down") from None

    async def send(self, *publications: Publication) -> list[tuple[int, ...]]:
        """Publish as one batch (kept together, in order); return once the broker took it.

        Returns:
            Each publication's offsets, aligned with its keys.
        Raises:
            PublishOutcomeUnknown: the broker did not confirm; it may have been published.
            BrokerUnavailable: the broker is down; nothing was published.
            GatewayClosed: shutdown began before the batch went out.
        """
        return [each.offsets for each in await self.send_assigned(*publications)]

    async def send_assigned(self, *publications: Publication) -> list[Assigned]:
        """`send`, saying for each publication whether its idempotency key made it a
        duplicate (not published again; the offsets are the first one's)."""
        self._check_broker()
        batch = Batch(publications, trio.Event(), source=self._source)
        try:
            await self._channel.send(batch)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise GatewayClosed("gateway is shutting down") from None
        assert batch.done is not None
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        return batch.assigned

    def close(self) -> None:
        """Refuse further publications; the publisher task drains what is queued and ends."""
        self._channel.close()

    def _check_broker(self) -> None:
        if not self._broker.ok:
            raise BrokerUnavailable(f"{self._broker.kind} broker is unavailable")


async def run_publisher(
    channel: trio.MemoryReceiveChannel[Batch],
    broker: Broker,
    round_size: int,
    *,
    published: Counter[str] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hand publications to the broker in arrival order until the publish channel is closed.

    Whatever is queued when a round starts joins it, up to `round_size` publications (more
    when one batch is larger: a batch is never split), so a burst of small publishes costs
    one broker call. A round the broker refuses fails every awaited batch in it with
    `BrokerUnavailable`; fire-and-forget ones in it are dropped and logged. Batches still
    queued when this task ends fail with `GatewayClosed`. `published` counts what the broker
    took, by each batch's source.
    """
    pending: list[Batch] = []
    counts: Counter[str] = Counter() if published is None else published
    try:
        task_status.started()
        async for first in channel:
            pending = [first]
            count = len(first.publications)
            while count < round_size:
                try:
                    batch = channel.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                pending.append(batch)
                count += len(batch.publications)
            await _publish_round(broker, pending, counts)
            pending = []
            # Writers and readers run between rounds.
            await trio.lowlevel.checkpoint()
    finally:
        leftover = pending + _drain(channel)
        channel.close()
        for batch in leftover:
            _finish(batch, GatewayClosed("gateway is shutting down"))


async def _publish_round(broker: Broker, batches: list[Batch], published: Counter[str]) -> None:
    publications = [publication for batch in batches for publication in batch.publications]
    try:
        offsets = await broker.publish(publications)
    except BrokerUnavailable as exc:
        dropped = sum(len(batch.publications) for batch in batches if batch.done is None)
        if dropped:
            log.error(
                "broker unavailable; dropped fire-and-forget publications",
                extra=fields(dropped=dropped, error=str(exc)),
            )
        for batch in batches:
            _finish(batch, exc)
    else:
        start = 0
        for batch in batches:
            batch.assigned = offsets[start : start + len(batch.publications)]
            start += len(batch.publications)
            published[batch.source] += len(batch.publications)
            _finish(batch, None)


def _finish(batch: Batch, error: Exception | None) -> None:
    if batch.done is not None and not batch.done.is_set():
        batch.error = error
        batch.done.set()


def _drain(channel: trio.MemoryReceiveChannel[Batch]) -> list[Batch]:
    drained = []
    while True:
        try:
            drained.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return drained
