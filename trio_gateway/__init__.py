"""trio_gateway: a real-time WebSocket gateway on Trio. Public names only."""

__version__ = "0.1.0"

from .broadcaster import Broadcaster, GatewayClosed, PublishQueueFull
from .config import Config, ConfigError
from .server import Gateway, open_gateway, serve

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
