"""What a publisher hands to the broker: one server message, serialised and framed once.

Owns the `Publication` value only. Building one from an event (validation, routing) lives in
broadcaster.py; moving it between instances lives in broker/.
"""

from __future__ import annotations

import attrs

from .protocol.frames import text_frame


@attrs.frozen
class Publication:
    """A server message serialised and framed once, with the subscription keys it goes to."""

    text: str
    keys: tuple[str, ...]
    # The WebSocket frame every recipient's writer sends, derived from `text` once.
    frame: bytes = attrs.field(init=False, eq=False, repr=False)

    @frame.default
    def _frame(self) -> bytes:
        return text_frame(self.text)
