"""The fan-out fast path: pre-built frames, coalesced writes, order with control frames."""

from __future__ import annotations

import functools
import json

import trio
import trio.lowlevel
import trio.testing

from trio_gateway import Config, Gateway, serve
from trio_gateway.fanout.broadcaster import event_publication

from .helpers import (
    TIMEOUT,
    MemoryListener,
    memory_client,
    ready,
    receive_json,
    subscribe,
    tcp_client,
)


class RecordingListener(MemoryListener):
    """A MemoryListener whose server-side streams record the size of every write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    async def accept(self) -> trio.abc.Stream:
        stream = await super().accept()
        assert isinstance(stream, trio.StapledStream)
        record = self.writes.append
        send_stream = stream.send_stream
        original = send_stream.send_all

        async def recording_send_all(data: bytes | bytearray | memoryview) -> None:
            record(len(data))
            await original(data)

        send_stream.send_all = recording_send_all
        return stream


async def test_a_burst_goes_out_in_few_writes(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    listener = RecordingListener()
    gateway: Gateway = await nursery.start(functools.partial(serve, config, listeners=[listener]))
    async with memory_client(listener) as ws:
        await ready(ws)
        await subscribe(ws, workspace_id="W")
        await trio.testing.wait_all_tasks_blocked()
        writes_before = len(listener.writes)
        events = [{"workspace_id": "W", "n": n} for n in range(100)]
        gateway.broadcaster.send_nowait(*(event_publication(event) for event in events))
        for n in range(100):
            assert (await receive_json(ws))["event"]["n"] == n
        # 100 frames of ~60 bytes queued at once leave in one write per fan-out round
        # (rounds of queue_depth // 4 = 64 publications), not a hundred.
        assert len(listener.writes) - writes_before <= 2


async def test_fan_out_and_protocol_pings_interleave_without_tearing(gateway: Gateway) -> None:
    total = 2000
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, scope="all")
            received: list[int] = []

            async def read_all() -> None:
                while len(received) < total:
                    message = await ws.get_message()
                    received.append(json.loads(message)["event"]["n"])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                for n in range(total):
                    gateway.broadcaster.broadcast_event({"workspace_id": "W", "n": n})
                    if n % 100 == 0:
                        # A protocol-level ping: its pong is written by trio-websocket's
                        # reader while our writer is streaming frames.
                        nursery.start_soon(ws.ping)
                        await trio.lowlevel.checkpoint()
            assert received == list(range(total))


async def test_large_messages_cross_the_coalescing_limit_intact(gateway: Gateway) -> None:
    sizes = [10, 70_000, 5, 200_000, 65_536, 1]
    with trio.fail_after(TIMEOUT):
        async with tcp_client(gateway.port) as ws:
            await ready(ws)
            await subscribe(ws, workspace_id="W")
            for n, size in enumerate(sizes):
                pad = "x" * size + "é"
                gateway.broadcaster.broadcast_event({"workspace_id": "W", "n": n, "pad": pad})
            for n, size in enumerate(sizes):
                event = (await receive_json(ws))["event"]
                assert (event["n"], event["pad"]) == (n, "x" * size + "é")


async def test_the_direct_write_is_unhooked_before_the_socket_closes(gateway: Gateway) -> None:
    # The direct path writes to the descriptor number the socket had when it opened; once
    # the session is over that number may belong to a newer connection.
    async with tcp_client(gateway.addresses[0][1]) as ws:
        client_id = await ready(ws)
        client = gateway.hub.clients[client_id]
        assert client.outbox.direct is not None
    with trio.fail_after(TIMEOUT):
        while client_id in gateway.hub.clients:
            await trio.testing.wait_all_tasks_blocked()
    assert client.outbox.direct is None
