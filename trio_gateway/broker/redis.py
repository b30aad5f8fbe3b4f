"""The Redis broker: instances share Redis pub/sub, so N instances behave as one.

Owns two Redis connections' worth of state: a publisher pool and one dedicated subscriber
connection, the set of channels this instance needs, and the reconnect loop. Must not touch
clients: what arrives is handed to the hub through `deliver`.

Theory of operation
-------------------
Publishing: a round of publications goes out as one MULTI/EXEC, each publication PUBLISHed on
the channel of each of its keys (envelope.py). The transaction makes a round all or nothing,
and keeps the copies of one publication next to each other in every subscriber's stream, which
is what lets a receiver drop duplicates by remembering only the last id it delivered. Redis
orders everything it relays, so every instance sees every publisher's publications in the
order they were published.

Subscribing: the hub reports the first local subscriber of a key (`want`) and the last one
leaving (`unwant`). A reconcile task brings the subscriber connection's channels in line with
that set, so an instance receives only what its clients can match; `confirmed` lets a
subscribe ack wait until the channel is live, so a client never misses a message published
after its ack.

Faults: when the subscriber connection drops, the broker reports not ok (health 503, and
publishes are refused rather than pretend), then reconnects with jittered exponential backoff
and subscribes every channel still wanted. Clients stay connected throughout. Redis pub/sub
keeps no history: what is published while an instance is cut off never reaches it.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from ..jsonlog import fields
from ..protocol.frames import utf8_text_frame
from ..publication import Publication
from . import BrokerUnavailable, Deliver
from .envelope import channel, decode, encode

log = logging.getLogger("trio_gateway.broker.redis")

# Seconds to open a TCP connection to Redis, and to wait for any reply; a Redis that does not
# answer within these counts as down rather than hanging a publisher.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
# Reconnect backoff, in seconds: doubles from the first to the cap, each wait jittered down to
# half so that instances cut off together do not come back in lockstep.
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0
# The subscriber connection is idle when nobody publishes; a PING after this many idle seconds
# notices a Redis that vanished without closing the connection.
SUBSCRIBER_IDLE_PING = 5.0
# Publisher connections: publishing is one round at a time, the rest serve probes.
PUBLISHER_POOL_SIZE = 4

# What a dropped or unresponsive Redis surfaces as, through coredis and the anyio streams it
# reads from.
_ERRORS = (
    coredis.exceptions.RedisError,
    OSError,
    TimeoutError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


def _is_redis_failure(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_redis_failure(inner) for inner in exc.exceptions)
    return isinstance(exc, _ERRORS)


def _innermost(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@contextmanager
def _as_unavailable(what: str) -> Iterator[None]:
    """Turn a Redis failure (bare, or grouped by coredis's task groups) into BrokerUnavailable.

    When cancelled, what a torn-down connection raised on the way out (coredis unsubscribes on
    exit, on a socket that may be gone) is dropped and only the cancellation goes on.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        cancelled, rest = group.split(trio.Cancelled)
        if rest is not None and not _is_redis_failure(rest):
            raise
        if cancelled is not None:
            raise cancelled from None
        raise BrokerUnavailable(f"{what}: {_innermost(group)}") from None
    except _ERRORS as exc:
        raise BrokerUnavailable(f"{what}: {exc}") from None


def _backoff() -> Iterator[float]:
    for exponent in itertools.count():
        delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2**exponent)
        yield random.uniform(delay / 2, delay)


