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


def loads(text: str | bytes) -> Any:
    """Strict JSON: NaN and Infinity are rejected, absurd nesting is a ValueError.

    Raises:
        ValueError: `text` is not strict JSON.
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def dumps(data: object) -> str:
    """Compact JSON, ASCII-escaped (a lone surrogate cannot fail to encode later): the form
    of every frame the server sends.

    Raises:
        ValueError, TypeError: `data` is not JSON (NaN, a set, ...).
    """
    return json.dumps(data, separators=(",", ":"), allow_nan=False)
