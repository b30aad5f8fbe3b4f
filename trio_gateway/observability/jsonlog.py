"""One JSON object per log line. Owns the formatter; must not decide what gets logged.

Structured fields travel in `extra={"fields": {...}}` so they never collide with LogRecord
attributes. Values that are not JSON types are logged as their `str()`. Every line logged from
a gateway's tasks carries that gateway's `instance` id: serve() sets `instance_field`, and the
tasks it starts inherit the context.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from contextvars import ContextVar
from typing import Any

instance_field: ContextVar[str | None] = ContextVar("trio_gateway_instance", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        if (instance := instance_field.get()) is not None:
            line["instance"] = instance
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure(level: str | int = "INFO", stream: Any = None) -> None:
    """Route the `trio_gateway` logger to `stream` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("trio_gateway")
    logger.handlers[:] = [handler]
    logger.setLevel(level if isinstance(level, int) else level.upper())
    logger.propagate = False


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` argument for a log call: `log.info("connected", extra=fields(client_id=x))`."""
    return {"fields": values}
