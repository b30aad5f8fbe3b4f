"""Sync tests of topic/pattern syntax, Redis globs and the pattern index (pure, no I/O)."""

from __future__ import annotations

import fnmatch
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.protocol.topics import (
    MAX_SEGMENTS,
    MAX_TOPIC_LENGTH,
    ONE,
    REST,
    PatternIndex,
    is_pattern,
    pattern_problem,
    redis_globs,
    shape,
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
    assert index.shape_count() == 0


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
    index.add("x.y.z")  # the shape of a.b.c
    assert index.shape_count() == 3
    index.discard("a.b.c")
    assert index.shape_count() == 3  # x.y.z still has it
    assert sorted(index.match("a.b")) == ["a.*", "a.b.**"]
    assert index.match("x.y.z") == ["x.y.z"]
    index.discard("a.b.**")
    assert index.shape_count() == 2
    assert index.match("a.b") == ["a.*"]
    index.discard("a.*")
    index.discard("x.y.z")
    assert index.shape_count() == 0
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
    assert not index._shapes
    assert index.shape_count() == 0


# --- match cost ----------------------------------------------------------------------------


def test_match_cost_does_not_grow_with_patterns_of_one_shape() -> None:
    index = PatternIndex()
    for n in range(100_000):
        index.add(f"room.{n}.*")
    assert index.shape_count() == 1
    assert index.match("chat.x") == []
    assert index.lookups == 0  # no shape of two segments
    assert index.match("room.5.x") == ["room.5.*"]
    assert index.lookups == 1
    assert index.match("chat.x.y") == []
    assert index.lookups == 1


def test_match_cost_is_one_lookup_per_shape_that_fits_the_topic() -> None:
    index = PatternIndex()
    for n in range(100_000):
        index.add(f"room.{n}.*")
    index.add("*.x")
    index.add("**")
    assert sorted(index.match("chat.x")) == ["**", "*.x"]
    assert index.lookups == 2  # "*.x"'s shape and "**"'s; "room.N.*" has three segments
    assert sorted(index.match("room.7.x")) == ["**", "room.7.*"]
    assert index.lookups == 2


def test_match_cost_against_the_doubling_shapes_is_the_shape_count() -> None:
    # Every mix of "x" and "*" over 15 segments then "z": each segment doubled a trie's
    # frontier (2^15 nodes walked for a topic that matches none of them).
    index = PatternIndex()
    for mix in itertools.product(("x", ONE), repeat=15):
        index.add(".".join((*mix, "z")))
    assert len(index) == index.shape_count() == 2**15
    assert index.match(".".join(["x"] * 15 + ["y"])) == []
    assert index.lookups == 2**15
    # The same count of patterns over one shape costs one lookup.
    one_shape = PatternIndex()
    for n in range(2**15):
        one_shape.add(f"x.*.{n}")
    assert one_shape.match("x.y.7") == ["x.*.7"]
    assert one_shape.lookups == 1


# --- PatternIndex against a brute-force reference --------------------------------------------


def _reference_match(pattern: str, topic: str) -> bool:
    """The matching rule as PROTOCOL.md states it, written independently of the index."""
    wanted, segments = pattern.split("."), topic.split(".")
    if wanted[-1] == REST:
        head = wanted[:-1]
        if len(segments) < len(head):
            return False
        segments = segments[: len(head)]
        wanted = head
    return len(wanted) == len(segments) and all(
        want in (ONE, have) for want, have in zip(wanted, segments, strict=True)
    )


# A small alphabet, so that patterns share literals, shapes and prefixes with the topics.
_literal = st.sampled_from(["a", "b", "c"])
_topics = st.lists(_literal, min_size=1, max_size=6).map(".".join)
_patterns = st.builds(
    lambda head, rest: ".".join([*head, REST] if rest else head) or REST,
    st.lists(st.one_of(_literal, st.just(ONE)), min_size=0, max_size=6),
    st.booleans(),
).filter(lambda pattern: pattern_problem(pattern) is None)
_long_topics = st.lists(_literal, min_size=1, max_size=MAX_SEGMENTS).map(".".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_patterns, max_size=40), st.lists(_topics, min_size=1, max_size=10))
def test_match_is_the_brute_force_answer(patterns: list[str], topics: list[str]) -> None:
    index = PatternIndex()
    for pattern in patterns:
        index.add(pattern)
    assert len(index) == len(set(patterns))
    for topic in topics:
        found = index.match(topic)
        assert len(found) == len(set(found))
        assert set(found) == {p for p in patterns if _reference_match(p, topic)}
        assert index.lookups <= index.shape_count()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_patterns, max_size=40),
    st.data(),
    st.lists(st.one_of(_topics, _long_topics), min_size=1, max_size=10),
)
def test_match_after_discards_is_the_brute_force_answer(
    patterns: list[str], data: st.DataObject, topics: list[str]
) -> None:
    index = PatternIndex()
    for pattern in patterns:
        index.add(pattern)
    dropped = data.draw(st.sets(st.sampled_from(patterns)) if patterns else st.just(set()))
    for pattern in dropped:
        index.discard(pattern)
        index.discard(pattern)  # twice is a no-op
    kept = set(patterns) - dropped
    assert len(index) == len(kept)
    assert all(pattern in index for pattern in kept)
    assert not any(pattern in index for pattern in dropped)
    assert index.shape_count() == len({shape(pattern) for pattern in kept})
    for topic in topics:
        assert sorted(index.match(topic)) == sorted(p for p in kept if _reference_match(p, topic))


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
