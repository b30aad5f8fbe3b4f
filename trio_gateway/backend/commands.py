"""The command proxy: a command without an in-process handler is POSTed to `command_url`.

Owns the proxy's contract (docs/PROTOCOL.md, "Command proxy"): the request
`{"command","payload","client_id","user_id","session_id","info"}`; a 2xx JSON
`{"event","payload"}` is the answer; any other status answers the error event with the code
its status means (`STATUS_CODES`, else `failed`) and the backend's `message` when its body
has one. Must not: run the call's time limit or concurrency (commands/runner.py does: its
timeout cancels the request).
"""

from __future__ import annotations

import logging
from typing import Any

from ..commands.registry import Answer, Caller, CommandError, Fallback
from ..observability.jsonlog import fields
from ..protocol.commands import FAILED, FORBIDDEN, UNAVAILABLE, UNKNOWN_COMMAND
from .http import Backend, BackendUnreachable

log = logging.getLogger("trio_gateway.command_proxy")

#: The error code an answer's status means; other non-2xx statuses answer `failed`.
STATUS_CODES = {
    401: FORBIDDEN,
    403: FORBIDDEN,
    404: UNKNOWN_COMMAND,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: UNAVAILABLE,
}


def command_proxy(backend: Backend, url: str) -> Fallback:
    """The fallback handler that asks the backend at `url`."""

    async def call(name: str, caller: Caller, payload: Any) -> Answer:
        request = {
            "command": name,
            "payload": payload,
            "client_id": caller.client_id,
            "user_id": caller.user_id,
            "session_id": caller.session_id,
            "info": caller.info,
        }
        try:
            answer = await backend.post(url, request)
        except BackendUnreachable as exc:
            log.warning(
                "command backend unreachable",
                extra=fields(client_id=caller.client_id, command=name, reason=str(exc)),
            )
            raise CommandError("The command backend is unavailable", UNAVAILABLE) from None
        body = answer.body
        if 200 <= answer.status < 300:
            event = body.get("event") if isinstance(body, dict) else None
            if not isinstance(event, str) or not event:
                log.warning(
                    "command backend answered without an event",
                    extra=fields(client_id=caller.client_id, command=name),
                )
                raise CommandError("The command backend gave no answer", FAILED)
            return event, body.get("payload")
        code = STATUS_CODES.get(answer.status, FAILED)
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, str) or not message:
            message = f"The command backend answered {answer.status}"
        raise CommandError(message, code)

    return call
