"""Messages that cannot be acted on: the codec's error replies go back as they are."""

from __future__ import annotations

from ...fanout.hub import Client
from ...protocol.codec import encode
from ...protocol.frames import text_frame
from ...protocol.messages import Error
from ..context import GatewayContext
from ..registry import Registry


def invalid(client: Client, context: GatewayContext, message: Error) -> None:
    client.send(text_frame(encode(message)))


def install(registry: Registry) -> None:
    registry.register(Error, invalid)
