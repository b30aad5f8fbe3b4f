"""The flusher: a fan-out is queued at once and written a slice of clients at a time.

Each client here has a real Outbox and a writer that records each take, i.e. each write it
would make (without a direct path, flushing an outbox starts its writer; the direct path
itself is tested in test_outbox.py over real sockets).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import attrs
import trio
import trio.testing

from trio_gateway.fanout.flusher import Flusher
from trio_gateway.fanout.hub import Client, Hub
from trio_gateway.fanout.outbox import Outbox
from trio_gateway.fanout.publication import Delivery

from .helpers import recording_writer

# Small slices, so that a handful of clients make several.
SLICE = 16
CLIENTS = 6 * SLICE


def item(frame: bytes) -> Delivery:
    return Delivery(frame, frame, ("all",), (1,), None, None)


@attrs.define
class Recipient:
    client: Client
    takes: list[list[bytes]]

    @property
    def writes(self) -> list[bytes]:
        return [b"".join(frames) for frames in self.takes]


async def recipients(nursery: trio.Nursery, hub: Hub, depth: int = 16) -> list[Recipient]:
    made = []
    for n in range(CLIENTS):
        client = Client(id=f"c{n}", outbox=Outbox(depth), connected_at=0.0, last_seen=0.0)
        recipient = Recipient(client, recording_writer(nursery, client.outbox))
        hub.add(client)
        hub.subscribe(client, "all")
        made.append(recipient)
    await nursery.start(hub.flusher.run)
    await trio.testing.wait_all_tasks_blocked()
    return made


def written(everyone: list[Recipient]) -> int:
    return sum(1 for recipient in everyone if recipient.writes)


async def test_a_fan_out_is_written_in_slices_with_other_tasks_running_between(
    nursery: trio.Nursery,
) -> None:
    hub = Hub(Flusher(SLICE))
    everyone = await recipients(nursery, hub)
    assert hub.publish_many([item(b"e1")]) == CLIENTS
    assert written(everyone) == 0  # queued only: the flusher writes
    seen = []
    while (count := written(everyone)) < CLIENTS:
        seen.append(count)
        await trio.lowlevel.checkpoint()
    # This task ran while the fan-out was under way, more than once.
    assert len([count for count in seen if 0 < count < CLIENTS]) >= 2
    assert all(recipient.writes == [b"e1"] for recipient in everyone)


async def test_a_publication_queued_mid_pass_joins_the_write_of_clients_not_reached(
    nursery: trio.Nursery,
) -> None:
    hub = Hub(Flusher(SLICE))
    everyone = await recipients(nursery, hub)
    hub.publish_many([item(b"e1")])
    while written(everyone) == 0:
        await trio.lowlevel.checkpoint()
    reached = written(everyone)
    assert reached < CLIENTS
    hub.publish_many([item(b"e2")])
    await trio.testing.wait_all_tasks_blocked()
    # Order is kept for everyone; those not reached yet got both in one write.
    assert all(b"".join(recipient.writes) == b"e1e2" for recipient in everyone)
    joined = [recipient for recipient in everyone if recipient.writes == [b"e1e2"]]
    assert len(joined) >= CLIENTS - reached - SLICE
    assert len(joined) >= SLICE


async def test_deliver_keeps_a_producer_within_max_ahead_of_the_sockets(
    nursery: trio.Nursery,
) -> None:
    # Outboxes of two frames, rounds of one and at most one publication ahead (queue_depth 2
    # gives max_ahead 1), and the direct path over real sockets (as a connection has it): a
    # producer that ran ahead of the flusher would overflow clients the flusher has not
    # reached yet and close them as slow consumers.
    hub = Hub(Flusher(SLICE, max_ahead=1))
    async with direct_clients(nursery, hub, 2 * SLICE + 8, depth=2) as (clients, peers):
        for n in range(20):
            await hub.deliver([item(b"%02d" % n)])
        await trio.testing.wait_all_tasks_blocked()
        assert all(client.close_reason is None for client in clients)
        expected = b"".join(b"%02d" % n for n in range(20))
        assert all(pending(theirs) == expected for theirs in peers)


@contextlib.asynccontextmanager
async def direct_clients(
    nursery: trio.Nursery, hub: Hub, count: int, depth: int
) -> AsyncIterator[tuple[list[Client], list[socket.socket]]]:
    """`count` clients of `hub` over real sockets with the direct path a connection lends
    its outbox, and the peers' ends (non-blocking); the flusher task running."""
    pairs = [socket.socketpair() for _ in range(count)]
    try:
        clients = []
        for n, (ours, theirs) in enumerate(pairs):
            ours.setblocking(False)
            theirs.setblocking(False)
            client = Client(id=f"c{n}", outbox=Outbox(depth), connected_at=0.0, last_seen=0.0)
            client.outbox.direct = Direct()
            client.outbox.fd = ours.fileno()
            hub.add(client)
            hub.subscribe(client, "all")
            recording_writer(nursery, client.outbox)
            clients.append(client)
        await nursery.start(hub.flusher.run)
        await trio.testing.wait_all_tasks_blocked()
        yield clients, [theirs for _, theirs in pairs]
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


