"""The files the gateway serves from its package: the JavaScript client's files and the admin
page, as a browser sees them over a real socket (status, headers, bytes, revalidation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from trio_gateway import Config, Gateway, serve
from trio_gateway.client.http import http_request

from .conftest import with_settings
from .helpers import TIMEOUT
from .test_http import connect

ROOT = Path(__file__).resolve().parent.parent
ADMIN_FILES = {
    file.name: file.read_bytes() for file in (ROOT / "trio_gateway" / "web" / "admin").iterdir()
}
ADMIN_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


async def get(
    gateway: Gateway, path: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    with trio.fail_after(TIMEOUT):
        status, answer_headers, body = await http_request(
            method, f"http://127.0.0.1:{gateway.port}{path}", headers=headers
        )
    return status, dict(answer_headers), body


@pytest.fixture
async def admin_gateway(nursery: trio.Nursery, config: Config) -> Gateway:
    started: Gateway = await nursery.start(serve, with_settings(config, admin=True))
    return started


# --- the JavaScript client ---------------------------------------------------------------------

CLIENT_FILES = [
    ("/api/client.js", (ROOT / "clients" / "js" / "index.js").read_bytes(), "text/javascript"),
    (
        "/api/client.d.ts",
        (ROOT / "clients" / "js" / "index.d.ts").read_bytes(),
        "application/typescript",
    ),
]


@pytest.mark.parametrize(("path", "source", "content_type"), CLIENT_FILES)
async def test_client_file_is_its_source_revalidated_by_etag_for_any_origin(
    gateway: Gateway, path: str, source: bytes, content_type: str
) -> None:
    status, headers, body = await get(gateway, path)
    assert status == 200
    assert body == source
    assert headers["content-type"] == f"{content_type}; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["access-control-allow-origin"] == "*"
    etag = headers["etag"]
    assert etag.startswith('"')
    assert etag.endswith('"')

    # What a browser revalidating its copy sends; every form of a match is a match.
    for validator in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        status, revalidated, body = await get(gateway, path, **{"if-none-match": validator})
        assert (status, body) == (304, b"")
        assert "content-length" not in revalidated
        assert "content-type" not in revalidated
        assert revalidated["etag"] == etag
        assert revalidated["cache-control"] == "no-cache"
        assert revalidated["access-control-allow-origin"] == "*"
    status, _, body = await get(gateway, path, **{"if-none-match": '"stale"'})
    assert (status, body) == (200, source)

    status, head, body = await get(gateway, path, method="HEAD")
    assert (status, body) == (200, b"")
    assert head["content-length"] == str(len(source))
    assert head["etag"] == etag


async def test_a_304_leaves_the_connection_ready_for_the_next_request(gateway: Gateway) -> None:
    http = await connect(gateway)
    async with http.stream:
        _, headers, _ = await http.request("HEAD", "/api/client.d.ts")
        status, _, body = await http.request(
            "GET", "/api/client.d.ts", headers=[("if-none-match", headers["etag"])]
        )
        assert (status, body) == (304, None)
        status, _, body = await http.request("GET", "/api/health")
        assert (status, body["status"]) == (200, "ok")


# --- the admin page ----------------------------------------------------------------------------

ADMIN_PATHS = ["/admin", "/admin/", "/admin/admin.js", "/admin/admin.css", "/admin/chart.js"]


@pytest.mark.parametrize("path", ADMIN_PATHS)
async def test_admin_paths_do_not_exist_unless_admin_is_on(gateway: Gateway, path: str) -> None:
    status, headers, body = await get(gateway, path)
    assert (status, body) == (404, b'{"error":"Not found"}')
    assert "content-security-policy" not in headers


@pytest.mark.parametrize("path", ["/admin", "/admin/"])
async def test_admin_page_is_never_stored_and_carries_the_security_headers(
    admin_gateway: Gateway, path: str
) -> None:
    status, headers, body = await get(admin_gateway, path)
    assert status == 200
    assert body == ADMIN_FILES["index.html"]
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert "etag" not in headers
    assert headers.items() >= ADMIN_HEADERS.items()


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("admin.js", "text/javascript; charset=utf-8"),
        ("chart.js", "text/javascript; charset=utf-8"),
        ("admin.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ],
)
async def test_admin_assets_are_typed_revalidated_and_secured(
    admin_gateway: Gateway, name: str, content_type: str
) -> None:
    status, headers, body = await get(admin_gateway, f"/admin/{name}")
    assert status == 200
    assert body == ADMIN_FILES[name]
    assert headers["content-type"] == content_type
    assert headers["cache-control"] == "no-cache"
    assert headers.items() >= ADMIN_HEADERS.items()
    status, revalidated, _ = await get(
        admin_gateway, f"/admin/{name}", **{"if-none-match": headers["etag"]}
    )
    assert status == 304
    assert revalidated.items() >= ADMIN_HEADERS.items()


@pytest.mark.parametrize(
    "path", ["/admin/nothing.js", "/admin/..%2Fclient.d.ts", "/admin/%2e%2e", "/admin/admin"]
)
async def test_only_files_listed_at_start_are_served(admin_gateway: Gateway, path: str) -> None:
    status, _, _ = await get(admin_gateway, path)
    assert status == 404
