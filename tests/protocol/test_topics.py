"""Sync tests of topic/pattern syntax, Redis globs and the pattern trie (pure, no I/O)."""

from __future__ import annotations

import fnmatch

import pytest

from trio_gateway.protocol.topics import (
    MAX_SEGMENTS,
    MAX_TOPIC_LENGTH,
    PatternIndex,
    is_pattern,
    pattern_problem,
    redis_globs,
    topic_problem,
)

SEGMENT_CHARS = "segments may contain only letters, digits, '_' and '-'"
EMPTY_SEGMENT = "segments must not be empty"

# --- topic_problem -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "chat",
        "chat.room.1",
        "orders.eu-west.v2",
        "A_b-9",
        "all.x",
        "x.all",
        "ALL",
        "a" * MAX_TOPIC_LENGTH,
        ".".join(["a"] * MAX_SEGMENTS),
    ],
)
def test_valid_topics(topic: str) -> None:
    assert topic_problem(topic) is None
    assert pattern_problem(topic) is None  # a plain topic is also a valid pattern
    assert not is_pattern(topic)


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("", "topic must not be empty"),
        (".chat", EMPTY_SEGMENT),
        ("chat.", EMPTY_SEGMENT),
        ("chat..room", EMPTY_SEGMENT),
        (".", EMPTY_SEGMENT),
        ("a" * (MAX_TOPIC_LENGTH + 1), f"at most {MAX_TOPIC_LENGTH} characters"),
        (".".join(["a"] * (MAX_SEGMENTS + 1)), f"at most {MAX_SEGMENTS} segments"),
        ("café", SEGMENT_CHARS),
        ("chat.é", SEGMENT_CHARS),
        ("٣", SEGMENT_CHARS),  # a unicode digit
        ("chat room", SEGMENT_CHARS),
        ("chat/room", SEGMENT_CHARS),
        ("chat:1", SEGMENT_CHARS),
        ("chat\n", SEGMENT_CHARS),
        ("chat.*", SEGMENT_CHARS),  # wildcards are not topics
        ("chat.**", SEGMENT_CHARS),
        ("all", "topic 'all' is reserved"),
    ],
)
def test_invalid_topics(topic: str, reason: str) -> None:
    problem = topic_problem(topic)
    assert problem is not None
    assert reason in problem


def test_topic_problem_does_not_echo_input() -> None:
    for text in ("x" * 10_000, "é" * 50, "a.b." + "c" * 300, "zzz!"):
        problem = topic_problem(text)
        assert problem is not None
        assert len(problem) <= 100
        assert text not in problem


# --- pattern_problem / is_pattern ----------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    ["*", "**", "chat.*", "chat.**", "chat.*.x", "*.x", "*.*", "*.**", "a.*.b.**"],
)
def test_valid_patterns(pattern: str) -> None:
    assert pattern_problem(pattern) is None
    assert is_pattern(pattern)
    assert topic_problem(pattern) is not None


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "pattern must not be empty"),
        ("chat.*.", EMPTY_SEGMENT),
        (".*", EMPTY_SEGMENT),
        ("*..x", EMPTY_SEGMENT),
        ("**.chat", "'**' may only be the last segment"),
        ("chat.**.x", "'**' may only be the last segment"),
        ("**.**", "'**' may only be the last segment"),
        ("a*", "must be whole segments"),
        ("chat.*x", "must be whole segments"),
        ("***", "must be whole segments"),
        ("chat.é.*", SEGMENT_CHARS),
        ("chat.?", SEGMENT_CHARS),
        ("*." + "a" * MAX_TOPIC_LENGTH, f"at most {MAX_TOPIC_LENGTH} characters"),
        (".".join(["*"] * (MAX_SEGMENTS + 1)), f"at most {MAX_SEGMENTS} segments"),
        ("all", "topic 'all' is reserved"),
    ],
)
def test_invalid_patterns(pattern: str, reason: str) -> None:
    problem = pattern_problem(pattern)
    assert problem is not None
    assert reason in problem
    assert len(problem) <= 100


