"""Generic topics, wildcard patterns, and the trie that matches topics against patterns.

A topic is 1..16 dot-separated segments of [A-Za-z0-9_-], at most 200 characters; "all" is
reserved (it is the subscription key of the "everything" scope, see routing.py). A pattern is
a topic whose segments may be `*` (exactly one segment) and whose last segment may be `**`
(zero or more trailing segments, like MQTT's `#`).

Pure: no I/O. Owns the syntax and matching rules only; which clients hold a pattern, and the
Redis subscriptions themselves, belong to the caller.
"""

from __future__ import annotations

import re

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


@attrs.define(eq=False)
class _Node:
    # Keyed by literal segment, and by "*" for a one-segment wildcard; "*" never collides
    # with a topic segment, so a topic's segment can be looked up directly.
    children: dict[str, _Node] = attrs.Factory(dict)
    exact: str | None = None  # the pattern that ends here
    rest: str | None = None  # the pattern that is this path followed by "**"

    def is_empty(self) -> bool:
        return not self.children and self.exact is None and self.rest is None


def _path(pattern: str) -> tuple[list[str], bool]:
    segments = pattern.split(".")
    if segments[-1] == REST:
        return segments[:-1], True
    return segments, False


class PatternIndex:
    """A trie of patterns, matched by walking a topic's segments.

    Matching visits only trie nodes on paths the topic can follow, so its cost depends on the
    topic and the patterns that share its prefixes, never on how many others are stored.
    Stores patterns only: the caller keeps which clients hold each one.
    """

    def __init__(self) -> None:
        self._root = _Node()
        self._size = 0
        #: Trie nodes the last `match()` visited: the cost of matching one topic, in units
        #: that no clock or machine changes (for a cost bound or a metric of it).
        self.visits = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, pattern: object) -> bool:
        if not isinstance(pattern, str):
            return False
        node = self._find(pattern)
        if node is None:
            return False
        _, rest = _path(pattern)
        return (node.rest if rest else node.exact) is not None

    def add(self, pattern: str) -> None:
        """Store `pattern` (no-op if already stored).

        Raises:
            ValueError: `pattern` is not a valid pattern.
        """
        problem = pattern_problem(pattern)
        if problem is not None:
            raise ValueError(problem)
        path, rest = _path(pattern)
        node = self._root
        for segment in path:
            node = node.children.setdefault(segment, _Node())
        if rest:
            if node.rest is None:
                node.rest = pattern
                self._size += 1
        elif node.exact is None:
            node.exact = pattern
            self._size += 1

    def discard(self, pattern: str) -> None:
        """Remove `pattern` if stored, pruning nodes it leaves empty so churn frees memory."""
        path, rest = _path(pattern)
        trail = [self._root]
        for segment in path:
            child = trail[-1].children.get(segment)
            if child is None:
                return
            trail.append(child)
        node = trail[-1]
        if rest:
            if node.rest is None:
                return
            node.rest = None
        else:
            if node.exact is None:
                return
            node.exact = None
        self._size -= 1
        for depth in range(len(path), 0, -1):
            if not trail[depth].is_empty():
                break
            del trail[depth - 1].children[path[depth - 1]]

    def match(self, topic: str) -> list[str]:
        """Every stored pattern that matches `topic`, each once.

        `topic` is assumed valid (see topic_problem). Each node sits at a unique path, so it is
        reached at most once and no pattern can be reported twice.
        """
        found: list[str] = []
        frontier = [self._root]
        visits = 1
        for segment in topic.split("."):
            following: list[_Node] = []
            for node in frontier:
                if node.rest is not None:
                    found.append(node.rest)
                for key in (segment, ONE):
                    child = node.children.get(key)
                    if child is not None:
                        following.append(child)
            visits += len(following)
            frontier = following
            if not frontier:
                break
        else:
            for node in frontier:
                if node.exact is not None:
                    found.append(node.exact)
                # "chat.**" matches "chat": zero trailing segments.
                if node.rest is not None:
                    found.append(node.rest)
        self.visits = visits
        return found

    def _find(self, pattern: str) -> _Node | None:
        path, _ = _path(pattern)
        node = self._root
        for segment in path:
            child = node.children.get(segment)
            if child is None:
                return None
            node = child
        return node

    def node_count(self) -> int:
        """Every node in the trie, root included: the memory the patterns hold, which
        `discard` gives back (pruning)."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children.values())
        return count


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
