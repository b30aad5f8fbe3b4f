"""refresh: a new token for the same user moves the session's expiry."""

from __future__ import annotations

import time

from ...fanout.hub import Client
from ...protocol.codec import encode
from ...protocol.errors import FORBIDDEN, UNAUTHORIZED_CODE, ProtocolError
from ...protocol.frames import text_frame
from ...protocol.messages import Refresh, Refreshed
from ..auth import AuthError
from ..context import GatewayContext
from ..expiry import set_expiry
from ..registry import Registry


def refresh(client: Client, context: GatewayContext, message: Refresh) -> None:
    try:
        identity = context.auth.authenticate(message.token, time.time())
    except AuthError as exc:
        raise ProtocolError(f"Refresh refused: {exc}", UNAUTHORIZED_CODE) from None
    if identity.user_id != client.identity.user_id:
        # The session keeps its old expiry: a token cannot move a connection to another user.
        raise ProtocolError("Refresh refused: the token is for another user", FORBIDDEN)
    client.identity = identity
    set_expiry(client, identity)
    client.send(text_frame(encode(Refreshed(identity.expires_at))))


def install(registry: Registry) -> None:
    registry.register(Refresh, refresh)