def redacted(url: str) -> str:
    """`url` without its password, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{host}"


def _client(url: str, pool_size: int) -> coredis.Redis[bytes]:
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        url,
        max_connections=pool_size,
        connect_timeout=CONNECT_TIMEOUT,
        stream_timeout=COMMAND_TIMEOUT,
        # Waiting for a pool connection is bounded like any command.
        pool_timeout=COMMAND_TIMEOUT,
        # Retrying is ours to decide: a publish must fail fast and visibly, and the subscriber
        # has its own reconnect loop.
        retry_policy=NoRetryPolicy(),
    )
    return client


class RedisBroker:
    kind = "redis"

    def __init__(self, url: str, prefix: str, instance_id: str, *, wait: bool = False) -> None:
        self._url = url
        self._prefix = prefix
        self._wait = wait
        self._ids = (f"{instance_id}:{n}" for n in itertools.count())
        self._publisher: coredis.Redis[bytes] | None = None
        self._publisher_broken = trio.Event()
        # Keys this instance needs, and those the subscriber connection has confirmed.
        self._wanted: set[str] = set()
        self._active: set[str] = set()
        self._changed = trio.Event()
        # Callbacks waiting for their key's channel to go live (`when_live`).
        self._waiting: dict[str, list[Callable[[], None]]] = {}
        self._connected = False
        self._last_id: str | None = None

    @property
    def ok(self) -> bool:
        return self._connected

    @property
    def channels(self) -> frozenset[str]:
        """The Redis channels the subscriber connection is subscribed to right now."""
        return frozenset(channel(self._prefix, key) for key in self._active)

    def want(self, key: str) -> None:
        self._wanted.add(key)
        self._changed.set()

    def unwant(self, key: str) -> None:
        self._wanted.discard(key)
        self._changed.set()
        self._went_live(key)

    def when_live(self, key: str, callback: Callable[[], None]) -> None:
        if key in self._active or not self._connected or key not in self._wanted:
            callback()
        else:
            self._waiting.setdefault(key, []).append(callback)

    def _went_live(self, key: str) -> None:
        for callback in self._waiting.pop(key, ()):
            callback()

    async def publish(self, publications: Sequence[Publication]) -> None:
        if self._publisher is None or not self._connected:
            raise BrokerUnavailable("Redis is unreachable")
        try:
            with _as_unavailable("publish to Redis failed"):
                async with self._publisher.pipeline(transaction=True) as pipe:
                    for publication in publications:
                        payload = encode(next(self._ids), publication.keys, publication.text)
                        for key in publication.keys:
                            pipe.publish(channel(self._prefix, key), payload)
        except BrokerUnavailable:
            self._publisher_broken.set()
            raise

    async def run(
        self, deliver: Deliver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        where = redacted(self._url)
        started = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._keep_publisher, where)
                await nursery.start(self._subscribe_forever, deliver, where)
                started = True
                task_status.started()
        except BaseExceptionGroup as group:
            # A startup failure reaches the caller plain, as documented.
            unavailable, _ = group.split(BrokerUnavailable)
            if started or unavailable is None:
                raise
            raise _innermost(unavailable) from None
        finally:
            self._publisher = None
            self._set_connected(False)

    async def _keep_publisher(
        self, where: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the publisher pool; replace it whenever a publish failed.

        A fresh pool rather than the old one because coredis 6.9 does not give a pool slot
        back when the connection in it broke while in use: after a few Redis outages the old
        pool would have no connection left to hand out.
        """
        first = True
        while True:
            try:
                async with _client(self._url, PUBLISHER_POOL_SIZE) as publisher:
                    if first:
                        await self._first_contact(publisher, where)
                    self._publisher = publisher
                    self._publisher_broken = trio.Event()
                    if first:
                        first = False
                        task_status.started()
                    await self._publisher_broken.wait()
                    self._publisher = None
            except BaseExceptionGroup as group:
                # coredis's task groups wrap what its connections raised.
                unavailable, rest = group.split(BrokerUnavailable)
                cancelled, rest = rest.split(trio.Cancelled) if rest else (None, None)
                if rest is not None and not _is_redis_failure(rest):
                    raise
                if cancelled is not None:
                    raise cancelled from None
                if first and unavailable is not None:
                    raise _innermost(unavailable) from None

    async def _first_contact(self, publisher: coredis.Redis[bytes], where: str) -> None:
        """A PING at startup: a clear error (or, when told to wait, retries), never a hang."""
        delays = _backoff()
        while True:
            try:
                with _as_unavailable(f"cannot reach Redis at {where}"):
                    await publisher.ping()
                return
            except BrokerUnavailable as exc:
                if not self._wait:
                    raise
                delay = next(delays)
                log.warning(
                    "waiting for Redis", extra=fields(error=str(exc), retry_in=round(delay, 3))
                )
                await trio.sleep(delay)

    async def _subscribe_forever(
        self,
        deliver: Deliver,
        where: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        delays = _backoff()
        started = False

        def connected() -> None:
            nonlocal delays, started
            self._set_connected(True)
            delays = _backoff()
            log.info("Redis subscriber connected", extra=fields(redis=where))
            if not started:
                started = True
                task_status.started()

        while True:
            try:
                with _as_unavailable("Redis subscriber connection lost"):
                    # A fresh one-connection pool each time, for the reason in _keep_publisher.
                    async with _client(self._url, 1) as subscriber:
                        await self._subscribe_once(subscriber, deliver, connected)
            except BrokerUnavailable as exc:
                self._set_connected(False)
                delay = next(delays)
                log.warning(
                    "Redis unavailable; reconnecting",
                    extra=fields(redis=where, error=str(exc), retry_in=round(delay, 3)),
                )
                await trio.sleep(delay)

    async def _subscribe_once(
        self, subscriber: coredis.Redis[bytes], deliver: Deliver, connected: Callable[[], None]
    ) -> None:
        pubsub = subscriber.pubsub(
            retry_policy=NoRetryPolicy(),
            subscription_timeout=COMMAND_TIMEOUT,
            max_idle_seconds=SUBSCRIBER_IDLE_PING,
        )
        async with pubsub, trio.open_nursery() as nursery:
            await nursery.start(self._reconcile, pubsub)
            connected()
            while True:
                message = await pubsub.get_message()
                if message is None:
                    continue
                if message["type"] == "message":
                    self._receive(message["data"], deliver)
                elif message["type"] == "subscribe":
                    # Seen in stream order: ahead of every message on that channel, so the
                    # subscribe acks this releases are queued before what they enable.
                    name = message["channel"]
                    if isinstance(name, bytes):
                        name = name.decode()
                    key = name.removeprefix(self._prefix)
                    self._active.add(key)
                    self._went_live(key)

    def _receive(self, data: Any, deliver: Deliver) -> None:
        try:
            envelope = decode(data)
        except ValueError as exc:
            log.warning(
                "ignoring a foreign message on a gateway channel", extra=fields(error=str(exc))
            )
            return
        # Copies of one publication arrive back to back (one per subscribed channel).
        if envelope.id == self._last_id:
            return
        self._last_id = envelope.id
        deliver(((utf8_text_frame(envelope.payload), envelope.keys),))

    async def _reconcile(
        self, pubsub: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the subscriber's channels equal to the wanted keys, for this connection."""
        requested: set[str] = set()
        started = False
        while True:
            self._changed = trio.Event()
            wanted = set(self._wanted)
            if added := wanted - requested:
                # The message loop marks each key live as Redis confirms it.
                await pubsub.subscribe(*(channel(self._prefix, key) for key in added))
                requested |= added
            if removed := requested - wanted:
                await pubsub.unsubscribe(*(channel(self._prefix, key) for key in removed))
                requested -= removed
                self._active -= removed
            if not started:
                started = True
                task_status.started()
            if self._wanted == requested:
                await self._changed.wait()

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        if not connected:
            self._active = set()
            # Nobody waits for a channel while Redis is away: the subscription takes effect
            # when the connection is back, and /api/health says it is not yet.
            for key in list(self._waiting):
                self._went_live(key)
