"""Generic topics, wildcard patterns, and the index that matches topics against patterns.

A topic is 1..16 dot-separated segments of [A-Za-z0-9_-], at most 200 characters; "all" is
reserved (it is the subscription key of the "everything" scope, see routing.py). A pattern is
a topic whose segments may be `*` (exactly one segment) and whose last segment may be `**`
(zero or more trailing segments, like MQTT's `#`).

Pure: no I/O. Owns the syntax and matching rules only; which clients hold a pattern, and the
Redis subscriptions themselves, belong to the caller.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs

# The subscription key of the "everything" scope (routing.py): no topic may take its name.
ALL = "all"

MAX_TOPIC_LENGTH = 200
MAX_SEGMENTS = 16
ONE = "*"
REST = "**"

# Explicit ASCII classes: str.isalnum() and \w would admit unicode letters.
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
# Everything that is special in a Redis glob outside a bracket expression, plus `]`.
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def _problem(text: str, noun: str, wildcards: bool) -> str | None:
    # Length first, so nothing below ever works on an unbounded string.
    if not text:
        return f"{noun} must not be empty"
    if len(text) > MAX_TOPIC_LENGTH:
        return f"{noun} must be at most {MAX_TOPIC_LENGTH} characters"
    segments = text.split(".")
    if len(segments) > MAX_SEGMENTS:
        return f"{noun} must have at most {MAX_SEGMENTS} segments"
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if not segment:
            return f"{noun} segments must not be empty (no leading, trailing or double dots)"
        if wildcards and segment == ONE:
            continue
        if wildcards and segment == REST:
            if index != last:
                return "'**' may only be the last segment"
            continue
        if _SEGMENT.fullmatch(segment) is None:
            if wildcards and "*" in segment:
                return "'*' and '**' must be whole segments"
            return f"{noun} segments may contain only letters, digits, '_' and '-'"
    if text == ALL:
        return f"topic '{ALL}' is reserved"
    return None


def topic_problem(text: str) -> str | None:
    """Why `text` is not a valid topic, or None if it is. The reason never quotes `text`."""
    return _problem(text, "topic", wildcards=False)


def pattern_problem(text: str) -> str | None:
    """Why `text` is not a valid pattern, or None if it is. The reason never quotes `text`.

    A plain topic passes (it is a pattern that matches only itself); `is_pattern` tells the
    two apart.
    """
    return _problem(text, "pattern", wildcards=True)


def is_pattern(text: str) -> bool:
    """Whether `text` has a `*` or `**` segment (i.e. is not a plain topic)."""
    return any(segment in (ONE, REST) for segment in text.split("."))


def redis_globs(prefix: str, pattern: str) -> tuple[str, ...]:
    """Redis PSUBSCRIBE globs covering every channel `prefix + topic` the pattern matches.

    A superset: Redis `*` also crosses dots, so the caller must filter exactly (PatternIndex).
    A trailing `**` after a literal gives two globs ("p:chat", "p:chat.*"): "chat.**" matches
    "chat" itself, and the one glob "p:chat*" would also draw in "chatter" and the like.

    Globs may overlap, within one pattern ("*.x.**") as between patterns ("a.*" and "*.b"),
    and Redis sends a pmessage per matching glob: the caller must deliver once per message.

    Raises:
        ValueError: `pattern` is not a valid pattern.
    """
    problem = pattern_problem(pattern)
    if problem is not None:
        raise ValueError(problem)
    escaped = _GLOB_SPECIAL.sub(r"\\\1", prefix)
    segments = pattern.split(".")
    if segments[-1] != REST:
        # Topic segments never contain glob specials, so only the prefix needs escaping.
        return (escaped + pattern,)
    head = segments[:-1]
    if not head:
        return (escaped + "*",)
    base = escaped + ".".join(head)
    if head[-1] == ONE:
        # "a.*" already matches "a.x.y" in Redis, so the ".*" glob would be redundant.
        return (base,)
    return (base, base + ".*")


#: What a pattern is with its literal segments blanked out: whether it ends in "**", how
#: many segments come before that, and where the literal ones are. "chat.*.x" and
#: "news.*.y" share a shape; "chat.*" and "chat.*.**" do not.
Shape = tuple[bool, int, tuple[int, ...]]

#: The literal segments of a pattern, or of a topic at a shape's literal positions: what a
#: pattern is filed under within its shape (a string for one literal, a tuple otherwise).
_Key = Any


def _path(pattern: str) -> tuple[list[str], bool]:
    segments = pattern.split(".")
    if segments[-1] == REST:
        return segments[:-1], True
    return segments, False


def shape(pattern: str) -> Shape:
    """The shape of a valid pattern (see `Shape`)."""
    path, rest = _path(pattern)
    return rest, len(path), tuple(i for i, segment in enumerate(path) if segment != ONE)


def _no_literals(segments: Sequence[str]) -> _Key:
    return ()


@attrs.define(eq=False)
class _ShapeGroup:
    # Picks a shape's literal positions out of a pattern's or a topic's segments, so both
    # give the same key exactly when the topic matches the pattern.
    literals: Callable[[Sequence[str]], _Key]
    patterns: dict[_Key, str] = attrs.Factory(dict)


def _group(literal_positions: tuple[int, ...]) -> _ShapeGroup:
    if not literal_positions:
        return _ShapeGroup(_no_literals)
    return _ShapeGroup(operator.itemgetter(*literal_positions))


class PatternIndex:
    """Patterns filed by shape, then by their literal segments: one lookup per shape.

    Theory: a topic matches a pattern exactly when the segment counts fit (equal, or at
    least the pattern's for a "**" pattern) and the topic has the pattern's literal at each
    literal position ("*" takes any one segment). Within one shape the literal positions are
    the same for every pattern, so the topic's segments at those positions name the one
    pattern of that shape it can match: a dict lookup. Matching a topic of L segments
    therefore costs one lookup per shape of L segments, or of at most L segments before a
    "**", held: never more than `shape_count()`, however many patterns share those shapes,
    and never a walk whose width doubles with each "*" (the trie this replaced visited 2^15
    nodes for one topic against the 32,768 patterns of {x, *}^15). Bounding the number of
    shapes (the caller's `max_pattern_shapes`) bounds the cost of a publication.

    Stores patterns only: the caller keeps which clients hold each one.
    """

    def __init__(self) -> None:
        # (ends in "**", segments before it) -> literal positions -> group.
        self._shapes: dict[tuple[bool, int], dict[tuple[int, ...], _ShapeGroup]] = {}
        self._shape_count = 0
        self._size = 0
        #: Shape lookups the last `match()` made: the cost of matching one topic, in units
        #: that no clock or machine changes (for a cost bound or a metric of it).
        self.lookups = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, pattern: object) -> bool:
        # No validation needed: add() stores only valid patterns, so an invalid text (whose
        # shape is computed all the same) is simply not found.
        if not isinstance(pattern, str):
            return False
        path, _ = _path(pattern)
        rest, length, literal_positions = shape(pattern)
        group = self._shapes.get((rest, length), {}).get(literal_positions)
        return group is not None and group.literals(path) in group.patterns

    def shape_count(self) -> int:
        """Distinct shapes held: the most lookups one `match()` can make."""
        return self._shape_count

    def has_shape(self, of: Shape) -> bool:
        rest, length, literal_positions = of
        return literal_positions in self._shapes.get((rest, length), {})

    def add(self, pattern: str) -> None:
        """Store `pattern` (no-op if already stored).

        Raises:
            ValueError: `pattern` is not a valid pattern.
        """
        problem = pattern_problem(pattern)
        if problem is not None:
            raise ValueError(problem)
        path, _ = _path(pattern)
        rest, length, literal_positions = shape(pattern)
        groups = self._shapes.setdefault((rest, length), {})
        group = groups.get(literal_positions)
        if group is None:
            group = groups[literal_positions] = _group(literal_positions)
            self._shape_count += 1
        key = group.literals(path)
        if key not in group.patterns:
            group.patterns[key] = pattern
            self._size += 1

    def discard(self, pattern: str) -> None:
        """Remove `pattern` if stored, dropping its shape once no pattern has it, so churn
        frees memory and the cost of matching goes back down."""
        if pattern not in self:
            return
        path, _ = _path(pattern)
        rest, length, literal_positions = shape(pattern)
        groups = self._shapes[rest, length]
        group = groups[literal_positions]
        del group.patterns[group.literals(path)]
        self._size -= 1
        if not group.patterns:
            del groups[literal_positions]
            self._shape_count -= 1
            if not groups:
                del self._shapes[rest, length]

    def match(self, topic: str) -> list[str]:
        """Every stored pattern that matches `topic`, each once.

        `topic` is assumed valid (see topic_problem). A pattern has one shape and one key in
        it, and each shape is looked up once, so no pattern can be reported twice.
        """
        segments = topic.split(".")
        found: list[str] = []
        lookups = 0
        # "chat.**" matches "chat": zero trailing segments, so "**" shapes go up to L.
        candidates = [(False, len(segments))]
        candidates += [(True, length) for length in range(len(segments) + 1)]
        for candidate in candidates:
            groups = self._shapes.get(candidate)
            if groups is None:
                continue
            for group in groups.values():
                lookups += 1
                pattern = group.patterns.get(group.literals(segments))
                if pattern is not None:
                    found.append(pattern)
        self.lookups = lookups
        return found


def covers(grant: str, pattern: str) -> bool:
    """True when every topic `pattern` matches is also matched by `grant` (both valid).

    What a permission check needs for a wildcard subscription: "chat.*" may be subscribed
    under a grant of "chat.**" or "*.*", but not under "chat.room".
    """
    granted, requested = grant.split("."), pattern.split(".")
    for index, want in enumerate(requested):
        if index >= len(granted):
            return False
        have = granted[index]
        if have == REST:
            return True
        if want == REST:
            return False
        if have != ONE and have != want:
            return False
    # Both ran out together, or the grant ends in "**" (zero further segments).
    return len(granted) == len(requested) or (
        len(granted) == len(requested) + 1 and granted[-1] == REST
    )