@pytest.mark.parametrize("text", ["a*", "chat.x*", "chat", "", "x**"])
def test_is_pattern_needs_a_whole_wildcard_segment(text: str) -> None:
    assert not is_pattern(text)


# --- PatternIndex.match --------------------------------------------------------------------

MATCHES = [
    # (pattern, topic, matches)
    ("chat.*", "chat.a", True),
    ("chat.*", "chat", False),
    ("chat.*", "chat.a.b", False),
    ("chat.*", "chatter.a", False),
    ("*", "chat", True),
    ("*", "chat.a", False),
    ("*.a", "chat.a", True),
    ("*.a", "chat.b", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("chat.*.x", "chat.room.x", True),
    ("chat.*.x", "chat.room.y", False),
    ("chat.*.x", "chat.x", False),
    ("chat.*.x", "chat.a.b.x", False),
    ("chat.**", "chat", True),
    ("chat.**", "chat.a", True),
    ("chat.**", "chat.a.b", True),
    ("chat.**", "chatter", False),
    ("chat.**", "other.chat", False),
    ("**", "chat", True),
    ("**", "chat.a.b.c", True),
    ("*.**", "chat", True),
    ("*.**", "chat.a.b", True),
    ("a.*.b.**", "a.x.b", True),
    ("a.*.b.**", "a.x.b.c.d", True),
    ("a.*.b.**", "a.b", False),
    ("chat.room", "chat.room", True),  # a plain topic stored as a pattern matches itself
    ("chat.room", "chat.room.1", False),
]


@pytest.mark.parametrize(("pattern", "topic", "matches"), MATCHES)
def test_match_table(pattern: str, topic: str, matches: bool) -> None:
    index = PatternIndex()
    index.add(pattern)
    assert index.match(topic) == ([pattern] if matches else [])


def test_match_all_table_patterns_together() -> None:
    index = PatternIndex()
    for pattern, _, _ in MATCHES:
        index.add(pattern)
    for topic in {topic for _, topic, _ in MATCHES}:
        # Together the index finds exactly what each pattern finds alone.
        expected = {pattern for pattern, _, _ in MATCHES if _single_match(pattern, topic)}
        found = index.match(topic)
        assert len(found) == len(set(found))
        assert set(found) == expected


def _single_match(pattern: str, topic: str) -> bool:
    index = PatternIndex()
    index.add(pattern)
    return index.match(topic) == [pattern]


def test_overlapping_patterns_each_returned_once() -> None:
    index = PatternIndex()
    patterns = ["**", "chat.**", "chat.*", "*.room", "*.*", "chat.room", "chat.room.**", "*.**"]
    for pattern in patterns:
        index.add(pattern)
        index.add(pattern)  # adding twice stores it once
    assert len(index) == len(patterns)
    found = index.match("chat.room")
    assert sorted(found) == sorted(patterns)
    assert sorted(index.match("chat")) == sorted(["**", "chat.**", "*.**"])
    assert sorted(index.match("news.room")) == sorted(["**", "*.room", "*.*", "*.**"])


def test_empty_index_matches_nothing() -> None:
    assert PatternIndex().match("chat") == []


# --- add / discard / contains --------------------------------------------------------------


def test_add_refuses_invalid_patterns() -> None:
    index = PatternIndex()
    for bad in ("", "a*", "**.x", "all", "a..b"):
        with pytest.raises(ValueError, match=r"."):
            index.add(bad)
    assert len(index) == 0
    assert index.node_count() == 1


def test_contains_and_len() -> None:
    index = PatternIndex()
    index.add("chat.**")
    index.add("chat.*")
    assert "chat.**" in index
    assert "chat.*" in index
    assert "chat" not in index  # the node exists, but no pattern ends there
    assert "chat.*.x" not in index
    assert "**" not in index
    assert 42 not in index
    assert len(index) == 2
    index.discard("chat.**")
    assert "chat.**" not in index
    assert "chat.*" in index
    assert len(index) == 1
    assert index.match("chat.a") == ["chat.*"]
    assert index.match("chat") == []


def test_discard_is_a_noop_for_absent_patterns() -> None:
    index = PatternIndex()
    index.add("chat.*")
    index.discard("chat.**")
    index.discard("chat")
    index.discard("other.*")
    index.discard("chat.*.x")
    index.discard("a*")
    assert len(index) == 1
    assert index.match("chat.a") == ["chat.*"]


def test_discard_keeps_shared_nodes() -> None:
    index = PatternIndex()
    index.add("a.b.c")
    index.add("a.b.**")
    index.add("a.*")
    nodes = index.node_count()  # root, a, a.b, a.b.c, a.*
    assert nodes == 5
    index.discard("a.b.c")
    assert index.node_count() == 4  # a.b still holds a.b.**
    assert sorted(index.match("a.b")) == ["a.*", "a.b.**"]
    index.discard("a.b.**")
    assert index.node_count() == 3
    assert index.match("a.b") == ["a.*"]
    index.discard("a.*")
    assert index.node_count() == 1
    assert len(index) == 0


def test_discard_prunes_after_churn() -> None:
    index = PatternIndex()
    patterns = [f"room.{n}.*.x{n % 7}.**" for n in range(5_000)]
    patterns += [f"*.{n}" for n in range(5_000)]
    for pattern in patterns:
        index.add(pattern)
    assert len(index) == 10_000
    for pattern in patterns:
        index.discard(pattern)
    assert len(index) == 0
    assert not index._root.children
    assert index.node_count() == 1


# --- match cost ----------------------------------------------------------------------------


def test_match_cost_does_not_grow_with_non_matching_patterns() -> None:
    index = PatternIndex()
    for n in range(100_000):
        index.add(f"room.{n}.*")
    assert index.match("chat.x") == []
    assert index.visits == 1  # the root; no child is "chat" or "*"
    assert index.match("room.5.x") == ["room.5.*"]
    assert index.visits <= 4  # root, room, room.5, room.5.*
    assert index.match("room.5") == []
    assert index.visits <= 3


def test_match_cost_with_wildcards_is_bounded_by_the_topic() -> None:
    index = PatternIndex()
    for n in range(100_000):
        index.add(f"room.{n}.*")
    index.add("*.x")
    index.add("**")
    assert sorted(index.match("chat.x")) == ["**", "*.x"]
    assert index.visits <= 3  # root, *, *.x


# --- redis_globs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "pattern", "globs"),
    [
        ("gw:", "chat", ("gw:chat",)),
        ("gw:", "chat.*", ("gw:chat.*",)),
        ("gw:", "chat.*.x", ("gw:chat.*.x",)),
        ("gw:", "chat.**", ("gw:chat", "gw:chat.*")),
        ("gw:", "a.b.**", ("gw:a.b", "gw:a.b.*")),
        ("gw:", "**", ("gw:*",)),
        ("gw:", "*.**", ("gw:*",)),
        ("gw:", "chat.*.**", ("gw:chat.*",)),
        ("gw:", "*.x.**", ("gw:*.x", "gw:*.x.*")),
        ("", "chat.*", ("chat.*",)),
        ("a*b?c[d]e\\f:", "chat.*", ("a\\*b\\?c\\[d\\]e\\\\f:chat.*",)),
        ("[x]:", "chat.**", ("\\[x\\]:chat", "\\[x\\]:chat.*")),
    ],
)
def test_redis_globs(prefix: str, pattern: str, globs: tuple[str, ...]) -> None:
    assert redis_globs(prefix, pattern) == globs


@pytest.mark.parametrize(("pattern", "topic", "matches"), MATCHES)
def test_redis_globs_cover_every_matching_channel(pattern: str, topic: str, matches: bool) -> None:
    # No glob specials in this prefix, so fnmatchcase reads the globs as Redis does.
    globs = redis_globs("gw:", pattern)
    if matches:
        assert any(fnmatch.fnmatchcase("gw:" + topic, glob) for glob in globs)


@pytest.mark.parametrize("bad", ["", "a*", "**.x", "all", "café.*"])
def test_redis_globs_refuses_invalid_patterns(bad: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        redis_globs("gw:", bad)
