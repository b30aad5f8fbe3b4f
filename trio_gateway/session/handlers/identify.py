"""identify: the credential of a connection that brought none to the upgrade (seed 003's
HELLO), and the refusal of a second identify once identified.

The handshake runs before the client exists, straight on the WebSocket: it is the one place
in session/ that writes frames itself, because there is no writer task yet.
"""

from __future__ import annotations

import time

import trio

from ...fanout.hub import Client
from ...protocol.codec import decode, encode
from ...protocol.errors import ProtocolError
from ...protocol.frames import text_frame
from ...protocol.messages import Hello, Identify
from ...protocol.replies import NOT_IDENTIFIED_FRAME
from ...transport.websocket import WebSocket
from ..auth import AuthError, Credential
from ..context import GatewayContext
from ..registry import Registry


async def identify_handshake(ws: WebSocket, context: GatewayContext) -> Credential:
    """Send `hello` and wait for `identify`, up to `identify_timeout`.

    Returns the identity, an AuthError (bad token, timeout) for a 4001 close, or a token for
    the connect hook. Anything else the client sends first gets an error reply and changes
    nothing.

    Raises:
        ConnectionClosed: the peer left meanwhile.
    """
    config = context.config
    hello = Hello(round(config.ping_interval * 1000), round(config.identify_timeout * 1000))
    with trio.move_on_after(config.identify_timeout):
        await ws.send_frames(text_frame(encode(hello)))
        while True:
            frame = await ws.receive()
            message = decode(frame) if isinstance(frame, str) else None
            if isinstance(message, Identify):
                hook = config.connect_url is not None
                return context.auth.judge(message.token, time.time(), hook=hook)
            await ws.send_frames(NOT_IDENTIFIED_FRAME)
    return AuthError("identify timed out")


def identify_again(client: Client, context: GatewayContext, message: Identify) -> None:
    raise ProtocolError("Already identified")


def install(registry: Registry) -> None:
    registry.register(Identify, identify_again)
