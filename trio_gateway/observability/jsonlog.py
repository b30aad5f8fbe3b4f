"""Log lines as JSON objects, or as readable console lines. Owns the formatters and which
one a stream gets; must not decide what gets logged.

Structured fields travel in `extra={"fields": {...}}` so they never collide with LogRecord
attributes. In JSON, values that are not JSON types are logged as their `str()`. Every line
logged from a gateway's tasks carries that gateway's `instance` id: serve() sets
`instance_field`, and the tasks it starts inherit the context.

`json` is for machines (collectors, journald, `jq`): one object per line, UTC times. `console`
is for a person at a terminal: `06:10:03.123 INFO  trio_gateway.cli configuration loaded
port=8000 instance=…4CANJM`, local time, the fields as `key=value`, a traceback on the lines
below. Without a choice, a terminal gets console and anything else JSON.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from contextvars import ContextVar
from typing import Any, TextIO

instance_field: ContextVar[str | None] = ContextVar("trio_gateway_instance", default=None)

JSON = "json"
CONSOLE = "console"
# Characters of the instance id a console line shows: its random tail, enough to tell the
# instances of one deployment apart (the full id is in JSON lines and /api/health).
CONSOLE_INSTANCE_CHARS = 6


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


def _console_value(value: object) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        time = datetime.datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        parts = [time, f"{record.levelname:<5}", record.name, record.getMessage()]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            parts += [f"{key}={_console_value(value)}" for key, value in fields.items()]
        if (instance := instance_field.get()) is not None:
            parts.append(f"instance=…{instance[-CONSOLE_INSTANCE_CHARS:]}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def chosen_format(log_format: str | None, stream: TextIO) -> str:
    """`log_format`, or when it is None the default for `stream`: console on a terminal."""
    if log_format is not None:
        return log_format
    isatty = getattr(stream, "isatty", None)
    return CONSOLE if isatty is not None and isatty() else JSON


def configure(
    level: str | int = "INFO", log_format: str | None = None, stream: TextIO | None = None
) -> None:
    """Route the `trio_gateway` logger to `stream` (stderr), as `log_format` lines."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    console = chosen_format(log_format, stream) == CONSOLE
    handler.setFormatter(ConsoleFormatter() if console else JsonFormatter())
    logger = logging.getLogger("trio_gateway")
    logger.handlers[:] = [handler]
    logger.setLevel(level if isinstance(level, int) else level.upper())
    logger.propagate = False


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` argument for a log call: `log.info("connected", extra=fields(client_id=x))`."""
    return {"fields": values}
