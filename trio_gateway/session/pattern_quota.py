"""Whether a connection may take one more wildcard pattern: `max_patterns` per connection,
`max_pattern_shapes` per instance.

Every pattern held is matched against every topic publication, at one lookup per distinct
shape held on the instance (protocol/topics.py): the per-connection cap keeps one client's
share small, the shape cap bounds what a publication costs whoever holds the patterns.
Owns the checks and their error replies only; must not subscribe anything or change the
hub's index (handlers/subscribe.py and connection.py do).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from ..protocol.errors import TOO_MANY, ProtocolError
from ..protocol.routing import is_pattern_key
from ..protocol.topics import PatternIndex, Shape, shape
from ..runtime.config import Config


def check_pattern(config: Config, index: PatternIndex, held: set[str], key: str) -> None:
    """Refuse `key` if it is a pattern the connection does not hold yet and a cap is reached.

    `index` is every pattern held on the instance, `held` the connection's subscriptions.
    Call it right before subscribing, with no checkpoint in between.

    Raises:
        ProtocolError: code `too_many`; the connection stays open.
    """
    if key in held or not is_pattern_key(key):
        return
    if sum(1 for each in held if is_pattern_key(each)) >= config.max_patterns:
        raise ProtocolError(
            f"Too many patterns: at most {config.max_patterns} per connection", TOO_MANY
        )
    if _new_shape(config, index, key):
        raise ProtocolError(
            f"Too many pattern shapes: at most {config.max_pattern_shapes} on this gateway",
            TOO_MANY,
        )


def within_quota(config: Config, index: PatternIndex, keys: Iterable[str]) -> list[str]:
    """`keys` without the patterns either cap refuses (a connect hook's subscriptions, which
    are subscribed in order right after)."""
    kept: list[str] = []
    patterns: set[str] = set()
    shapes: set[Shape] = set()
    for key in keys:
        if is_pattern_key(key) and key not in patterns:
            if len(patterns) >= config.max_patterns or _new_shape(config, index, key, shapes):
                continue
            patterns.add(key)
            if not index.has_shape(of := shape(key)):
                shapes.add(of)
        kept.append(key)
    return kept


def _new_shape(
    config: Config, index: PatternIndex, key: str, pending: Collection[Shape] = ()
) -> bool:
    """Whether `key` would add a shape beyond the cap (`pending`: shapes not in `index` yet,
    about to be added)."""
    if key in index:
        return False
    of = shape(key)
    if index.has_shape(of) or of in pending:
        return False
    return index.shape_count() + len(pending) >= config.max_pattern_shapes