class Direct:
    """The direct path a connection lends its outbox, over a plain socket (whose number
    is the outbox's `fd`)."""

    def wrote_partly(self) -> None:
        raise AssertionError("a few bytes always fit")


async def test_small_rounds_are_not_held_back_and_share_one_write(nursery: trio.Nursery) -> None:
    # The Redis subscriber's rounds are often one message each: deliver must not wait for the
    # flusher after each of them, or a pass over the clients would carry one or two.
    hub = Hub(Flusher(SLICE, max_ahead=8))
    everyone = await recipients(nursery, hub)
    for n in range(5):
        await hub.deliver([item(b"m%d" % n)])
    assert written(everyone) == 0  # all five queued before the flusher wrote anything
    await trio.testing.wait_all_tasks_blocked()
    assert all(recipient.writes == [b"m0m1m2m3m4"] for recipient in everyone)


async def test_rounds_nobody_here_wants_never_hold_a_producer(nursery: trio.Nursery) -> None:
    hub = Hub(Flusher(SLICE, max_ahead=2))
    everyone = await recipients(nursery, hub)
    with trio.fail_after(1):
        for _ in range(10):
            await hub.deliver([Delivery(b"x", b"x", ("workspace:elsewhere",), (1,), None, None)])
    await trio.testing.wait_all_tasks_blocked()
    assert written(everyone) == 0


async def test_a_producer_handing_over_one_per_turn_catches_up_before_the_next_slice(
    nursery: trio.Nursery,
) -> None:
    # Like the Redis subscriber, which gets messages from coredis one per scheduler turn:
    # between two slices the flusher lets it run while it has work, so everything it has
    # joins this pass instead of one message per slice.
    hub = Hub(Flusher(SLICE))
    everyone = await recipients(nursery, hub)
    hub.publish_many([item(b"e0")])

    async def producer() -> None:
        for n in range(1, 5):
            await trio.lowlevel.checkpoint()
            hub.publish_many([item(b"e%d" % n)])

    nursery.start_soon(producer)
    await trio.testing.wait_all_tasks_blocked()
    assert all(b"".join(recipient.writes) == b"e0e1e2e3e4" for recipient in everyone)
    in_one_write = [recipient for recipient in everyone if len(recipient.writes) == 1]
    assert len(in_one_write) >= CLIENTS - 2 * SLICE


async def test_a_removed_client_still_listed_is_skipped(nursery: trio.Nursery) -> None:
    hub = Hub(Flusher(SLICE))
    everyone = await recipients(nursery, hub)
    hub.publish_many([item(b"e1")])
    gone = everyone[-1].client
    hub.remove(gone)
    gone.outbox.close()
    await trio.testing.wait_all_tasks_blocked()
    # Its writer took the frame when the outbox closed; no direct write happened after.
    assert everyone[-1].writes == [b"e1"]
    assert all(recipient.writes == [b"e1"] for recipient in everyone[:-1])


