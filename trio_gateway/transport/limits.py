"""Connection caps: how many WebSockets (per address and in all), handshakes and descriptors.

Theory of operation
-------------------
Every cap is checked at the upgrade, before the 101, so a refused client gets an answer at
once (HTTP 503 with `Retry-After`, transport/http.py) and its descriptor is freed, instead
of holding it while it waits: nothing over a cap ever hangs.

- `max_connections_per_ip`: WebSockets open from one address (seed 004's per-IP limit).
- `max_connections`: WebSockets open in all; and never more than the descriptors allow
  (`RLIMIT_NOFILE` minus `DESCRIPTOR_RESERVE`), so that however many clients come, the
  process keeps descriptors for `/api/health`, publishes, Redis and backend calls.
- `max_handshakes`: upgrades answered 101 whose client is not registered yet (waiting for
  `identify`, or for the connect hook): the phase where a client costs the most for the
  least, a JWT check or a backend call.

A WebSocket holds a `Slot` from the 101 to its end; the slot's `registered()` ends its
handshake part. The counts are plain integers in one place, changed on the connection's
own task: no lock, nothing per idle connection but the slot.

Must not: read or write sockets, or know HTTP.
"""

from __future__ import annotations

import resource
from types import TracebackType

import attrs

from ..runtime.config import Config

# Descriptors kept out of the WebSockets' reach: HTTP requests (health checks, publishes,
# metrics scrapes), the listeners, Redis and backend connections, logs. Generous for those,
# small beside any real descriptor limit (a 1,024 default leaves 896 WebSockets).
DESCRIPTOR_RESERVE = 128
#: Refusal reasons, as logged and counted (`handshakes_refused_total{reason}`).
PER_IP = "per_ip"
TOTAL = "max_connections"
HANDSHAKES = "max_handshakes"
#: Accept failed for want of descriptors; the pending connection was answered 503 and closed.
DESCRIPTORS = "descriptors"


def descriptor_limit() -> int:
    """This process's soft `RLIMIT_NOFILE` (a huge number when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 2**31


def host_of(remote: str | None) -> str | None:
    """The address part of an "ip:port" peer (IPv6 included), None for a non-socket peer."""
    return None if remote is None else remote.rpartition(":")[0]


@attrs.define
class ConnectionLimits:
    """The caps of one gateway and what they count."""

    max_per_ip: int
    max_total: int
    max_handshakes: int
    by_host: dict[str, int] = attrs.field(factory=dict)
    websockets: int = 0
    handshakes: int = 0

    @classmethod
    def from_config(cls, config: Config, descriptors: int | None = None) -> ConnectionLimits:
        """Caps from settings (0: none), the total capped by the descriptors left."""
        room = max(1, (descriptors or descriptor_limit()) - DESCRIPTOR_RESERVE)
        total = min(config.max_connections, room) if config.max_connections else room
        return cls(config.max_connections_per_ip, total, config.max_handshakes)

    def refusal(self, host: str | None) -> str | None:
        """Why one more WebSocket from `host` may not open now, or None."""
        if self.max_per_ip and host is not None and self.by_host.get(host, 0) >= self.max_per_ip:
            return PER_IP
        if self.websockets >= self.max_total:
            return TOTAL
        if self.max_handshakes and self.handshakes >= self.max_handshakes:
            return HANDSHAKES
        return None

    def open(self, host: str | None) -> Slot:
        """Count one more WebSocket from `host`, in its handshake; `refusal` said yes."""
        self.websockets += 1
        self.handshakes += 1
        if host is not None:
            self.by_host[host] = self.by_host.get(host, 0) + 1
        return Slot(self, host)


class Slot:
    """One WebSocket's place in the counts; a context manager that gives it back."""

    __slots__ = ("_handshaking", "_host", "_limits")

    def __init__(self, limits: ConnectionLimits, host: str | None) -> None:
        self._limits = limits
        self._host = host
        self._handshaking = True

    def registered(self) -> None:
        """The client is registered (or refused): its handshake is over."""
        if self._handshaking:
            self._handshaking = False
            self._limits.handshakes -= 1

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Give the place back: the WebSocket has ended (call once)."""
        self.registered()
        limits = self._limits
        limits.websockets -= 1
        host = self._host
        if host is not None:
            left = limits.by_host[host] - 1
            if left:
                limits.by_host[host] = left
            else:
                del limits.by_host[host]
