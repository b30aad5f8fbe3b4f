"""The pure helpers the server and the client share: backoff and exception groups; and the
backoff each server caller picks (the client's is in test_client.py)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from itertools import islice

import pytest

from trio_gateway.broker.redis import _backoff
from trio_gateway.common.backoff import backoff_delay, backoff_delays
from trio_gateway.common.groups import first_leaf
from trio_gateway.runtime.workers import _restart_delays


class NoDraws(random.Random):
    def uniform(self, a: float, b: float) -> float:
        raise AssertionError("drew a random number")


@pytest.fixture
def seeded_random() -> Iterator[None]:
    """The module-level generator seeded, and put back as it was afterwards."""
    state = random.getstate()
    random.seed(7)
    yield
    random.setstate(state)


def test_backoff_jitter_spans_the_top_fraction_of_the_ceiling() -> None:
    seeded, replay = random.Random(7), random.Random(7)
    delays = list(islice(backoff_delays(initial=1.0, maximum=6.0, jitter=0.25, rng=seeded), 5))
    ceilings = [1, 2, 4, 6, 6]
    assert delays == [replay.uniform(ceiling * 0.75, ceiling) for ceiling in ceilings]


def test_backoff_without_jitter_is_the_ceiling_and_draws_nothing() -> None:
    delays = backoff_delays(initial=0.5, maximum=3.0, jitter=0, rng=NoDraws())
    assert list(islice(delays, 4)) == [0.5, 1, 2, 3]
    assert backoff_delay(10**6, initial=0.5, maximum=3.0, jitter=0) == 3


def test_redis_reconnects_after_half_jitter_doubling_from_a_tenth_to_five_seconds(
    seeded_random: None,
) -> None:
    delays = list(islice(_backoff(), 10))
    random.seed(7)
    ceilings = [min(5.0, 0.1 * 2**n) for n in range(10)]
    assert delays == [random.uniform(ceiling / 2, ceiling) for ceiling in ceilings]


def test_workers_restart_after_doubling_from_half_a_second_to_thirty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("trio_gateway.common.backoff.random", NoDraws())
    assert list(islice(_restart_delays(), 9)) == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_a_fresh_iterator_starts_over() -> None:
    first = backoff_delays(initial=1.0, maximum=8.0, jitter=0)
    assert list(islice(first, 3)) == [1, 2, 4]
    assert next(backoff_delays(initial=1.0, maximum=8.0, jitter=0)) == 1
    assert next(first) == 8


def test_first_leaf_of_a_nested_group() -> None:
    inner, other = KeyError("inner"), ValueError("other")
    group = ExceptionGroup("outer", [ExceptionGroup("middle", [inner]), other])
    assert first_leaf(group) is inner
    assert first_leaf(ExceptionGroup("flat", [other])) is other
