"""The route table: each route's declared policy is what a caller without credentials meets."""

from __future__ import annotations

import json
import re

import trio

from trio_gateway import Gateway
from trio_gateway.api.routes import ADMIN, PUBLIC, ROUTES, Policy
from trio_gateway.client.http import http_request

from .helpers import TIMEOUT


def every_route() -> list[tuple[str, str, Policy]]:
    return [
        (method, re.sub(r"\{\w+\}", "alice%20b", path), route.policy)
        for path, methods in ROUTES.items()
        for method, route in methods.items()
    ]


async def test_each_route_enforces_its_policy_before_its_handler(gateway: Gateway) -> None:
    refused: list[tuple[str, str, int, str | None]] = []
    served: list[tuple[str, str, int]] = []
    hidden: list[tuple[str, str, int, str | None]] = []
    with trio.fail_after(TIMEOUT):
        for method, path, policy in every_route():
            status, headers, body = await http_request(
                method, f"http://127.0.0.1:{gateway.port}{path}", body=b"{}"
            )
            if policy is PUBLIC:
                served.append((method, path, status))
                continue
            answer = (method, path, status, json.loads(body).get("error"))
            # The admin page's paths do not exist while the `admin` setting is off.
            (hidden if policy is ADMIN else refused).append(answer)
            if policy is not ADMIN:
                assert dict(headers)["www-authenticate"] == 'Bearer realm="trio-gateway"'
    assert {status for *_, status, _ in refused} == {401}
    assert {error for *_, error in refused} == {"Missing API key"}
    assert {(status, error) for *_, status, error in hidden} == {(404, "Not found")}
    assert sorted(served) == [
        ("GET", "/api/client.d.ts", 200),
        ("GET", "/api/client.js", 200),
        ("GET", "/api/health", 200),
        ("GET", "/api/ready", 200),
    ]
