"""Exponential backoff with jitter: the one policy shape every retry loop here uses.

Each caller picks its parameters: the client library full jitter (many clients dropped by one
restart must not return in lockstep), the Redis broker half jitter, the worker supervisor none
(one process, restarts logged with their exact delay).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

# 2**64 times any sane initial delay exceeds any sane maximum; capping the exponent keeps a
# long outage's attempt count from overflowing a float.
MAX_EXPONENT = 64


def backoff_delay(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    jitter: float = 1.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry `attempt` (0 for the first).

    The ceiling doubles from `initial` up to `maximum`; the delay is uniform over
    [ceiling * (1 - jitter), ceiling]: `jitter` 1 is "full jitter", 0 no randomness at all.
    """
    ceiling = min(maximum, initial * 2.0 ** min(attempt, MAX_EXPONENT))
    if jitter == 0:
        return ceiling
    return (rng or random).uniform(ceiling * (1 - jitter), ceiling)


def backoff_delays(
    *, initial: float, maximum: float, jitter: float = 1.0, rng: random.Random | None = None
) -> Iterator[float]:
    """`backoff_delay` for attempts 0, 1, 2, ...: a fresh iterator starts over."""
    for attempt in itertools.count():
        yield backoff_delay(attempt, initial=initial, maximum=maximum, jitter=jitter, rng=rng)
