"""JSON text as the wire wants it: strict parsing, compact output. Pure, no I/O.

Owns the two JSON rules every frame follows; message shapes are codec.py's and
commands.py's.
"""

from __future__ import annotations

import json
from typing import Any

# Client-chosen text echoed back in an error reply is cut to this many characters, so an
# error about a 60 KiB type name does not cost 60 KiB per reply.
ECHO_LIMIT = 100


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


# One decoder and one encoder for the process: `json.loads`/`json.dumps` with any option
# build a new one on every call, and every frame and request goes through here.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def loads(text: str | bytes) -> Any:
    """Strict JSON: NaN and Infinity are rejected, absurd nesting is a ValueError.

    Raises:
        ValueError: `text` is not strict JSON.
    """
    if isinstance(text, bytes | bytearray):
        # As json.loads reads bytes: UTF-8, -16 or -32, a UTF-8 BOM allowed.
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    elif text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def dumps(data: object) -> str:
    """Compact JSON, ASCII-escaped (a lone surrogate cannot fail to encode later): the form
    of every frame the server sends.

    Raises:
        ValueError, TypeError: `data` is not JSON (NaN, a set, ...).
    """
    return _ENCODER.encode(data)
