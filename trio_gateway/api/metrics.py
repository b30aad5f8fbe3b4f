"""`GET /metrics`: the Prometheus exposition of this instance (observability/metrics.py).

Must not: check credentials (the route's `METRICS` policy does) or count anything.
"""

from __future__ import annotations

from .app import HttpApp, RawBody, Request


async def get_metrics(app: HttpApp, request: Request) -> tuple[int, object]:
    data, content_type = app.context.metrics.exposition()
    return 200, RawBody(data, content_type)
