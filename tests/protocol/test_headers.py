"""Sync tests of header lookup and the Bearer credential (pure functions)."""

from __future__ import annotations

import pytest

from trio_gateway.protocol.headers import bearer_token, header, header_tokens, header_values

HEADERS = [
    (b"host", b"x"),
    (b"connection", b"keep-alive, Upgrade"),
    (b"authorization", b"Basic abc"),
    (b"connection", b" UPGRADE "),
    (b"authorization", b"Bearer key"),
]


def test_header_is_the_first_value_of_that_name() -> None:
    assert header(HEADERS, b"authorization") == b"Basic abc"
    assert header(HEADERS, b"origin") is None


def test_header_values_are_every_value_in_order() -> None:
    assert list(header_values(HEADERS, b"authorization")) == [b"Basic abc", b"Bearer key"]
    assert list(header_values(HEADERS, b"origin")) == []


def test_header_tokens_split_strip_and_lowercase_every_value() -> None:
    assert header_tokens(HEADERS, b"connection") == {b"keep-alive", b"upgrade"}
    assert header_tokens(HEADERS, b"upgrade") == set()


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (b"Bearer key", "key"),
        (b"bearer key", "key"),
        (b"BEARER  key ", "key"),
        (b"Bearer", None),
        (b"Bearer ", None),
        (b"Basic key", None),
        (b"key", None),
        (b"", None),
        (None, None),
    ],
)
def test_bearer_token_of_one_authorization_value(value: bytes | None, token: str | None) -> None:
    assert bearer_token(value) == token
