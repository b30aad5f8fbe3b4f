"""The core protocol's client message handlers, one module per concern.

Each module registers its own handlers in `install(registry)`; a feature with messages of
its own does the same from its own module.
"""

from __future__ import annotations

from ..registry import Registry
from . import identify, invalid, ping, publish, refresh, subscribe, sync


def core_handlers() -> Registry:
    """A registry holding the handler of every client message of the core protocol."""
    registry = Registry()
    for module in (subscribe, publish, sync, refresh, ping, identify, invalid):
        module.install(registry)
    return registry
