"""The staged drain of a graceful shutdown: 1001 closes in jittered batches over a window.

Theory of operation
-------------------
Closing every client at once sends them all back to the load balancer in the same instant,
and the other instances take the whole reconnect wave (plus its resumes from history) at
once. Like Phoenix's socket drainer, the drain closes clients in batches instead, spread
over `drain_window` seconds: the window is cut into one slot per batch, and each batch
closes at a random point of its own slot (jitter, so instances stopping together do not
keep step), with the clients shuffled into batches. A batch is `DRAIN_BATCH` clients, so a
gateway with few clients closes them all at once, as before, and the window is only used
when it matters. Each client is closed 1001 `Server shutting down` after its queued messages
(`flush`), exactly as an unstaged shutdown does; session/connection.py carries it out.

The window never runs past the shutdown's own deadline: it ends `close_timeout` before
it, so the last batch still has time to flush and send its close frame. Clients that leave
meanwhile are skipped (a close request on a closed client changes nothing), and one that
registers during the drain is closed at once (session/connection.py checks
`shutting_down`). Must not: decide when the shutdown starts or ends (runtime/server.py).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence

import trio

from ..fanout.hub import Client
from ..observability.jsonlog import fields
from ..protocol.errors import SHUTTING_DOWN

log = logging.getLogger("trio_gateway.drain")

# Clients closed together: small enough that a batch's reconnects are a ripple for the other
# instances, large enough that a few hundred clients need no more than a few batches.
DRAIN_BATCH = 100


def schedule(count: int, window: float, rng: random.Random) -> list[float]:
    """When each batch of `count` clients closes, in seconds from the drain's start: one
    per slot of `window`, at a random point of it; [0.0] for one batch (no wait)."""
    batches = max(1, math.ceil(count / DRAIN_BATCH))
    if batches == 1 or window <= 0:
        return [0.0] * batches
    slot = window / batches
    return [(n + rng.random()) * slot for n in range(batches)]


async def drain(clients: Sequence[Client], window: float, rng: random.Random) -> None:
    """Close `clients` 1001 in batches over `window` seconds (see the module docstring);
    returns once the last batch has been asked to close."""
    order = list(clients)
    rng.shuffle(order)
    times = schedule(len(order), window, rng)
    log.info(
        "draining clients",
        extra=fields(clients=len(order), batches=len(times), window=round(window, 3)),
    )
    started = trio.current_time()
    for n, offset in enumerate(times):
        await trio.sleep_until(started + offset)
        for client in order[n * DRAIN_BATCH : (n + 1) * DRAIN_BATCH]:
            client.close(SHUTTING_DOWN, flush=True)
