"""Whether a connection may take one more wildcard pattern: the `max_patterns` cap.

Every pattern held is matched against every topic publication, so patterns get a cap of
their own, lower than `max_subscriptions`. Owns the check and its error reply only; must not
subscribe anything or touch the hub's index (handlers/subscribe.py and connection.py do).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..protocol.errors import TOO_MANY, ProtocolError
from ..protocol.routing import is_pattern_key
from ..runtime.config import Config


def patterns_held(keys: Iterable[str]) -> int:
    return sum(1 for key in keys if is_pattern_key(key))


def check_pattern(config: Config, held: set[str], key: str) -> None:
    """Refuse `key` when it is a pattern the connection does not hold yet and it is at the cap.

    Raises:
        ProtocolError: code `too_many`, the connection stays open.
    """
    if key in held or not is_pattern_key(key):
        return
    if patterns_held(held) >= config.max_patterns:
        raise ProtocolError(
            f"Too many patterns: at most {config.max_patterns} per connection", TOO_MANY
        )


def within_quota(config: Config, keys: Iterable[str]) -> list[str]:
    """`keys` without the patterns beyond the cap (a connect hook's subscriptions)."""
    kept: list[str] = []
    patterns: set[str] = set()
    for key in keys:
        if is_pattern_key(key) and key not in patterns:
            if len(patterns) >= config.max_patterns:
                continue
            patterns.add(key)
        kept.append(key)
    return kept
