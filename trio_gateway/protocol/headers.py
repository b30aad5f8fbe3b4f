"""HTTP header lookups over h11-style header lists, and the Bearer credential. Pure.

h11 lowercases header names, so names here are lowercase bytes. Shared by the HTTP API, the
WebSocket handshake and the credential sources; must not know any endpoint, nor decide which
of several headers counts (each caller keeps its own rule).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

Headers = Iterable[tuple[bytes, bytes]]


def header_values(headers: Headers, name: bytes) -> Iterator[bytes]:
    """The value of every `name` header, in order."""
    for key, value in headers:
        if key == name:
            yield bytes(value)


# header() and header_tokens() run on every HTTP request, so they are plain loops: a generator
# (header_values) per call would slow each request.
def header(headers: Headers, name: bytes) -> bytes | None:
    """The value of the first `name` header, or None."""
    for key, value in headers:
        if key == name:
            return bytes(value)
    return None


def header_tokens(headers: Headers, name: bytes) -> set[bytes]:
    """The comma-separated tokens of every `name` header, stripped and lowercased."""
    tokens: set[bytes] = set()
    for key, value in headers:
        if key == name:
            tokens.update(part.strip().lower() for part in bytes(value).split(b","))
    return tokens


def bearer_token(authorization: bytes | None) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` value, or None (no value,
    another scheme, or an empty credential)."""
    if authorization is None:
        return None
    scheme, _, credential = authorization.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credential.strip() or None
