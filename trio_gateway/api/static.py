"""Files shipped in the package (trio_gateway/web/): the JavaScript client, for pages that
import it as a module, and the admin page.

Every file is read once, at import, with a strong ETag (a hash of its bytes): a response is a
lookup, never a read, and no part of a request path reaches the filesystem (an admin asset is
served only if its name was listed at import). Scripts, types and styles are
`Cache-Control: no-cache` with their ETag, so a browser revalidates each time and gets 304
until the gateway is upgraded; the admin HTML is `no-store`. The client files carry
`Access-Control-Allow-Origin: *`, since a page on another origin imports them as module
scripts, which needs CORS; every admin response carries the security headers below.

web/client.js and web/client.d.ts are symlinks to clients/js/ (where npm packs them); a
wheel holds their content.

Must not: check credentials or the `admin` setting (the route policies do), or know the
pages' contents.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files
from importlib.resources.abc import Traversable

import attrs

from .app import HttpApp, HttpError, RawBody, Request

WEB = files("trio_gateway") / "web"

# By suffix; a file of any other kind in web/ fails the import rather than go out mistyped.
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".ts": "application/typescript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

CORS = ((b"access-control-allow-origin", b"*"),)

# The admin page loads only its own scripts and styles and talks only to its own origin; it
# may not be framed, sniffed or named in a Referer. Chromium and Firefox count a ws:// URL
# to the page's own host and port as 'self' in connect-src (CSP Level 3).
ADMIN_SECURITY = (
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


@attrs.frozen
class Asset:
    data: bytes
    content_type: str
    #: The validator, quoted (`"…"`); None for what is never cached (HTML).
    etag: bytes | None

    @property
    def cache_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        if self.etag is None:
            return ((b"cache-control", b"no-store"),)
        return ((b"etag", self.etag), (b"cache-control", b"no-cache"))


def _asset(file: Traversable) -> Asset:
    data = file.read_bytes()
    content_type = CONTENT_TYPES[file.name[file.name.rindex(".") :]]
    if content_type.startswith("text/html"):
        return Asset(data, content_type, None)
    return Asset(data, content_type, f'"{hashlib.sha256(data).hexdigest()[:32]}"'.encode())


CLIENT_JS = _asset(WEB / "client.js")
CLIENT_TYPES = _asset(WEB / "client.d.ts")
ADMIN = {file.name: _asset(file) for file in (WEB / "admin").iterdir() if file.is_file()}
ADMIN_PAGE = ADMIN["index.html"]


def _serve(
    request: Request, asset: Asset | None, headers: tuple[tuple[bytes, bytes], ...]
) -> tuple[int, object]:
    if asset is None:
        raise HttpError(404, "Not found")
    headers = (*asset.cache_headers, *headers)
    if asset.etag is not None and _matches(request.header(b"if-none-match"), asset.etag):
        return 304, RawBody(b"", asset.content_type, headers)
    return 200, RawBody(asset.data, asset.content_type, headers)


def _matches(if_none_match: bytes | None, etag: bytes) -> bool:
    # If-None-Match compares weakly (RFC 9110 13.1.2): W/"x" matches "x"; `*` matches any.
    if if_none_match is None:
        return False
    tags = {tag.strip().removeprefix(b"W/") for tag in if_none_match.split(b",")}
    return b"*" in tags or etag in tags


async def get_client_js(app: HttpApp, request: Request) -> tuple[int, object]:
    return _serve(request, CLIENT_JS, CORS)


async def get_client_types(app: HttpApp, request: Request) -> tuple[int, object]:
    return _serve(request, CLIENT_TYPES, CORS)


async def get_admin_page(app: HttpApp, request: Request) -> tuple[int, object]:
    return _serve(request, ADMIN_PAGE, ADMIN_SECURITY)


async def get_admin_asset(app: HttpApp, request: Request) -> tuple[int, object]:
    return _serve(request, ADMIN.get(request.params["asset"]), ADMIN_SECURITY)
