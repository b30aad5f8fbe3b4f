"""Publishing with an `idempotency_key`: a repeat within `idempotency_ttl` is answered as a
duplicate and never delivered twice; with either broker, over the HTTP API.

Cross-instance repeats and publishes Redis did not confirm are in test_redis_limits.py.
"""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from trio_gateway import Config, open_gateway
from trio_gateway.broker.memory import MemoryBroker
from trio_gateway.fanout.broadcaster import event_publication
from trio_gateway.fanout.publication import Assigned, Delivery

from .conftest import with_settings
from .helpers import TIMEOUT, post, ready, receive_json, subscribe, tcp_client


async def test_every_publish_endpoint_takes_a_key_and_answers_a_repeat_as_a_duplicate(
    any_broker: Config,
) -> None:
    with trio.fail_after(TIMEOUT * 2):
        async with open_gateway(any_broker) as gateway, tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, workspace_id="W")
            event = {"workspace_id": "W", "kind": "x", "idempotency_key": "e1"}
            update = {
                "session_id": "S",
                "workspace_id": "W",
                "lifecycle": "ended",
                "idempotency_key": "u1",
            }
            for _ in range(2):
                assert (await post(gateway.port, "/api/events", [event]))[0] == 202
                assert (await post(gateway.port, "/api/session-updates", update))[0] == 202
            assert await post(gateway.port, "/api/events", event) == (
                202,
                {"accepted": 1, "duplicates": 1},
            )
            assert await post(gateway.port, "/api/events", {"workspace_id": "W", "kind": "y"}) == (
                202,
                {"accepted": 1},
            )
            frames = [await receive_json(ws) for _ in range(3)]
            # The key is the publisher's: clients get the event without it.
            assert frames == [
                {"type": "event", "event": {"workspace_id": "W", "kind": "x"}},
                {"type": "session.update", "session_id": "S", "lifecycle": "ended"},
                {"type": "event", "event": {"workspace_id": "W", "kind": "y"}},
            ]


@pytest.mark.parametrize("key", ["", 7, "k" * 201])
async def test_a_bad_idempotency_key_is_a_400_and_nothing_is_published(
    config: Config, key: object
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_gateway(config) as gateway:
            status, body = await post(
                gateway.port,
                "/api/publish",
                [{"topic": "t", "data": 1}, {"topic": "t", "data": 2, "idempotency_key": key}],
            )
            assert (status, body) == (
                400,
                {
                    "error": "messages[1]: idempotency_key must be a non-empty string of at "
                    "most 200 characters",
                    "index": 1,
                },
            )
            assert await post(gateway.port, "/api/publish", {"topic": "t", "data": 3}) == (
                202,
                {"accepted": 1, "offsets": [1]},
            )


async def _deliver(round_: list[Delivery]) -> None:
    await trio.lowlevel.checkpoint()


async def test_the_memory_broker_forgets_a_key_after_idempotency_ttl(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    broker = MemoryBroker(with_settings(config, idempotency_ttl=300.0), round_size=8)
    await nursery.start(broker.run, _deliver)
    keyed = event_publication({"workspace_id": "W"})
    keyed = attrs.evolve(keyed, idempotency_key="k")
    assert await broker.publish([keyed, keyed]) == [
        Assigned((1, 1)),
        Assigned((1, 1), duplicate=True),
    ]
    await trio.sleep(299)
    assert await broker.publish([keyed]) == [Assigned((1, 1), duplicate=True)]
    await trio.sleep(1)
    assert await broker.publish([keyed]) == [Assigned((2, 2))]
