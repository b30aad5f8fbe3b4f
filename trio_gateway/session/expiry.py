"""When a session ends: the reader's cancel scope follows the credential's `expires_at`.

The deadline is on trio's clock, converted from the credential's wall-clock expiry once, when
it is set (at connect and on every refresh).
"""

from __future__ import annotations

import math
import time

import trio

from ..fanout.hub import Client
from .auth import Identity


def set_expiry(client: Client, identity: Identity) -> None:
    """Move `client`'s session end to `identity`'s expiry (never, when it has none)."""
    if client.expiry is None:
        return
    if identity.expires_at is None:
        client.expiry.deadline = math.inf
    else:
        client.expiry.deadline = trio.current_time() + (identity.expires_at - time.time())