async def test_with_nothing_queued_the_first_slice_is_on_the_wire_before_the_fan_out_returns(
    nursery: trio.Nursery,
) -> None:
    # Over real sockets (the direct path a connection lends its outbox): the publisher's own
    # task writes the first slice, the flusher task the rest, and a publication queued while
    # that pass is under way still joins the write of every client it has not reached.
    hub = Hub(Flusher(SLICE, direct_room=SLICE))
    async with direct_clients(nursery, hub, 3 * SLICE, depth=4) as (_, peers):
        hub.publish_many([item(b"e1")])
        first = [theirs for theirs in peers if pending(theirs) == b"e1"]
        assert len(first) == SLICE
        hub.publish_many([item(b"e2")])
        assert [pending(theirs) for theirs in peers] == [b""] * len(peers)
        await trio.testing.wait_all_tasks_blocked()
        rest = [theirs for theirs in peers if theirs not in first]
        assert [pending(theirs) for theirs in first] == [b"e2"] * SLICE
        assert [pending(theirs) for theirs in rest] == [b"e1e2"] * 2 * SLICE


def pending(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1024)
    except BlockingIOError:
        return b""


async def test_a_round_its_fan_out_wrote_whole_is_observed_and_one_for_nobody_is_not(
    nursery: trio.Nursery,
) -> None:
    observed: list[float] = []
    hub = Hub(Flusher(SLICE, on_written=observed.append))
    async with direct_clients(nursery, hub, SLICE, depth=4) as (_, peers):
        await hub.deliver([item(b"e1")])
        assert all(pending(theirs) == b"e1" for theirs in peers)
        assert len(observed) == 1
        await hub.deliver([Delivery(b"x", b"x", ("workspace:elsewhere",), (1,), None, None)])
        assert len(observed) == 1


async def test_one_publication_with_nothing_queued_is_written_in_its_pass_over_the_recipients(
    nursery: trio.Nursery,
) -> None:
    # Up to the flusher's room, clients are written before publish_many returns, with nothing
    # queued for them; one whose connection is writing something else (its fd withheld) gets
    # the frame queued, for its writer; clients past the room are left to the flusher task.
    hub = Hub(Flusher(SLICE, direct_room=SLICE))
    async with direct_clients(nursery, hub, SLICE + 5, depth=4) as (clients, peers):
        busy, others = clients[0], clients[1:]
        busy.outbox.fd = -1
        taken = recording_writer(nursery, busy.outbox)
        assert hub.publish_many([item(b"e1")]) == SLICE + 5
        now = [pending(theirs) for theirs in peers[1:]]
        assert now.count(b"e1") == SLICE
        left = [client.outbox.take_nowait() for client in others]
        assert [frames for frames, got in zip(left, now, strict=True) if got] == [[]] * SLICE
        assert [frames for frames, got in zip(left, now, strict=True) if not got] == [[b"e1"]] * 4
        assert taken == []
        await trio.testing.wait_all_tasks_blocked()
        assert taken == [[b"e1"]]
        assert pending(peers[0]) == b""


async def test_a_round_of_several_publications_is_queued_and_its_first_slice_written_at_once(
    nursery: trio.Nursery,
) -> None:
    # Not the one-pass write: each client gets both publications in one write, the first
    # slice by the publishing task before publish_many returns, the rest by the flusher.
    hub = Hub(Flusher(SLICE))
    async with direct_clients(nursery, hub, 2 * SLICE, depth=4) as (_, peers):
        assert hub.publish_many([item(b"e1"), item(b"e2")]) == 4 * SLICE
        first = [theirs for theirs in peers if pending(theirs) == b"e1e2"]
        assert len(first) == SLICE
        await trio.testing.wait_all_tasks_blocked()
        rest = [pending(theirs) for theirs in peers if theirs not in first]
        assert rest == [b"e1e2"] * SLICE
