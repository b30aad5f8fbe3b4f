"""Messages that cannot be acted on: the codec's error reply goes back as any refusal does."""

from __future__ import annotations

from ...fanout.hub import Client
from ...protocol.errors import ProtocolError
from ...protocol.messages import Error
from ..context import GatewayContext
from ..registry import Registry


def invalid(client: Client, context: GatewayContext, message: Error) -> None:
    # Through the registry's error path, so a malformed message is answered and logged the
    # same way as a refused one.
    raise ProtocolError(message.message, message.code)


def install(registry: Registry) -> None:
    registry.register(Error, invalid)
