"""trio_gateway: a real-time WebSocket gateway on Trio. Public names only.

The server's names are loaded on first use (PEP 562), so `import trio_gateway.client` does
not pull in the server, its broker libraries or its JWT stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .fanout.broadcaster import Broadcaster, GatewayClosed, PublishQueueFull
    from .runtime.config import Config, ConfigError
    from .runtime.server import Gateway, open_gateway, serve

_LAZY = {
    "Broadcaster": ".fanout.broadcaster",
    "GatewayClosed": ".fanout.broadcaster",
    "PublishQueueFull": ".fanout.broadcaster",
    "Config": ".runtime.config",
    "ConfigError": ".runtime.config",
    "Gateway": ".runtime.server",
    "open_gateway": ".runtime.server",
    "serve": ".runtime.server",
}

__all__ = [
    "Broadcaster",
    "Config",
    "ConfigError",
    "Gateway",
    "GatewayClosed",
    "PublishQueueFull",
    "__version__",
    "open_gateway",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trio_gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
