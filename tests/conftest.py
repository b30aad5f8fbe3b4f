from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings

from trio_gateway import Config, Gateway, serve

from .helpers import API_KEY
from .redis_server import RedisServer

# The fuzz targets (tests/fuzz/) share the examples of the hypothesis profile between them:
# 600, the same every run, under `make test`; `make fuzz` loads "fuzz" (FUZZ_EXAMPLES in all,
# random unless FUZZ_FIXED=1: CI's verdict must be reproducible, a developer's run should
# explore). Slow or large examples are the point there, not a problem.
_FUZZ_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "test", max_examples=600, deadline=None, derandomize=True, suppress_health_check=_FUZZ_CHECKS
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100000")),
    derandomize=os.environ.get("FUZZ_FIXED") == "1",
    deadline=None,
    suppress_health_check=_FUZZ_CHECKS,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "test"))


@pytest.fixture
def config() -> Config:
    return Config(host="127.0.0.1", port=0, api_keys=(API_KEY,), close_timeout=1.0)


@pytest.fixture
async def gateway(nursery: trio.Nursery, config: Config) -> Gateway:
    """A gateway on a real socket (port 0); torn down by cancelling the test's nursery."""
    started: Gateway = await nursery.start(serve, config)
    return started


@pytest.fixture
def io_clock() -> trio.testing.MockClock:
    """Virtual time that jumps once every task has been idle for 20 ms of real time: loopback
    I/O (to a real backend, a real socket) completes well within that, so only waits that
    nothing will end are skipped."""
    return trio.testing.MockClock(autojump_threshold=0.02)


def with_settings(config: Config, **changes: Any) -> Config:
    return attrs.evolve(config, **changes)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on an ephemeral port, stopped after the test."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["memory", "redis"])
def any_broker(request: pytest.FixtureRequest, config: Config, tmp_path: Path) -> Iterator[Config]:
    """The gateway config for each broker kind; Redis gets its own redis-server."""
    if request.param == "memory":
        yield config
        return
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield with_settings(config, redis_url=server.url)
    finally:
        server.stop()
