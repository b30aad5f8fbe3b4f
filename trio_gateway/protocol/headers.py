"""HTTP header lookups over h11-style header lists, and the Bearer credential. Pure.

h11 lowercases header names, so names here are lowercase bytes. Shared by the HTTP API, the
WebSocket handshake and the credential sources; must not know any endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

Headers = Iterable[tuple[bytes, bytes]]


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


def bearer_token(headers: Headers) -> str | None:
    """The credential of the first `Authorization: Bearer ...` header, or None (also when
    it is empty or another scheme)."""
    authorization = header(headers, b"authorization")
    if authorization is None:
        return None
    scheme, _, credential = authorization.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credential.strip() or None
