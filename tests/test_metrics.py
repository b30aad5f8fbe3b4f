"""What an operator reads: /metrics (scraped with prometheus-client's own parser), /api/stats,
/api/nodes and /api/ready, as a scripted client connects, subscribes, publishes and is closed."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from trio_gateway import Config, Gateway, open_gateway, serve
from trio_gateway.client.http import http_request

from .conftest import with_settings
from .helpers import (
    API_KEY,
    TIMEOUT,
    closed_with,
    event,
    raw_client,
    ready,
    receive_json,
    request,
    send_json,
    subscribe,
    tcp_client,
)
from .redis_server import RedisServer

METRICS_TOKEN = "scraper-token"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int, token: str | None = API_KEY) -> Samples:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    status, answer_headers, body = await http_request(
        "GET", f"http://127.0.0.1:{port}/metrics", headers=headers
    )
    assert status == 200, body
    assert dict(answer_headers)["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(("trio_gateway_" + name, tuple(sorted(labels.items()))), 0.0)


async def get_json(port: int, path: str, token: str | None = API_KEY) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    status, _, body = await http_request("GET", f"http://127.0.0.1:{port}{path}", headers=headers)
    return status, json.loads(body)


async def post_event(port: int, **fields: Any) -> None:
    status, _, body = await http_request(
        "POST",
        f"http://127.0.0.1:{port}/api/events",
        body=json.dumps(fields).encode(),
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    assert status == 202, body


async def test_counters_move_as_a_client_connects_subscribes_receives_and_leaves(
    gateway: Gateway,
) -> None:
    port = gateway.port
    with trio.fail_after(TIMEOUT):
        before = await scrape(port)
        assert value(before, "connections", transport="websocket") == 0
        assert value(before, "info", instance=gateway.instance, version=gateway.metrics.version)
        async with tcp_client(port) as ws:
            await ready(ws)
            await subscribe(ws, workspace_id="W")
            await send_json(ws, {"type": "nonsense"})
            assert (await receive_json(ws))["type"] == "error"
            await post_event(port, workspace_id="W", n=1)
            assert (await receive_json(ws))["event"]["n"] == 1
            during = await scrape(port)
        await trio.testing.wait_all_tasks_blocked()
        after = await scrape(port)
    assert value(during, "connections", transport="websocket") == 1
    assert value(during, "connects_total") == value(before, "connects_total") + 1
    assert value(during, "messages_received_total", type="subscribe") == 1
    assert value(during, "messages_received_total", type="invalid") == 1
    assert value(during, "subscriptions") == 1
    # The workspace key and the API-key user's own key.
    assert value(during, "subscription_keys") >= 1
    assert value(during, "publications_total", source="http") == 1
    assert value(during, "publications_total", source="broker") == 1
    assert value(during, "deliveries_total") == 1
    assert value(during, "broker_up") == 1
    # ready, the acks, the error reply and the event went out.
    assert value(during, "bytes_written_total") > 100
    assert value(during, "publish_write_seconds_count") == 1
    assert value(after, "connections", transport="websocket") == 0
    assert value(after, "disconnects_total", code="1000") == 1
    assert value(after, "bytes_written_total") >= value(during, "bytes_written_total")
    # prometheus-client's process collector, in the gateway's own registry.
    assert after[("process_resident_memory_bytes", ())] > 0


async def test_a_slow_consumer_counts_as_a_4008_close_and_dropped_deliveries(
    nursery: trio.Nursery, config: Config
) -> None:
    payload = "x" * (64 * 1024)
    gw: Gateway = await nursery.start(
        serve, with_settings(config, queue_depth=4, close_timeout=5.0)
    )
    with trio.fail_after(TIMEOUT):
        async with raw_client(gw.port, rcvbuf=4096) as slow:
            await ready(slow.ws)
            await subscribe(slow.ws, scope="all")
            for n in range(200):
                gw.broadcaster.broadcast_event(event("W", n=n, payload=payload))
                await trio.testing.wait_all_tasks_blocked()
                if slow.ws.closed is not None or gw.client_count() == 0:
                    break
            assert (await closed_with(slow.ws)).code == 4008
        samples = await scrape(gw.port)
    assert value(samples, "disconnects_total", code="4008") == 1
    assert value(samples, "slow_consumer_closes_total") == 1
    assert value(samples, "publications_total", source="inprocess") >= 1
    assert value(samples, "deliveries_dropped_total") >= 1


async def test_refused_handshakes_and_commands_are_counted_by_reason_and_outcome(
    gateway: Gateway,
) -> None:
    port = gateway.port
    with trio.fail_after(TIMEOUT):
        status, _, _ = await http_request(
            "GET",
            f"http://127.0.0.1:{port}/api/ws",
            headers={
                "connection": "Upgrade",
                "upgrade": "websocket",
                "sec-websocket-version": "13",
            },
        )
        assert status == 400
        async with tcp_client(port, token="wrong") as ws:
            assert (await closed_with(ws)).code == 4001
        async with tcp_client(port) as ws:
            await ready(ws)
            answer = await request(ws, command="nope", id="1")
            assert answer["payload"]["code"] == "unknown_command"
            recovered = await request(
                ws, type="subscribe", workspace_id="W", since={"offset": 3, "epoch": "gone"}
            )
            assert recovered["recovered"] is False
            samples = await scrape(port)
    assert value(samples, "handshakes_refused_total", reason="bad_handshake") == 1
    assert value(samples, "handshakes_refused_total", reason="unauthorized") == 1
    assert value(samples, "command_calls_total", outcome="unknown_command") == 1
    assert value(samples, "history_fetches_total") == 1
    assert value(samples, "recoveries_total", recovered="false") == 1


async def test_metrics_need_an_api_key_or_the_metrics_token_unless_public(
    nursery: trio.Nursery, config: Config
) -> None:
    guarded: Gateway = await nursery.start(
        serve, with_settings(config, metrics_token=METRICS_TOKEN)
    )
    public: Gateway = await nursery.start(serve, with_settings(config, metrics_public=True))
    url = f"http://127.0.0.1:{guarded.port}/metrics"
    with trio.fail_after(TIMEOUT):
        assert (await http_request("GET", url))[0] == 401
        assert (await http_request("GET", url, headers={"authorization": "Bearer x"}))[0] == 401
        await scrape(guarded.port, METRICS_TOKEN)
        await scrape(guarded.port, API_KEY)
        await scrape(public.port, None)
        # The metrics token opens /metrics only.
        status, _ = await get_json(guarded.port, "/api/stats", METRICS_TOKEN)
        assert status == 401


async def test_stats_describe_this_instance(gateway: Gateway) -> None:
    port = gateway.port
    with trio.fail_after(TIMEOUT):
        async with tcp_client(port) as one, tcp_client(port) as two:
            for ws in (one, two):
                await ready(ws)
                await subscribe(ws, workspace_id="W")
            await subscribe(two, topic="news")
            await post_event(port, workspace_id="W", n=1)
            for ws in (one, two):
                assert (await receive_json(ws))["event"]["n"] == 1
            status, stats = await get_json(port, "/api/stats")
            top_status, top_one = await get_json(port, "/api/stats?top=1")
        assert (await get_json(port, "/api/stats", None))[0] == 401
        assert (await get_json(port, "/api/stats?scope=galaxy"))[0] == 400
        assert (await get_json(port, "/api/stats?top=many"))[0] == 400
    assert status == top_status == 200
    assert stats["instance"] == gateway.instance
    assert stats["connections"] == 2
    assert stats["subscriptions"]["total"] == 3
    assert stats["top_keys"][:2] == [
        {"key": "workspace:W", "subscribers": 2},
        {"key": "news", "subscribers": 1},
    ]
    assert top_one["top_keys"] == [{"key": "workspace:W", "subscribers": 2}]
    assert stats["totals"]["deliveries"] == 2
    assert stats["totals"]["publications"] == 1
    assert stats["broker"] == {"kind": "memory", "ok": True, "reconnects": 0}
    assert stats["draining"] is False
    assert set(stats["rates"]) == {"window", "messages_in", "messages_out", "publications"}
    assert stats["drops"] == {"slow_consumer": 0, "not_queued": 0}


async def test_rates_cover_the_last_minute(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, config: Config
) -> None:
    gw: Gateway = await nursery.start(serve, config)
    with trio.fail_after(200):
        async with tcp_client(gw.port) as ws:
            await ready(ws)
            await subscribe(ws, workspace_id="W")
            for n in range(30):
                gw.broadcaster.broadcast_event(event("W", n=n))
                assert (await receive_json(ws))["event"]["n"] == n
                await trio.sleep(1)
            _, stats = await get_json(gw.port, "/api/stats")
            # A minute later with nothing sent, the window has moved past all of it.
            await trio.sleep(70)
            _, quiet = await get_json(gw.port, "/api/stats")
    assert 25 <= stats["rates"]["window"] <= 35
    assert 0.8 <= stats["rates"]["messages_out"] <= 1.2
    assert quiet["rates"]["messages_out"] == 0


async def test_nodes_and_cluster_stats_on_the_memory_broker_are_this_instance(
    gateway: Gateway,
) -> None:
    with trio.fail_after(TIMEOUT):
        status, nodes = await get_json(gateway.port, "/api/nodes")
        _, cluster = await get_json(gateway.port, "/api/stats?scope=cluster")
    assert status == 200
    assert [node["instance"] for node in nodes["nodes"]] == [gateway.instance]
    assert cluster["scope"] == "cluster"
    assert cluster["nodes"] == 1
    assert [node["instance"] for node in cluster["instances"]] == [gateway.instance]


async def test_ready_is_503_for_a_request_answered_during_the_drain_while_health_stays_200(
    gateway: Gateway,
) -> None:
    port = gateway.port
    with trio.fail_after(TIMEOUT):
        assert (await get_json(port, "/api/ready", None)) == (
            200,
            {"ready": True, "reasons": [], "instance": gateway.instance},
        )
        # Two requests in flight when the drain begins: their heads are read, their bodies
        # not yet complete.
        streams = []
        for path in ("/api/ready", "/api/health"):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(
                f"GET {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab".encode()
            )
            streams.append(stream)
        await trio.testing.wait_all_tasks_blocked()
        gateway.shutdown()
        await trio.testing.wait_all_tasks_blocked()
        answers = []
        for stream in streams:
            await stream.send_all(b"cd")
            answers.append(await _response(stream))
            await stream.aclose()
    (ready_status, ready_body), (health_status, health_body) = answers
    assert ready_status == 503
    assert ready_body["reasons"] == ["draining"]
    assert health_status == 200
    assert health_body["status"] == "ok"


async def _response(stream: trio.SocketStream) -> tuple[int, Any]:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# --- the cluster view on Redis ----------------------------------------------------------------


async def node_ids(port: int) -> list[str]:
    status, answer = await get_json(port, "/api/nodes")
    assert status == 200, answer
    return sorted(node["instance"] for node in answer["nodes"])


async def nodes_become(port: int, instances: list[str]) -> None:
    """Poll /api/nodes until it lists exactly `instances` (Redis expires a dead instance's
    entry on its own clock, so this waits on real time; bounded by the caller)."""
    while True:
        if await node_ids(port) == sorted(instances):
            return
        await trio.sleep(0.05)


async def test_nodes_list_every_instance_and_one_that_died_drops_out_within_its_ttl(
    nursery: trio.Nursery, config: Config, redis_server: RedisServer
) -> None:
    ttl = 1.0
    shared = with_settings(config, redis_url=redis_server.url, node_ttl=ttl)
    survivor: Gateway = await nursery.start(serve, shared)
    doomed_scope = trio.CancelScope()

    async def doomed_gateway(task_status: trio.TaskStatus[Gateway]) -> None:
        with doomed_scope:
            await serve(shared, task_status=task_status)

    doomed: Gateway = await nursery.start(doomed_gateway)
    with trio.fail_after(TIMEOUT):
        # Each instance's first heartbeat is written as it starts.
        await nodes_become(survivor.port, [survivor.instance, doomed.instance])
        async with tcp_client(doomed.port) as ws:
            await ready(ws)
            _, cluster = await get_json(survivor.port, "/api/stats?scope=cluster")
        assert cluster["nodes"] == 2
        # Cancelled, not shut down: it leaves nothing behind, like a process killed.
        doomed_scope.cancel()
        died = trio.current_time()
        await nodes_become(survivor.port, [survivor.instance])
        assert trio.current_time() - died <= ttl + 0.5


async def test_an_instance_shut_down_leaves_the_nodes_at_once(
    nursery: trio.Nursery, config: Config, redis_server: RedisServer
) -> None:
    shared = with_settings(config, redis_url=redis_server.url, node_ttl=60.0)
    survivor: Gateway = await nursery.start(serve, shared)
    with trio.fail_after(TIMEOUT):
        async with open_gateway(shared) as leaving:
            await nodes_become(survivor.port, [survivor.instance, leaving.instance])
        assert await node_ids(survivor.port) == [survivor.instance]
        assert leaving.instance not in await node_ids(survivor.port)
