"""Presence in Redis, shared by every instance, with no ghosts when an instance dies.

Owns turning the store seam's calls into the scripts of redis_scripts.py (run on the
broker's publisher connections) and what arrives on the presence channel (on the broker's
subscriber connection) into `Listener` calls; and the instance's lease: renewed every
`presence_ttl / 3`, shares of an instance whose lease ran out are swept by whichever instance
gets there first, in one script, so each change is announced once. Must not keep presence
state of its own (tracker.py does); the broker owns the connections.

Faults: while Redis is away the calls raise BrokerUnavailable (the tracker retries writes and
keeps what its observers were told, so an outage makes nobody leave). Once the subscriber is
back, or a renewal finds the lease gone (Redis lost its data, or this instance was cut off
longer than the TTL and swept), the listener resyncs: it writes every share again at once and
re-reads what it observes once every live instance has reconnected and renewed (and so
written its own shares again): the longer of `presence_ttl / 3` and the reconnect backoff's
cap.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import trio

from ..broker import BrokerUnavailable
from ..broker.redis import BACKOFF_CAP, RedisBroker
from ..observability.jsonlog import fields
from ..protocol.jsontext import dumps
from ..protocol.presence import Member, Share, member
from ..runtime.config import Config
from . import redis_scripts as scripts
from .store import Listener, Write

log = logging.getLogger("trio_gateway.presence.redis")

BUS = "presence:bus"
# Most share writes in one script, so a burst does not hold Redis for long in one go.
WRITES_PER_SCRIPT = 1000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _shares(raw: Any) -> list[Share]:
    """Every instance's share of a user, from the JSON a script keeps; [] when unreadable."""
    if not raw:
        return []
    try:
        parsed = json.loads(raw)
        shares = []
        for connections, info in parsed.values():
            decoded = json.loads(info)
            shares.append(Share(int(connections), decoded if isinstance(decoded, dict) else {}))
        return shares
    except (ValueError, TypeError, AttributeError):
        log.warning("ignoring an unreadable presence entry")
        return []


def _entry(user_id: str, raw: Any, status: Any) -> Member | None:
    return member(user_id, _shares(raw), _text(status) or None)


class RedisStore:
    def __init__(self, config: Config, broker: RedisBroker, instance: str) -> None:
        self._broker = broker
        self._prefix = config.redis_prefix
        self._instance = instance
        self._lease_ms = round(config.presence_ttl * 1000)
        self._grace_ms = round(config.presence_grace * 1000)
        self._period = config.presence_ttl / 3
        # How long after coming back before observers re-read: every live instance has
        # reconnected (its backoff is at most BACKOFF_CAP) and renewed by then.
        self._settle = max(self._period, BACKOFF_CAP)
        self._listener: Listener | None = None
        broker.listen(BUS, self._heard, self._reconnected)

    async def _run(self, script: str, *args: str | int) -> Any:
        return await self._broker.run_script(script, [self._prefix, *args])

    async def put(self, writes: Sequence[Write]) -> None:
        for start in range(0, len(writes), WRITES_PER_SCRIPT):
            args: list[str | int] = [self._instance, self._lease_ms, 0]
            chunk = writes[start : start + WRITES_PER_SCRIPT]
            args[2] = len(chunk)
            for topic, user_id, share in chunk:
                if share is None:
                    args += [topic, user_id, "", ""]
                else:
                    args += [topic, user_id, share.connections, dumps(dict(share.info))]
            await self._run(scripts.PUT, *args)

    async def set_status(self, user_id: str, status: str) -> None:
        await self._run(scripts.STATUS, user_id, status, self._lease_ms)

    async def members(self, topic: str) -> dict[str, Member]:
        flat = await self._run(scripts.MEMBERS, topic)
        entries = {}
        for at in range(0, len(flat), 3):
            user_id = _text(flat[at])
            entry = _entry(user_id, flat[at + 1], flat[at + 2])
            if entry is not None:
                entries[user_id] = entry
        return entries

    async def read(self, topic: str, users: Sequence[str]) -> dict[str, Member | None]:
        if not users:
            return {}
        flat = await self._run(scripts.READ, topic, *users)
        return {
            user_id: _entry(user_id, flat[2 * n], flat[2 * n + 1])
            for n, user_id in enumerate(users)
        }

    async def user(self, user_id: str) -> tuple[str | None, list[str]]:
        flat = await self._run(scripts.USER, user_id)
        fields_ = {_text(flat[at]): _text(flat[at + 1]) for at in range(0, len(flat), 2)}
        topics = sorted(name[2:] for name in fields_ if name.startswith("t:"))
        return fields_.get("status"), topics

    async def typing_start(self, topic: str, user_id: str, ttl: float) -> bool:
        ttl_ms = max(1, round(ttl * 1000))
        return bool(await self._run(scripts.TYPING_START, topic, user_id, ttl_ms))

    async def typing_stop(self, topic: str, user_id: str) -> None:
        await self._run(scripts.TYPING_STOP, topic, user_id)

    async def typing_lapse(self, topic: str, user_id: str) -> float | None:
        left = await self._run(scripts.TYPING_LAPSE, topic, user_id)
        return None if left < 0 else left / 1000

    def _heard(self, data: bytes) -> None:
        if self._listener is None:
            return
        try:
            message = json.loads(data)
            if message[0] == "c":
                _, topic, users = message
                self._listener.changed(str(topic), [str(user) for user in users])
            elif message[0] == "t":
                _, topic, user_id, state = message
                self._listener.typed(str(topic), str(user_id), str(state))
        except (ValueError, TypeError, IndexError, KeyError):
            log.warning("ignoring a foreign message on the presence channel")

    def _reconnected(self) -> None:
        if self._listener is not None:
            self._listener.resync(self._settle)

    async def run(
        self, listener: Listener, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._listener = listener
        try:
            task_status.started()
            while True:
                try:
                    if not await self._run(scripts.RENEW, self._instance, self._lease_ms):
                        listener.resync(self._settle)
                    swept = await self._run(scripts.SWEEP)
                    if swept:
                        log.info("swept stopped instances' presence", extra=fields(swept=swept))
                except BrokerUnavailable as exc:
                    log.debug("presence lease not renewed", extra=fields(error=str(exc)))
                await trio.sleep(self._period)
        finally:
            self._listener = None

    async def close(self) -> None:
        # This instance's members leave after the grace, unless they are back on another
        # instance by then (a deploy's reconnect).
        try:
            await self._run(scripts.RENEW, self._instance, self._grace_ms)
        except BrokerUnavailable as exc:
            log.warning("presence lease not shortened", extra=fields(error=str(exc)))
