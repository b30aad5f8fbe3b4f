"""The Redis broker: instances share Redis pub/sub, so N instances behave as one.

Owns a publisher pool and one dedicated subscriber connection, the set of channels and globs
this instance needs, and the reconnect loop. Must not touch clients: what arrives is handed to
the hub through `deliver`.

Theory of operation
-------------------
Publishing: a round of publications goes out as one Lua script (scripts.PUBLISH) that assigns
each publication its offset on every key, stores it in each key's history, retains or clears
session state, and PUBLISHes it on the channel of each key (envelope.py). The script is atomic:
a round is all or nothing, offsets are in publication order everywhere, and the copies of one
publication sit next to each other in every subscriber's stream, which is what lets a
receiver drop duplicates by remembering only the last id it delivered.

Subscribing: the hub reports the first local interest in a key (`want`) and the last one
leaving (`unwant`). A reconcile task brings the subscriber connection's channels (and, for
wildcard patterns, PSUBSCRIBE globs) in line with that set, so an instance receives only what
its clients can match; it sends only the difference for the keys that changed, so a change
costs the same however many keys are held. Redis confirms each subscription in the same
stream as the messages, so `when_live` callbacks run before the first message the
subscription brings.

Resuming: `fetch` runs scripts.FETCH, one atomic read of a key's epoch, offset, the history
after a client's offset, and the retained state. The caller has made the key live first, so
whatever is published after the fetch arrives live: nothing falls between the two. Nor is
anything doubled: the reply comes on a publisher connection, which may be read before the
subscriber connection has handed over messages the fetch already counts. So the script also
publishes a marker on this instance's own channel, and `fetch` returns only once the
subscriber has come to it, that is, once everything published before the read has reached
the hub (where the caller's recovery keeps it aside and drops what the replay holds).

Faults: when the subscriber connection drops, or a PING sent every second is not answered
in time (a hung Redis closes nothing), the broker reports not ok
(health 503, and publishes are refused rather than pretend), renews its publisher pool, then
reconnects with jittered exponential backoff and subscribes every channel still wanted. Clients stay
connected throughout. What is published while an instance is cut off does not reach its
clients live; a client that resumes gets it from history.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from ..common.backoff import backoff_delays
from ..common.groups import first_leaf
from ..fanout.publication import Assigned, Delivery, Extra, OffsetFrame, Position, Publication
from ..observability.jsonlog import fields
from ..protocol.messages import Since
from ..protocol.routing import is_pattern_key
from ..protocol.topics import redis_globs
from ..runtime.config import Config, redact_url
from . import BrokerUnavailable, Deliver, PublishOutcomeUnknown, history_window, scripts
from .envelope import channel, decode, log_name
from .epochs import EpochWatch
from .memory import LOG_IDLE_LIMIT, new_epoch

log = logging.getLogger("trio_gateway.broker.redis")

NO_EXTRA = Extra()

# Seconds to open a TCP connection to Redis, and to wait for any reply; a Redis that does not
# answer within these counts as down rather than hanging a publisher.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
# Reconnect backoff, in seconds: doubles from the first to the cap, each wait jittered down to
# half so that instances cut off together do not come back in lockstep.
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0
# A Redis that hangs (stopped, swapping, partitioned) closes nothing. Every LIVENESS_PERIOD
# seconds a PING goes out on a connection of its own and must be answered within
# LIVENESS_TIMEOUT, so a hung Redis is noticed within their sum (4 s; OPERATIONS.md promises
# 5) and not after coredis's idle PING plus its reply timeout (10 s).
LIVENESS_PERIOD = 1.0
LIVENESS_TIMEOUT = 3.0
# coredis's own idle PING on the subscriber connection, which may sit silent when nobody
# publishes; what it would notice, the probes notice first.
SUBSCRIBER_IDLE_PING = LIVENESS_PERIOD + LIVENESS_TIMEOUT
# Seconds between renewals of the logs of held keys (their TTL is at least a day).
LOG_RENEW_PERIOD = 3600.0
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
    # BrokerUnavailable: the liveness probe's verdict, raised beside coredis's tasks.
    return isinstance(exc, (*_ERRORS, BrokerUnavailable))


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
        raise BrokerUnavailable(f"{what}: {first_leaf(group)}") from None
    except _ERRORS as exc:
        raise BrokerUnavailable(f"{what}: {exc}") from None


def _backoff() -> Iterator[float]:
    return backoff_delays(initial=BACKOFF_FIRST, maximum=BACKOFF_CAP, jitter=0.5)


def _already_received(pubsub: Any, limit: int) -> list[Any]:
    """Messages the subscriber has already read off the socket, without waiting.

    coredis has no public non-blocking read; its parsed messages wait in this anyio stream
    (coredis 6.x, pinned below 7 in pyproject.toml).
    """
    received: list[Any] = []
    stream = pubsub._receive_stream
    while len(received) < limit:
        try:
            received.append(stream.receive_nowait())
        except anyio.WouldBlock:
            break
    return received


def _named(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# How coredis 6.x words the failures that come before a command is written: only these say
# for certain that nothing reached Redis. Any other failure of a publish (a timeout, a
# connection lost while sending or waiting) leaves its outcome unknown.
_UNSENT = ("Unable to establish a connection", "Connection not usable")


def _unsent(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_unsent(inner) for inner in exc.exceptions)
    return isinstance(exc, coredis.exceptions.ConnectionError) and str(exc).startswith(_UNSENT)


def _assigned(reply: Any, count: int) -> list[Assigned]:
    if (
        not isinstance(reply, list)
        or len(reply) != count
        or not all(
            isinstance(entry, list) and entry and all(isinstance(n, int) for n in entry)
            for entry in reply
        )
    ):
        # The script ran (or Redis answered something else): what was published is unknown.
        raise PublishOutcomeUnknown(f"unexpected reply from the publish script: {reply!r:.100}")
    return [Assigned(tuple(entry[1:]), duplicate=entry[0] == 1) for entry in reply]


def _fetch_reply(reply: Any) -> tuple[bytes, int, int, list[bytes], bytes | None]:
    if (
        not isinstance(reply, list)
        or len(reply) != 5
        or not isinstance(reply[0], bytes)
        or not isinstance(reply[1], int)
        or not isinstance(reply[2], int)
        or not isinstance(reply[3], list)
    ):
        raise BrokerUnavailable(f"unexpected reply from the fetch script: {reply!r:.100}")
    epoch, offset, now_ms, entries, state = reply
    return epoch, offset, now_ms, entries, state if isinstance(state, bytes) else None


def _no_gaps(key: str, epoch: str | None, offset: int | None) -> None:
    pass


def _moved(last: tuple[str | None, int], epoch: str | None, offset: int) -> bool:
    """Whether (epoch, offset) is past `last`: a later offset, or another known epoch."""
    last_epoch, last_offset = last
    if epoch is not None and last_epoch is not None and epoch != last_epoch:
        return True
    return offset > last_offset


# Keys per POSITIONS script call: a bounded script run, however many keys are held.
POSITIONS_CHUNK = 1000


def _client(url: str, pool_size: int, name: str | None = None) -> coredis.Redis[bytes]:
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        url,
        max_connections=pool_size,
        # CLIENT LIST shows which instance a subscriber connection belongs to.
        client_name=name,
        connect_timeout=CONNECT_TIMEOUT,
        stream_timeout=COMMAND_TIMEOUT,
        # Waiting for a pool connection is bounded like any command.
        pool_timeout=COMMAND_TIMEOUT,
        # Retrying is ours to decide: a publish must fail fast and visibly, and the subscriber
        # has its own reconnect loop.
        retry_policy=NoRetryPolicy(),
    )
    return client


class _Needs:
    """Which held keys need each Redis channel (or glob), and what to send to match.

    Several pattern keys can share a glob, so a name goes only when its last key does.
    """

    def __init__(self) -> None:
        self.keys: dict[str, set[str]] = {}
        self._sent: set[str] = set()
        self._touched: set[str] = set()

    def update(self, key: str, names: Sequence[str], *, wanted: bool) -> None:
        self._touched.update(names)
        for name in names:
            if wanted:
                self.keys.setdefault(name, set()).add(key)
            elif (keys := self.keys.get(name)) is not None:
                keys.discard(key)
                if not keys:
                    del self.keys[name]

    def changes(self) -> tuple[list[str], list[str]]:
        """The names to subscribe and to unsubscribe since the last call; now counted sent."""
        added = [name for name in self._touched if name in self.keys and name not in self._sent]
        removed = [name for name in self._touched if name not in self.keys and name in self._sent]
        self._touched = set()
        self._sent.update(added)
        self._sent.difference_update(removed)
        return added, removed


class RedisBroker:
    kind = "redis"

    def __init__(self, config: Config, instance_id: str) -> None:
        assert config.redis_url is not None
        self._url = config.redis_url
        self._prefix = config.redis_prefix
        self._wait = config.redis_wait
        self._history_size = config.history_size
        self._history_ttl_ms = round(config.history_ttl * 1000)
        self._log_ttl = max(round(LOG_IDLE_LIMIT), math.ceil(config.history_ttl))
        self._state_ttl_ms = round(config.state_ttl * 1000)
        self._idempotency_ttl_ms = round(config.idempotency_ttl * 1000)
        # Most messages handed to the hub in one round, as in the memory broker: writers run
        # between rounds, and two rounds must fit in a client's queue.
        self._round_size = max(1, config.queue_depth // 4)
        self._round_ids = (f"{instance_id}:{n}" for n in itertools.count())
        # This instance's own channel, for `fetch` markers; "instance:" is no client key, but
        # a glob for a pattern such as "**" matches every instance's marker channel.
        self._marker_channels = channel(self._prefix, "instance:")
        self._marker_channel = self._marker_channels + instance_id
        self._marker_ids = (f"{instance_id}:{n}" for n in itertools.count())
        self._markers: dict[str, trio.Event] = {}
        self._publisher: coredis.Redis[bytes] | None = None
        self._publisher_broken = trio.Event()
        # Keys (and patterns) this instance needs, and the channels and globs the subscriber
        # connection has confirmed.
        self._wanted: set[str] = set()
        self._active: set[str] = set()
        self._changed = trio.Event()
        # Keys wanted or unwanted since the reconcile task last looked.
        self._dirty: set[str] = set()
        # The current subscriber connection's channels and globs, with the keys needing each.
        self._channel_needs = _Needs()
        self._glob_needs = _Needs()
        # Callbacks waiting for their key to go live (`when_live`).
        self._waiting: dict[str, list[Callable[[], None]]] = {}
        self._connected = False
        # Set while connected; a fresh one after each drop.
        self._up = trio.Event()
        # A subscriber connection was up before: the next one follows a drop.
        self._was_connected = False
        self.reconnects = 0
        self._last_id: str | None = None
        self._subscriber_name = f"{self._prefix}subscriber:{instance_id}"
        self._probe_name = f"{self._prefix}probe:{instance_id}"
        # Held keys -> the epoch (None while unknown) and the highest offset in it this
        # instance has delivered or read for them, to tell after a reconnect what was
        # published while the subscriber was cut off.
        self._last_offsets: dict[str, tuple[str | None, int]] = {}
        #: Told (key, epoch, offset) when publications on a held key up to `offset` may not
        #: have reached this instance's clients live (the server points it at Hub.gap).
        self.gaps: Callable[[str, str | None, int | None], None] = _no_gaps
        # Channels of other features on the subscriber connection (`listen`), by name.
        self._raw: dict[str, tuple[Callable[[bytes], None], Callable[[], None]]] = {}
        self._epochs = EpochWatch()
        self._deliver: Deliver | None = None

    @property
    def ok(self) -> bool:
        return self._connected

    @property
    def channels(self) -> frozenset[str]:
        """The Redis channels and globs the subscriber connection is subscribed to now."""
        return frozenset(self._active)

    def _subscriptions(self, key: str) -> tuple[str, ...]:
        """The channel, or for a pattern the globs, that bring `key`'s messages here."""
        if is_pattern_key(key):
            return redis_globs(self._prefix, key)
        return (channel(self._prefix, key),)

    def _is_live(self, key: str) -> bool:
        return all(name in self._active for name in self._subscriptions(key))

    def want(self, key: str) -> None:
        self._wanted.add(key)
        self._dirty.add(key)
        self._changed.set()

    def unwant(self, key: str) -> None:
        self._wanted.discard(key)
        self._last_offsets.pop(key, None)
        self._dirty.add(key)
        self._epochs.forget(key)
        self._changed.set()
        self._release(key)

    def when_live(self, key: str, callback: Callable[[], None]) -> None:
        if not self._connected or key not in self._wanted or self._is_live(key):
            callback()
        else:
            self._waiting.setdefault(key, []).append(callback)

    def _release(self, key: str) -> None:
        for callback in self._waiting.pop(key, ()):
            callback()

    def _confirmed(self, name: str, *, glob: bool) -> None:
        """Redis confirmed a channel or glob: release the keys it completes."""
        self._active.add(name)
        needs = self._glob_needs if glob else self._channel_needs
        for key in [key for key in needs.keys.get(name, ()) if key in self._waiting]:
            if self._is_live(key):
                self._release(key)

    async def publish(self, publications: Sequence[Publication]) -> list[Assigned]:
        publisher = self._usable_publisher()
        args: list[str | int] = [
            self._prefix,
            self._history_size,
            self._history_ttl_ms,
            self._log_ttl,
            self._state_ttl_ms,
            new_epoch(),
            next(self._round_ids),
            len(publications),
            self._idempotency_ttl_ms,
        ]
        for publication in publications:
            retain = publication.retain
            args += [publication.idempotency_key or "", len(publication.keys), *publication.keys]
            args.append(publication.topic or "")
            if retain is None:
                args += ["", "", ""]
            elif retain.state is None:
                args += ["del", retain.key, ""]
            else:
                args += ["set", retain.key, retain.state]
            extra = publication.extra or NO_EXTRA
            args += [extra.control or "", extra.exclude_user or "", extra.exclude_client or ""]
            args.append(publication.body)
        try:
            with _as_unavailable("publish to Redis failed"):
                try:
                    reply = await publisher.eval(scripts.PUBLISH, args=args)
                except BaseException as exc:
                    if _is_redis_failure(exc) and not _unsent(exc):
                        leaf = first_leaf(exc) if isinstance(exc, BaseExceptionGroup) else exc
                        raise PublishOutcomeUnknown(
                            f"publish to Redis not confirmed: {leaf}"
                        ) from None
                    raise
        except BrokerUnavailable:
            self._publisher_broken.set()
            raise
        return _assigned(reply, len(publications))

    async def fetch(self, key: str, since: Since | None, *, state: bool) -> Position:
        publisher = self._usable_publisher()
        args = [
            self._prefix,
            key,
            "" if since is None else since.offset,
            "" if since is None else since.epoch,
            new_epoch(),
            self._log_ttl,
            "1" if state else "",
            self._marker_channel,
            marker := next(self._marker_ids),
        ]
        arrived = self._markers[marker] = trio.Event()
        try:
            with _as_unavailable("history fetch from Redis failed"):
                reply = await publisher.eval(scripts.FETCH, args=args)
            with trio.move_on_after(COMMAND_TIMEOUT):
                await arrived.wait()
        except BrokerUnavailable:
            self._publisher_broken.set()
            raise
        finally:
            del self._markers[marker]
        if not arrived.is_set():
            raise BrokerUnavailable("the Redis subscriber did not catch up with a history fetch")
        epoch_raw, offset, now_ms, raw_entries, retained = _fetch_reply(reply)
        epoch = epoch_raw.decode()
        if (changed := self._epochs.learned(key, epoch)) is not None and self._deliver:
            # Found here before any message of the new epoch reached this instance: the
            # clients still counting the old one hear of it now.
            await self._deliver([changed])
        recovered = None
        replay: tuple[OffsetFrame, ...] = ()
        if since is not None:
            entries = []
            for raw in raw_entries:
                envelope = decode(raw)
                frame = envelope.delivery().complete
                entries.append((envelope.offset_of(key), float(envelope.time_ms), frame))
            horizon = float(now_ms - self._history_ttl_ms)
            window = history_window(since, epoch, offset, entries, horizon)
            recovered = window is not None
            replay = window or ()
        return Position(
            epoch, offset, recovered, replay, retained.decode() if retained is not None else None
        )

    async def state(self, key: str) -> str | None:
        publisher = self._usable_publisher()
        try:
            with _as_unavailable("state fetch from Redis failed"):
                retained = await publisher.eval(scripts.STATE, args=[self._prefix, key])
        except BrokerUnavailable:
            self._publisher_broken.set()
            raise
        return retained.decode() if isinstance(retained, bytes) else None

    def listen(
        self, name: str, on_message: Callable[[bytes], None], on_connected: Callable[[], None]
    ) -> None:
        """Hand what arrives on channel `<prefix><name>` to `on_message`, and call
        `on_connected` each time Redis confirms that channel on a (new) subscriber connection,
        so a feature can re-read what it may have missed while cut off.

        For another feature's own traffic (presence); call before `run`. `name` must hold a
        ':' so that no subscription key's channel can be the same. Both callbacks run in the
        subscriber task and must not block.
        """
        assert ":" in name
        self._raw[channel(self._prefix, name)] = (on_message, on_connected)

    async def run_script(self, script: str, args: Sequence[str | int]) -> Any:
        """Run a Lua script on a publisher connection (for other features' data).

        Raises:
            BrokerUnavailable: Redis is unreachable or failed.
        """
        publisher = self._usable_publisher()
        try:
            with _as_unavailable("Redis script failed"):
                return await publisher.eval(script, args=list(args))
        except BrokerUnavailable:
            self._publisher_broken.set()
            raise

    def _usable_publisher(self) -> coredis.Redis[bytes]:
        if self._publisher is None or not self._connected:
            raise BrokerUnavailable("Redis is unreachable")
        return self._publisher

    async def run(
        self, deliver: Deliver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        where = redact_url(self._url)
        self._deliver = deliver
        started = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._keep_publisher, where)
                await nursery.start(self._subscribe_forever, deliver, where)
                nursery.start_soon(self._keep_held_logs)
                started = True
                task_status.started()
        except BaseExceptionGroup as group:
            # A startup failure reaches the caller plain, as documented.
            unavailable, _ = group.split(BrokerUnavailable)
            if started or unavailable is None:
                raise
            raise first_leaf(unavailable) from None
        finally:
            self._publisher = None
            self._set_connected(False)

    async def _keep_held_logs(self) -> None:
        """Renew the logs of keys local clients hold, however quiet, on a fixed period.

        A log that expired would come back with a new epoch and offsets from 1 under a client
        still tracking the old ones.
        """
        while True:
            await trio.sleep(LOG_RENEW_PERIOD)
            held = [key for key in self._wanted if not is_pattern_key(key)]
            if not held or self._publisher is None or not self._connected:
                continue
            try:
                with _as_unavailable("renewing history logs failed"):
                    async with self._publisher.pipeline(transaction=False) as pipe:
                        for key in held:
                            pipe.expire(log_name(self._prefix, key), self._log_ttl)
            except BrokerUnavailable as exc:
                log.warning("could not renew history logs", extra=fields(error=str(exc)))

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
                    raise first_leaf(unavailable) from None

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
            if started:
                self.reconnects += 1
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
                    async with _client(self._url, 1, self._subscriber_name) as subscriber:
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
        markers, own_markers = self._marker_channels, self._marker_channel
        async with pubsub, trio.open_nursery() as nursery:
            await pubsub.subscribe(own_markers, *self._raw)
            # After a drop, what was published meanwhile is found by comparing offsets.
            await nursery.start(self._reconcile, pubsub, nursery, self._was_connected)
            connected()
            nursery.start_soon(self._watch_liveness)
            while True:
                first = await pubsub.get_message()
                # Everything already received joins this round: the hub then writes each
                # client once for all of it instead of once per message, which is what lets
                # an instance keep up with a burst (as the memory broker's rounds do).
                round_: list[Delivery] = []
                for message in (first, *_already_received(pubsub, self._round_size - 1)):
                    if message is None:
                        continue
                    kind = message["type"]
                    if kind in ("message", "pmessage"):
                        name = _named(message["channel"])
                        if (raw := self._raw.get(name)) is not None:
                            # A glob ("**") brings a second copy as a pmessage: skipped.
                            if kind == "message":
                                raw[0](message["data"])
                        elif not name.startswith(markers):
                            self._receive(message["data"], round_)
                        elif name == own_markers:
                            # A fetch waits for this: what came before must reach the hub
                            # first.
                            if round_:
                                await deliver(round_)
                                round_ = []
                            marker = _named(message["data"])
                            if (arrived := self._markers.get(marker)) is not None:
                                arrived.set()
                    elif kind in ("subscribe", "psubscribe"):
                        # In stream order: what came before is delivered first, and the acks
                        # this releases are queued before anything the channel brings.
                        if round_:
                            await deliver(round_)
                            round_ = []
                        name = message["pattern"] if kind == "psubscribe" else message["channel"]
                        self._confirmed(_named(name), glob=kind == "psubscribe")
                        if kind == "subscribe" and (raw := self._raw.get(_named(name))):
                            # From here on nothing on that channel is missed.
                            raw[1]()
                if round_:
                    await deliver(round_)

    async def _check_positions(self, keys: list[str], compare: bool) -> None:
        """Read where `keys` stand once they are live; with `compare`, report the keys that
        moved past what this instance delivered (published while it was cut off).

        Without `compare` the read is the starting point a later comparison needs. Patterns
        have no offsets: after a drop their subscribers are told unconditionally.
        """
        await self._up.wait()
        await self._until_live(keys)
        if compare:
            for key in keys:
                if is_pattern_key(key) and key in self._wanted:
                    self.gaps(key, None, None)
        held = [key for key in keys if not is_pattern_key(key)]
        for start in range(0, len(held), POSITIONS_CHUNK):
            chunk = held[start : start + POSITIONS_CHUNK]
            try:
                positions = await self._positions(chunk)
            except BrokerUnavailable as exc:
                # The connection is going down; the next one compares again.
                log.warning("could not read key positions", extra=fields(error=str(exc)))
                return
            for key, (epoch, offset) in zip(chunk, positions, strict=True):
                if key not in self._wanted:
                    continue
                last = self._last_offsets.get(key)
                # Past what was delivered, in the same epoch or (Redis restarted meanwhile,
                # and published on the key since) in a new one.
                if compare and last is not None and _moved(last, epoch, offset) and offset > 0:
                    self.gaps(key, epoch, offset)
                if last is None or _moved(last, epoch, offset):
                    self._last_offsets[key] = (epoch, offset)

    async def _until_live(self, keys: Sequence[str]) -> None:
        pending = len(keys)
        live = trio.Event()

        def one_live() -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                live.set()

        for key in keys:
            self.when_live(key, one_live)
        await live.wait()

    async def _positions(self, keys: list[str]) -> list[tuple[str | None, int]]:
        """Each key's (epoch, offset), once everything published before the read has been
        handed to the hub (the marker, as in `fetch`).

        Raises:
            BrokerUnavailable: Redis did not answer, or the subscriber did not catch up.
        """
        publisher = self._usable_publisher()
        marker = next(self._marker_ids)
        arrived = self._markers[marker] = trio.Event()
        try:
            with _as_unavailable("reading key positions failed"):
                reply = await publisher.eval(
                    scripts.POSITIONS, args=[self._prefix, self._marker_channel, marker, *keys]
                )
            with trio.move_on_after(COMMAND_TIMEOUT):
                await arrived.wait()
        finally:
            del self._markers[marker]
        if not arrived.is_set():
            raise BrokerUnavailable("the Redis subscriber did not catch up with a position read")
        if not isinstance(reply, list) or len(reply) != len(keys):
            raise BrokerUnavailable(f"unexpected reply from the positions script: {reply!r:.100}")
        return [
            (epoch.decode() if isinstance(epoch, bytes) else None, offset)
            for epoch, offset in reply
        ]

    async def _watch_liveness(self) -> None:
        """Fail the subscriber connection once Redis does not answer a PING in time.

        On a connection of its own: the subscriber legitimately stops reading while this
        instance's clients are behind (backpressure), and the publisher pool may be queued
        up with thousands of history fetches (clients resuming at once); neither lag is
        Redis's.

        Raises:
            BrokerUnavailable: Redis did not answer within LIVENESS_TIMEOUT, or failed.
        """
        with _as_unavailable("Redis liveness probe failed"):
            async with _client(self._url, 1, self._probe_name) as probe:
                while True:
                    await trio.sleep(LIVENESS_PERIOD)
                    with trio.move_on_after(LIVENESS_TIMEOUT) as waited:
                        await probe.ping()
                    if waited.cancelled_caught:
                        raise BrokerUnavailable(
                            f"Redis did not answer within {LIVENESS_TIMEOUT:g} s"
                        )

    def _receive(self, data: Any, round_: list[Delivery]) -> None:
        try:
            envelope = decode(data)
        except ValueError as exc:
            log.warning(
                "ignoring a foreign message on a gateway channel", extra=fields(error=str(exc))
            )
            return
        # Copies of one publication arrive back to back (one per subscribed channel or glob).
        if envelope.id == self._last_id:
            return
        self._last_id = envelope.id
        last = self._last_offsets
        epochs = envelope.epochs or (None,) * len(envelope.keys)
        for key, offset, epoch in zip(envelope.keys, envelope.offsets, epochs, strict=True):
            if key in self._wanted and (
                (known := last.get(key)) is None or _moved(known, epoch, offset)
            ):
                last[key] = (epoch, offset)
        if envelope.epochs:
            round_.extend(self._epochs.seen(envelope.keys, envelope.epochs))
        round_.append(envelope.delivery())

    async def _reconcile(
        self,
        pubsub: Any,
        nursery: trio.Nursery,
        resumed: bool,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep this connection's channels and globs equal to what the wanted keys need.

        Incremental: each round looks only at the keys whose interest changed since the last
        one and sends SUBSCRIBE/UNSUBSCRIBE for the difference, so one more subscription costs
        the same whether the instance holds ten keys or fifty thousand. A fresh connection
        starts with every wanted key changed.
        """
        channels, globs = self._channel_needs, self._glob_needs = _Needs(), _Needs()
        held: set[str] = set()
        self._dirty = set(self._wanted)
        started = False
        while True:
            self._changed = trio.Event()
            dirty, self._dirty = self._dirty, set()
            joined: list[str] = []
            for key in dirty:
                wanted = key in self._wanted
                if wanted == (key in held):
                    continue
                if wanted:
                    held.add(key)
                    joined.append(key)
                else:
                    held.discard(key)
                needs = globs if is_pattern_key(key) else channels
                needs.update(key, self._subscriptions(key), wanted=wanted)
            added_channels, removed_channels = channels.changes()
            added_globs, removed_globs = globs.changes()
            # The message loop marks each name live as Redis confirms it.
            if added_channels:
                await pubsub.subscribe(*added_channels)
            if added_globs:
                await pubsub.psubscribe(*added_globs)
            # Not live from the moment the unsubscribe is sent: a key wanted again meanwhile
            # must wait for the next subscribe's confirmation, not be acked on a channel that
            # is about to go.
            self._active.difference_update(removed_channels, removed_globs)
            if removed_channels:
                await pubsub.unsubscribe(*removed_channels)
            if removed_globs:
                await pubsub.punsubscribe(*removed_globs)
            if joined:
                # Only the first round of a connection after a drop holds keys that were
                # held while it was down.
                nursery.start_soon(self._check_positions, joined, resumed and not started)
            if not started:
                started = True
                task_status.started()
            if not self._changed.is_set():
                await self._changed.wait()

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        if connected:
            self._was_connected = True
            self._up.set()
        else:
            if self._up.is_set():
                self._up = trio.Event()
            # The publisher's pooled connections went down with Redis too: start afresh.
            self._publisher_broken.set()
            self._active = set()
            # Nobody waits for a channel while Redis is away: the subscription takes effect
            # when the connection is back, and /api/health says it is not yet.
            for key in list(self._waiting):
                self._release(key)
