"""Client id factory. Injectable so tests can make ids deterministic."""

from __future__ import annotations

from collections.abc import Callable

from ulid import ULID

IdFactory = Callable[[], str]


def new_client_id() -> str:
    """A fresh ULID: sortable by connect time, unique across processes."""
    return str(ULID())
