"""Hub and Client over real outboxes: routing, de-duplication, slow consumers, recovery.

The hub never awaits, so these tests are synchronous: queuing into an outbox and reading
what it holds need no running event loop.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from trio_gateway.fanout.hub import Client, Hub
from trio_gateway.fanout.outbox import Outbox
from trio_gateway.fanout.publication import Delivery, Extra
from trio_gateway.protocol.errors import PONG_TIMEOUT, SHUTTING_DOWN, SLOW_CONSUMER
from trio_gateway.protocol.routing import route_keys


def item(frame: bytes, keys: Iterable[str]) -> Delivery:
    """A publication as the hub gets it, with the same frame for every client."""
    keys = tuple(keys)
    return Delivery(frame, frame, keys, tuple(range(1, len(keys) + 1)), None, None)


def make_client(client_id: str, depth: int = 16) -> tuple[Client, Outbox]:
    outbox = Outbox(depth)
    return Client(id=client_id, outbox=outbox, connected_at=0.0, last_seen=0.0), outbox


def drain(outbox: Outbox) -> list[str]:
    """What was queued, decoded for readable assertions (the hub passes bytes through as is)."""
    return [frame.decode() for frame in outbox.take_nowait()]


def test_publish_reaches_exactly_the_matching_clients() -> None:
    hub = Hub()
    subscriptions = {
        "all": "all",
        "w1": "workspace:w1",
        "s1": "session:s1",
        "w2": "workspace:w2",
        "s2": "session:s2",
        "none": None,
    }
    outboxes = {}
    for name, key in subscriptions.items():
        client, receive = make_client(name)
        hub.add(client)
        if key is not None:
            hub.subscribe(client, key)
        outboxes[name] = receive

    assert hub.publish_many([item(b"frame-1", route_keys("w1", "s1"))]) == 3
    assert hub.publish_many([item(b"frame-2", route_keys("w2", None))]) == 2
    assert hub.publish_many([item(b"frame-3", route_keys("w3", "s2"))]) == 2

    assert {name: drain(receive) for name, receive in outboxes.items()} == {
        "all": ["frame-1", "frame-2", "frame-3"],
        "w1": ["frame-1"],
        "s1": ["frame-1"],
        "w2": ["frame-2"],
        "s2": ["frame-3"],
        "none": [],
    }


def test_client_matching_several_keys_gets_one_copy() -> None:
    hub = Hub()
    client, receive = make_client("c")
    hub.add(client)
    for key in ("all", "workspace:w", "session:s"):
        hub.subscribe(client, key)
    other, other_receive = make_client("o")
    hub.add(other)
    hub.subscribe(other, "session:s")

    assert hub.publish_many([item(b"once", route_keys("w", "s"))]) == 2
    assert drain(receive) == ["once"]
    assert drain(other_receive) == ["once"]


def test_publish_queues_the_same_serialised_object() -> None:
    hub = Hub()
    received = []
    for name in ("a", "b"):
        client, receive = make_client(name)
        hub.add(client)
        hub.subscribe(client, "all")
        received.append(receive)
    text = b"".join([b"{", b'"type":"event"', b"}"])  # built at runtime: a distinct object
    hub.publish_many([item(text, ("all",))])
    assert all(receive.take_nowait()[0] is text for receive in received)


def test_publish_returns_zero_without_subscribers() -> None:
    hub = Hub()
    client, receive = make_client("c")
    hub.add(client)
    hub.subscribe(client, "workspace:other")
    assert hub.publish_many([item(b"x", route_keys("w", "s"))]) == 0
    assert hub.publish_many([item(b"x", ())]) == 0
    assert drain(receive) == []


def test_publish_accepts_any_iterable_of_keys() -> None:
    hub = Hub()
    client, receive = make_client("c")
    hub.add(client)
    hub.subscribe(client, "session:s")
    assert hub.publish_many([item(b"x", (key for key in ["all", "session:s"]))]) == 1
    assert drain(receive) == ["x"]


def test_subscribe_is_idempotent_and_unsubscribe_drops_empty_keys() -> None:
    hub = Hub()
    a, _ = make_client("a")
    b, _ = make_client("b")
    hub.add(a)
    hub.add(b)
    hub.subscribe(a, "all")
    hub.subscribe(a, "all")
    hub.subscribe(b, "all")
    hub.subscribe(b, "workspace:w")
    assert a.subscriptions == {"all"}
    assert hub.subscription_count() == 2

    hub.unsubscribe(b, "workspace:w")
    assert hub.subscription_count() == 1
    hub.unsubscribe(b, "workspace:w")  # not subscribed: no error
    hub.unsubscribe(a, "never-subscribed")
    assert hub.publish_many([item(b"x", ("all",))]) == 2

    hub.unsubscribe_all(a)
    hub.unsubscribe_all(b)
    assert a.subscriptions == set()
    assert b.subscriptions == set()
    assert hub.subscription_count() == 0
    assert len(hub) == 2


def test_remove_clears_client_and_all_its_index_entries() -> None:
    hub = Hub()
    client, receive = make_client("c")
    stay, stay_receive = make_client("stay")
    hub.add(client)
    hub.add(stay)
    for key in ("all", "workspace:w", "session:s"):
        hub.subscribe(client, key)
    hub.subscribe(stay, "all")
    assert hub.subscription_count() == 3
    assert len(hub) == 2

    hub.remove(client)
    assert len(hub) == 1
    assert "c" not in hub.clients
    assert client.subscriptions == set()
    assert hub.subscription_count() == 1
    assert hub.publish_many([item(b"after", route_keys("w", "s"))]) == 1
    assert drain(receive) == []
    assert drain(stay_receive) == ["after"]

    hub.remove(stay)
    hub.remove(stay)  # idempotent
    assert len(hub) == 0
    assert hub.subscription_count() == 0
    assert hub.publish_many([item(b"nobody", route_keys("w", "s"))]) == 0


def test_full_outbox_closes_slow_consumer_without_affecting_others() -> None:
    hub = Hub()
    slow, slow_receive = make_client("slow", depth=2)
    fast, fast_receive = make_client("fast", depth=16)
    for client in (slow, fast):
        hub.add(client)
        hub.subscribe(client, "all")

    assert hub.publish_many([item(b"1", ("all",))]) == 2
    assert hub.publish_many([item(b"2", ("all",))]) == 2
    assert slow.close_reason is None

    assert hub.publish_many([item(b"3", ("all",))]) == 1  # the slow client's outbox is full
    assert slow.close_reason == SLOW_CONSUMER
    assert slow.close_reason.code == 4008
    assert slow.close_reason.reason == "Slow consumer"
    assert slow.reader_scope.cancel_called
    assert slow.flush_before_close is False

    # Skipped from then on, even once its outbox has room again.
    assert drain(slow_receive) == ["1", "2"]
    assert slow.send(b"4") is False
    assert hub.publish_many([item(b"5", ("all",))]) == 1
    assert drain(slow_receive) == []
    assert drain(fast_receive) == ["1", "2", "3", "5"]


def test_send_reports_delivery() -> None:
    client, receive = make_client("c", depth=1)
    assert client.send(b"a") is True
    assert client.send(b"b") is False
    assert client.close_reason == SLOW_CONSUMER
    assert drain(receive) == ["a"]


def test_first_close_reason_wins() -> None:
    client, _ = make_client("c")
    client.close(PONG_TIMEOUT)
    client.close(SLOW_CONSUMER)
    client.close(SHUTTING_DOWN, flush=True)
    assert client.close_reason == PONG_TIMEOUT
    assert client.flush_before_close is False
    assert client.reader_scope.cancel_called


def test_close_with_flush_records_it() -> None:
    client, receive = make_client("c")
    assert client.send(b"queued") is True
    client.close(SHUTTING_DOWN, flush=True)
    assert client.close_reason == SHUTTING_DOWN
    assert client.flush_before_close is True
    assert client.send(b"late") is False
    assert drain(receive) == ["queued"]


def test_closing_client_full_outbox_keeps_first_reason() -> None:
    client, _ = make_client("c", depth=1)
    client.close(PONG_TIMEOUT)
    assert client.send(b"x") is False
    assert client.close_reason == PONG_TIMEOUT


def test_send_after_outbox_closed_returns_false() -> None:
    client, receive = make_client("c")
    client.outbox.close()
    assert client.send(b"x") is False
    hub = Hub()
    hub.add(client)
    hub.subscribe(client, "all")
    assert hub.publish_many([item(b"y", ("all",))]) == 0
    assert drain(receive) == []


@pytest.mark.parametrize("depth", [1, 3])
def test_slow_consumer_during_fan_out_does_not_disturb_iteration(depth: int) -> None:
    hub = Hub()
    clients = []
    for index in range(10):
        # Every other client has a tiny outbox and overflows mid-fan-out.
        client, receive = make_client(f"c{index}", depth=depth if index % 2 else 100)
        hub.add(client)
        hub.subscribe(client, "all")
        hub.subscribe(client, f"workspace:{index}")
        clients.append((client, receive))
    counts = [
        hub.publish_many([item(str(n).encode(), route_keys(str(n % 10), None))])
        for n in range(depth + 1)
    ]
    assert counts == [10] * depth + [5]
    for index, (client, receive) in enumerate(clients):
        if index % 2:
            assert client.close_reason == SLOW_CONSUMER
            assert drain(receive) == [str(n) for n in range(depth)]
        else:
            assert client.close_reason is None
            assert drain(receive) == [str(n) for n in range(depth + 1)]


def test_recovery_keeps_publications_aside_with_their_offsets() -> None:
    hub = Hub()
    client, outbox = make_client("c")
    hub.add(client)
    hub.begin_recovery(client, "workspace:w")
    hub.publish_many([Delivery(b"p1", b"c1", ("workspace:w",), (7,), None, None)])
    assert drain(outbox) == []
    assert hub.end_recovery(client, "workspace:w") == [(7, b"p1")]  # no offsets asked for
    hub.publish_many([item(b"live", ("workspace:w",))])
    assert drain(outbox) == ["live"]


def test_exclusions_apply_to_what_is_kept_aside_during_recovery() -> None:
    hub = Hub()
    excluded, _ = make_client("excluded")
    other, _ = make_client("other")
    for client in (excluded, other):
        hub.add(client)
        hub.begin_recovery(client, "workspace:w")
    hub.publish_many(
        [Delivery(b"p", b"c", ("workspace:w",), (1,), None, Extra(exclude_client="excluded"))]
    )
    assert hub.end_recovery(excluded, "workspace:w") == []
    assert hub.end_recovery(other, "workspace:w") == [(1, b"p")]
