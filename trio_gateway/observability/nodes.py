"""The cluster view: which gateway instances are alive, each with its latest statistics.

Owns the heartbeat and the directory it writes to. On Redis every instance (each `--workers`
process too) writes its statistics (stats.py) every `node_ttl / 3` seconds with a lifetime
of `node_ttl`, so an instance that died drops out within `node_ttl`; a graceful shutdown
takes its entry out at once. Names under `<prefix>` (the `redis_prefix` setting), apart
from every broker and presence name:
- string `<prefix>node:<instance>`: the instance's latest statistics (JSON), expiring;
- sorted set `<prefix>nodes`: instance -> when its entry runs out (ms, Redis's clock); a
  reader removes what ran out.

With the memory broker there is one instance, and the directory is that instance alone.
Must not: compute statistics, or hold up the gateway: a heartbeat that fails is skipped
(the broker's own reconnect loop reports the outage).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Protocol

import trio

from ..broker import BrokerUnavailable
from ..broker.redis import RedisBroker
from .stats import Stats

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# ARGV: prefix, instance, lifetime (ms), statistics JSON.
_BEAT = (
    _NOW
    + """
local ttl = tonumber(ARGV[3])
redis.call('SET', ARGV[1] .. 'node:' .. ARGV[2], ARGV[4], 'PX', ttl)
redis.call('ZADD', ARGV[1] .. 'nodes', now + ttl, ARGV[2])
"""
)

# ARGV: prefix. Returns the statistics of every instance alive.
_READ = (
    _NOW
    + """
local index = ARGV[1] .. 'nodes'
redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
local found = {}
for _, instance in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local stats = redis.call('GET', ARGV[1] .. 'node:' .. instance)
  if stats then table.insert(found, stats) end
end
return found
"""
)

# ARGV: prefix, instance.
_LEAVE = """
redis.call('DEL', ARGV[1] .. 'node:' .. ARGV[2])
redis.call('ZREM', ARGV[1] .. 'nodes', ARGV[2])
"""


class Nodes(Protocol):
    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None:
        """Announce this instance until cancelled."""
        ...

    async def alive(self) -> list[dict[str, Any]]:
        """The statistics of every live instance, this one's fresh.

        Raises:
            BrokerUnavailable: the directory cannot be read now.
        """
        ...

    async def leave(self) -> None:
        """Take this instance out of the directory (graceful shutdown)."""
        ...


class LocalNodes:
    """The memory broker's directory: this instance only."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def alive(self) -> list[dict[str, Any]]:
        return [self._stats.snapshot()]

    async def leave(self) -> None:
        pass


class RedisNodes:
    """Every instance sharing the Redis, each announcing itself."""

    def __init__(self, stats: Stats, broker: RedisBroker, prefix: str, ttl: float) -> None:
        self._stats = stats
        self._broker = broker
        self._prefix = prefix
        self._ttl_ms = max(1, round(ttl * 1000))
        self._interval = ttl / 3

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            snapshot = self._stats.snapshot()
            body = json.dumps(snapshot, separators=(",", ":"))
            with contextlib.suppress(BrokerUnavailable):
                await self._broker.run_script(
                    _BEAT, [self._prefix, snapshot["instance"], self._ttl_ms, body]
                )
            await trio.sleep(self._interval)

    async def alive(self) -> list[dict[str, Any]]:
        own = self._stats.snapshot()
        found = await self._broker.run_script(_READ, [self._prefix])
        others = [json.loads(raw) for raw in found]
        return [own, *(node for node in others if node.get("instance") != own["instance"])]

    async def leave(self) -> None:
        with contextlib.suppress(BrokerUnavailable):
            await self._broker.run_script(
                _LEAVE, [self._prefix, self._stats.snapshot()["instance"]]
            )


def cluster_totals(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """What the instances add up to (`GET /api/stats?scope=cluster`).

    A user connected through two instances counts once on each; the top keys add up each
    instance's own top list, so a key can be missing where it is not in any of them.
    """
    keys: dict[str, int] = {}
    for node in nodes:
        for entry in node.get("top_keys", ()):
            keys[entry["key"]] = keys.get(entry["key"], 0) + entry["subscribers"]

    def total(*path: str) -> float:
        summed = 0.0
        for node in nodes:
            value: Any = node
            for name in path:
                value = value.get(name, 0) if isinstance(value, dict) else 0
            summed += value if isinstance(value, int | float) else 0
        return round(summed, 3)

    return {
        "nodes": len(nodes),
        "connections": int(total("connections")),
        "users": int(total("users")),
        "subscriptions": int(total("subscriptions", "total")),
        "rates": {
            name: total("rates", name) for name in ("messages_in", "messages_out", "publications")
        },
        "drops": {name: int(total("drops", name)) for name in ("slow_consumer", "not_queued")},
        "brokers_down": sum(1 for node in nodes if not node.get("broker", {}).get("ok", False)),
        "top_keys": [
            {"key": key, "subscribers": count}
            for key, count in sorted(keys.items(), key=lambda item: (-item[1], item[0]))[:10]
        ],
    }
