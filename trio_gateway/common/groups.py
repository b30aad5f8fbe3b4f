"""Exception groups: the first leaf, which is what a log line or an exit status reports."""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def first_leaf(group: BaseExceptionGroup[E]) -> E:
    """The first exception in `group` that is not itself a group, however deeply nested."""
    first: E | BaseExceptionGroup[E] = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
