"""The in-process publishing API and the publisher task, over real trio memory channels."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers import recording_writer, unframe
from trio_gateway import Broadcaster, Config, GatewayClosed, PublishQueueFull
from trio_gateway.broker.memory import MemoryBroker
from trio_gateway.fanout.broadcaster import (
    Batch,
    Publication,
    event_publication,
    remote_update_publication,
    run_publisher,
    session_update_publication,
)
from trio_gateway.fanout.flusher import Flusher
from trio_gateway.fanout.hub import Client, Hub
from trio_gateway.fanout.outbox import Outbox
from trio_gateway.fanout.publication import Retain


def open_broadcaster(depth: int = 16) -> tuple[Broadcaster, trio.MemoryReceiveChannel[Batch]]:
    send, receive = trio.open_memory_channel[Batch](depth)
    return Broadcaster(send, MemoryBroker(Config(), 8)), receive


def queued(receive: trio.MemoryReceiveChannel[Batch]) -> list[tuple[Publication, ...]]:
    batches = []
    while True:
        try:
            batches.append(receive.receive_nowait().publications)
        except (trio.WouldBlock, trio.EndOfChannel):
            return batches


async def start_publisher(
    nursery: trio.Nursery, receive: trio.MemoryReceiveChannel[Batch], hub: Hub, round_size: int
) -> None:
    """The publisher task over an in-memory broker delivering to `hub`, as serve() runs it.

    The task ends when run_publisher does (the broker's sweep would run forever).
    """
    broker = MemoryBroker(Config(), round_size)

    async def publisher(task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as inner:
            await inner.start(hub.flusher.run)
            await inner.start(broker.run, hub.deliver)
            await run_publisher(receive, broker, round_size, task_status=task_status)
            inner.cancel_scope.cancel()

    await nursery.start(publisher)


def subscriber(hub: Hub, client_id: str, *keys: str) -> Outbox:
    outbox = Outbox(64)
    client = Client(id=client_id, outbox=outbox, connected_at=0.0, last_seen=0.0)
    hub.add(client)
    for key in keys:
        hub.subscribe(client, key)
    return outbox


def frames(outbox: Outbox) -> list[dict[str, Any]]:
    return [json.loads(unframe(frame)) for frame in outbox.take_nowait()]


# --- building publications -----------------------------------------------------------------


def test_event_publication_text_and_keys() -> None:
    event = {"workspace_id": "w1", "session_id": "s1", "kind": "x", "data": {"n": 1}}
    publication = event_publication(event)
    assert publication == Publication(
        '{"type":"event","event":{"workspace_id":"w1","session_id":"s1","kind":"x",'
        '"data":{"n":1}}}',
        ("all", "workspace:w1", "session:s1"),
    )
    assert event_publication({"workspace_id": "w1", "session_id": None}).keys == (
        "all",
        "workspace:w1",
    )


def test_session_update_publication_text_and_keys() -> None:
    publication = session_update_publication("s1", "w1", "ended", "done", {"duration_ms": 5})
    assert publication == Publication(
        '{"type":"session.update","session_id":"s1","lifecycle":"ended",'
        '"summary":"done","stats":{"duration_ms":5}}',
        ("all", "workspace:w1", "session:s1"),
        # Retained as the session's state, for clients that subscribe later.
        retain=Retain(
            "session:s1",
            '{"type":"session.state","session_id":"s1","lifecycle":"ended",'
            '"summary":"done","stats":{"duration_ms":5}}',
        ),
    )
    # The workspace routes the message but is not part of the seed's wire shape.
    assert session_update_publication("s1", "w1", "active").body == (
        '{"type":"session.update","session_id":"s1","lifecycle":"active"}'
    )


def test_remote_update_publication_text_and_keys() -> None:
    assert remote_update_publication("r1", "w1", "ready", "1.2.3.4") == Publication(
        '{"type":"remote.update","remote_env_id":"r1","status":"ready","public_ip":"1.2.3.4"}',
        ("all", "workspace:w1"),
    )
    assert remote_update_publication("r1", "w1", "stopped").body == (
        '{"type":"remote.update","remote_env_id":"r1","status":"stopped"}'
    )


# --- malformed arguments raise ValueError and queue nothing --------------------------------


@pytest.mark.parametrize(
    ("event", "match"),
    [
        ({"workspace_id": ""}, "workspace_id must be a non-empty string"),
        ({}, "workspace_id must be a non-empty string"),
        ({"workspace_id": 5}, "workspace_id must be a non-empty string"),
        (["workspace_id", "w"], "event must be a JSON object"),
        ("w", "event must be a JSON object"),
        (None, "event must be a JSON object"),
        ({"workspace_id": "w", "session_id": 1}, "session_id must be a string or null"),
        ({"workspace_id": "w", "session_id": ["s"]}, "session_id must be a string or null"),
        ({"workspace_id": "w", "x": object()}, "not JSON-serialisable"),
        ({"workspace_id": "w", "x": {1, 2}}, "not JSON-serialisable"),
        ({"workspace_id": "w", "x": float("nan")}, "not JSON-serialisable"),
        ({"workspace_id": "w", "x": [float("inf")]}, "not JSON-serialisable"),
    ],
)
def test_broadcast_event_rejects_malformed_event(event: Any, match: str) -> None:
    broadcaster, receive = open_broadcaster()
    with pytest.raises(ValueError, match=match):
        broadcaster.broadcast_event(event)
    assert queued(receive) == []


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", "w", "active"), "session_id must be a non-empty string"),
        ((None, "w", "active"), "session_id must be a non-empty string"),
        ((1, "w", "active"), "session_id must be a non-empty string"),
        (("s", "", "active"), "workspace_id must be a non-empty string"),
        (("s", "w", ""), "lifecycle must be a non-empty string"),
        (("s", "w", "active", 5), "summary must be a string"),
        (("s", "w", "active", None, ["x"]), "stats must be an object"),
        (("s", "w", "active", None, {"x": object()}), "not JSON-serialisable"),
        (("s", "w", "active", None, {"cost": float("nan")}), "not JSON-serialisable"),
    ],
)
def test_broadcast_session_update_rejects_malformed_args(args: tuple[Any, ...], match: str) -> None:
    broadcaster, receive = open_broadcaster()
    with pytest.raises(ValueError, match=match):
        broadcaster.broadcast_session_update(*args)
    assert queued(receive) == []


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", "w", "ready"), "remote_env_id must be a non-empty string"),
        (("r", "", "ready"), "workspace_id must be a non-empty string"),
        (("r", None, "ready"), "workspace_id must be a non-empty string"),
        (("r", "w", ""), "status must be a non-empty string"),
        (("r", "w", "ready", ""), "public_ip must be a non-empty string"),
        (("r", "w", "ready", 1234), "public_ip must be a non-empty string"),
    ],
)
def test_broadcast_remote_update_rejects_malformed_args(args: tuple[Any, ...], match: str) -> None:
    broadcaster, receive = open_broadcaster()
    with pytest.raises(ValueError, match=match):
        broadcaster.broadcast_remote_update(*args)
    assert queued(receive) == []


# --- queueing ------------------------------------------------------------------------------


def test_broadcast_methods_queue_one_publication_each() -> None:
    broadcaster, receive = open_broadcaster()
    broadcaster.broadcast_event({"workspace_id": "w", "n": 1})
    broadcaster.broadcast_session_update("s", "w", "active")
    broadcaster.broadcast_remote_update("r", "w", "ready")
    assert queued(receive) == [
        (event_publication({"workspace_id": "w", "n": 1}),),
        (session_update_publication("s", "w", "active"),),
        (remote_update_publication("r", "w", "ready"),),
    ]


def test_event_is_copied_when_queued() -> None:
    broadcaster, receive = open_broadcaster()
    event: dict[str, Any] = {"workspace_id": "w", "n": 1}
    broadcaster.broadcast_event(event)
    event["n"] = 2
    (batch,) = queued(receive)
    assert json.loads(batch[0].body)["event"]["n"] == 1


def test_full_publish_queue_raises_publish_queue_full() -> None:
    broadcaster, receive = open_broadcaster(depth=1)
    broadcaster.broadcast_event({"workspace_id": "w", "n": 1})
    with pytest.raises(PublishQueueFull):
        broadcaster.broadcast_event({"workspace_id": "w", "n": 2})
    with pytest.raises(PublishQueueFull):
        broadcaster.broadcast_session_update("s", "w", "active")
    with pytest.raises(PublishQueueFull):
        broadcaster.broadcast_remote_update("r", "w", "ready")
    # Nothing was dropped silently or half-queued: only the first publication is there.
    assert queued(receive) == [(event_publication({"workspace_id": "w", "n": 1}),)]
    broadcaster.broadcast_event({"workspace_id": "w", "n": 3})  # room again


def test_validation_comes_before_the_full_queue_check() -> None:
    broadcaster, _receive = open_broadcaster(depth=1)
    broadcaster.broadcast_event({"workspace_id": "w"})
    with pytest.raises(ValueError, match="workspace_id"):
        broadcaster.broadcast_event({"workspace_id": ""})


def test_closed_broadcaster_raises_gateway_closed() -> None:
    broadcaster, receive = open_broadcaster()
    broadcaster.broadcast_event({"workspace_id": "w"})
    broadcaster.close()
    with pytest.raises(GatewayClosed):
        broadcaster.broadcast_event({"workspace_id": "w"})
    with pytest.raises(GatewayClosed):
        broadcaster.broadcast_session_update("s", "w", "active")
    with pytest.raises(GatewayClosed):
        broadcaster.broadcast_remote_update("r", "w", "ready")
    with pytest.raises(GatewayClosed):
        broadcaster.send_nowait(event_publication({"workspace_id": "w"}))
    broadcaster.close()  # idempotent
    # What was queued before close is still there for the publisher task to drain.
    assert len(queued(receive)) == 1


def test_gateway_closed_when_publisher_task_is_gone() -> None:
    broadcaster, receive = open_broadcaster()
    receive.close()
    with pytest.raises(GatewayClosed):
        broadcaster.broadcast_event({"workspace_id": "w"})


async def test_publish_after_close_raises_gateway_closed() -> None:
    broadcaster, _receive = open_broadcaster()
    broadcaster.close()
    with pytest.raises(GatewayClosed):
        await broadcaster.send(event_publication({"workspace_id": "w"}))


async def test_publish_keeps_a_batch_together() -> None:
    broadcaster, receive = open_broadcaster()
    first = event_publication({"workspace_id": "w", "n": 1})
    second = session_update_publication("s", "w", "active")
    third = remote_update_publication("r", "w", "ready")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broadcaster.send, first, second, third)
        await trio.testing.wait_all_tasks_blocked()
        broadcaster.send_nowait(second, first)
        assert queued(receive) == [(first, second, third), (second, first)]
        nursery.cancel_scope.cancel()


async def test_publish_returns_once_the_broker_took_the_batch() -> None:
    hub = Hub()
    everyone = subscriber(hub, "everyone", "all")
    broadcaster, receive = open_broadcaster()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await start_publisher(nursery, receive, hub, 8)
            await broadcaster.send(event_publication({"workspace_id": "w", "n": 1}))
            # Returned: already in the subscriber's queue, not merely in the publish queue.
            assert [frame["event"]["n"] for frame in frames(everyone)] == [1]
            broadcaster.close()


async def test_batches_left_when_the_publisher_is_cancelled_fail_with_gateway_closed() -> None:
    broadcaster, receive = open_broadcaster()
    outcomes: list[str] = []

    async def publish() -> None:
        try:
            await broadcaster.send(event_publication({"workspace_id": "w"}))
        except GatewayClosed:
            outcomes.append("closed")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:
                scope.cancel()
                await run_publisher(receive, MemoryBroker(Config(), 8), 8)
    assert outcomes == ["closed"]


async def test_publish_waits_for_room_instead_of_raising() -> None:
    broadcaster, receive = open_broadcaster(depth=1)
    first = event_publication({"workspace_id": "w", "n": 1})
    second = event_publication({"workspace_id": "w", "n": 2})
    broadcaster.send_nowait(first)
    published = trio.Event()

    async def publisher() -> None:
        await broadcaster.send(second)
        published.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()
        assert not published.is_set()
        assert (await receive.receive()).publications == (first,)
        # Room again: the waiting batch is queued; it returns once it has been published.
        batch = await receive.receive()
        assert batch.publications == (second,)
        assert batch.done is not None
        batch.done.set()
        await published.wait()


async def test_publish_blocked_on_a_full_queue_raises_gateway_closed_on_close() -> None:
    broadcaster, receive = open_broadcaster(depth=1)
    broadcaster.send_nowait(event_publication({"workspace_id": "w"}))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def publisher() -> None:
                with pytest.raises(GatewayClosed):
                    await broadcaster.send(event_publication({"workspace_id": "w"}))

            nursery.start_soon(publisher)
            await trio.testing.wait_all_tasks_blocked()
            receive.close()


# --- the publisher task ---------------------------------------------------------------------


async def test_run_publisher_fans_out_in_order_and_ends_when_closed() -> None:
    hub = Hub()
    everyone = subscriber(hub, "everyone", "all")
    workspace = subscriber(hub, "workspace", "workspace:w1")
    session = subscriber(hub, "session", "session:s1")
    other = subscriber(hub, "other", "workspace:w2")
    broadcaster, receive = open_broadcaster()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await start_publisher(nursery, receive, hub, 8)
            broadcaster.broadcast_event({"workspace_id": "w1", "session_id": "s1", "n": 1})
            await broadcaster.send(
                session_update_publication("s1", "w1", "active"),
                remote_update_publication("r1", "w1", "ready"),
            )
            broadcaster.broadcast_event({"workspace_id": "w2", "n": 2})
            broadcaster.broadcast_event({"workspace_id": "w1", "n": 3})
            broadcaster.close()
        # Leaving the nursery proves run_broadcast returned once the channel was closed.

    event_1 = {"type": "event", "event": {"workspace_id": "w1", "session_id": "s1", "n": 1}}
    session_update = {"type": "session.update", "session_id": "s1", "lifecycle": "active"}
    remote_update = {"type": "remote.update", "remote_env_id": "r1", "status": "ready"}
    event_2 = {"type": "event", "event": {"workspace_id": "w2", "n": 2}}
    event_3 = {"type": "event", "event": {"workspace_id": "w1", "n": 3}}
    assert frames(everyone) == [event_1, session_update, remote_update, event_2, event_3]
    assert frames(workspace) == [event_1, session_update, remote_update, event_3]
    assert frames(session) == [event_1, session_update]
    assert frames(other) == [event_2]


async def test_run_publisher_drains_what_was_queued_before_close() -> None:
    hub = Hub()
    everyone = subscriber(hub, "everyone", "all")
    broadcaster, receive = open_broadcaster()
    for n in range(10):
        broadcaster.broadcast_event({"workspace_id": "w", "n": n})
    broadcaster.close()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await start_publisher(nursery, receive, hub, 8)
    assert [frame["event"]["n"] for frame in frames(everyone)] == list(range(10))
    with pytest.raises(trio.ClosedResourceError):
        receive.receive_nowait()  # run_publisher closed its end on the way out


async def test_run_publisher_reports_started_before_consuming() -> None:
    hub = Hub()
    everyone = subscriber(hub, "everyone", "all")
    broadcaster, receive = open_broadcaster()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await start_publisher(nursery, receive, hub, 8)
            broadcaster.broadcast_event({"workspace_id": "w", "n": 1})
            await trio.testing.wait_all_tasks_blocked()
            assert [frame["event"]["n"] for frame in frames(everyone)] == [1]
            broadcaster.broadcast_event({"workspace_id": "w", "n": 2})
            await trio.testing.wait_all_tasks_blocked()
            assert [frame["event"]["n"] for frame in frames(everyone)] == [2]
            broadcaster.close()


async def test_a_batch_larger_than_a_client_queue_reaches_a_reading_client() -> None:
    # One HTTP batch may hold more events than a client's queue: it is fanned out in rounds
    # with the writers running in between, so a client that keeps reading is not "slow".
    # (max_ahead as the server sets it: half the queue.)
    hub = Hub(Flusher(max_ahead=4))
    outbox = Outbox(8)
    client = Client(id="c", outbox=outbox, connected_at=0.0, last_seen=0.0)
    hub.add(client)
    hub.subscribe(client, "all")
    send, receive = trio.open_memory_channel[Batch](4)
    async with trio.open_nursery() as nursery:
        takes = recording_writer(nursery, outbox)
        await start_publisher(nursery, receive, hub, 2)
        await send.send(
            Batch(tuple(event_publication({"workspace_id": "w", "n": n}) for n in range(50)))
        )
        await send.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert client.close_reason is None  # never taken for a slow consumer
        # The flusher ended with the publisher: the rest is flushed as a closing
        # connection flushes it.
        outbox.flush()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    received = [frame for frames in takes for frame in frames]
    assert [json.loads(unframe(frame))["event"]["n"] for frame in received] == list(range(50))
