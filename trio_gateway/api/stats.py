"""What an operator asks of the gateway: readiness, statistics, the instances alive.

`GET /api/ready` is the load balancer's question (listening, broker reachable, not
draining), where `/api/health` only says the process runs. Must not: compute statistics
(observability/stats.py) or check credentials (the route's policy does).
"""

from __future__ import annotations

from ..broker import BrokerUnavailable
from ..observability.nodes import cluster_totals
from ..observability.stats import MAX_TOP_KEYS, TOP_KEYS
from .app import HttpApp, HttpError, Request

_SCOPES = ("instance", "cluster")


async def ready(app: HttpApp, request: Request) -> tuple[int, object]:
    reasons = []
    if app.stats.draining:
        reasons.append("draining")
    if not app.context.broker.ok:
        reasons.append("broker_unavailable")
    return 503 if reasons else 200, {
        "ready": not reasons,
        "reasons": reasons,
        "instance": app.instance,
    }


async def get_stats(app: HttpApp, request: Request) -> tuple[int, object]:
    scope = request.query("scope") or "instance"
    if scope not in _SCOPES:
        raise HttpError(400, "scope: must be instance or cluster")
    top = _top(request.query("top"))
    if scope == "instance":
        return 200, app.stats.snapshot(top)
    nodes = await _alive(app)
    return 200, {"scope": "cluster", **cluster_totals(nodes), "instances": nodes}


async def get_nodes(app: HttpApp, request: Request) -> tuple[int, object]:
    nodes = await _alive(app)
    return 200, {
        "nodes": [
            {
                name: node.get(name)
                for name in (
                    "instance",
                    "host",
                    "pid",
                    "version",
                    "uptime",
                    "draining",
                    "broker",
                    "connections",
                    "users",
                    "rates",
                )
            }
            for node in nodes
        ]
    }


async def _alive(app: HttpApp) -> list[dict[str, object]]:
    try:
        return await app.nodes.alive()
    except BrokerUnavailable:
        raise HttpError(503, "Broker unavailable: the other instances cannot be listed") from None


def _top(text: str | None) -> int:
    if text is None:
        return TOP_KEYS
    if not text.isdigit() or not 0 <= int(text) <= MAX_TOP_KEYS:
        raise HttpError(400, f"top: must be an integer from 0 to {MAX_TOP_KEYS}")
    return int(text)
