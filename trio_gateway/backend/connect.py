"""The connect hook: the backend says who an opaque token belongs to (`connect_url`).

Owns the hook's contract (docs/PROTOCOL.md, "Connect hook"): the request
`{"token","client_id","remote_addr","origin"}`, and what each answer means — a 2xx JSON
object is the identity (`identity_from_answer`, pure), 401/403 refuse the token (close 4001),
anything else (another status, a bad body, no answer in `connect_timeout`, no connection)
is the backend's trouble, not the user's: close 1013 so the client retries rather than
logs the user out. Must not: decide close codes' numbers or touch the socket
(session/connection.py does).

What the backend grants is all the connection gets: absent `sub_topics`, `pub_topics` and
`commands` grant nothing (as for a JWT); `subscriptions` are held on the client's behalf
whatever the grants say.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ..observability.jsonlog import fields
from ..protocol.routing import encodable, key_problem
from ..protocol.topics import pattern_problem
from ..session.auth import AuthError, Identity, command_grants
from .http import Backend, BackendUnreachable

log = logging.getLogger("trio_gateway.connect_hook")

# Statuses by which the backend refuses a token (the user must sign in again).
REFUSALS = (401, 403)


class HookUnavailable(Exception):
    """The backend could not say who the token is; the message is for the log only."""


class BadHookAnswer(ValueError):
    """A 2xx answer that is not an identity; the message names the field."""


class ConnectHook:
    def __init__(self, backend: Backend, url: str, timeout: float) -> None:
        self._backend = backend
        self._url = url
        self._timeout = timeout

    async def identify(
        self,
        token: str,
        client_id: str,
        remote_addr: str | None,
        origin: str | None,
        now: float,
    ) -> Identity:
        """Ask the backend who `token` is, at Unix time `now`.

        Raises:
            AuthError: the backend refused the token (401/403), or its session has expired.
            HookUnavailable: no usable answer (logged here with the reason).
        """
        request = {
            "token": token,
            "client_id": client_id,
            "remote_addr": remote_addr,
            "origin": origin,
        }
        answer = None
        with trio.move_on_after(self._timeout):
            try:
                answer = await self._backend.post(self._url, request)
            except BackendUnreachable as exc:
                raise self._unavailable(client_id, str(exc)) from None
        if answer is None:
            raise self._unavailable(client_id, f"no answer within {self._timeout:g} s")
        if answer.status in REFUSALS:
            raise AuthError("refused by the connect hook")
        if not 200 <= answer.status < 300:
            raise self._unavailable(client_id, f"status {answer.status}")
        try:
            identity = identity_from_answer(answer.body)
        except BadHookAnswer as exc:
            raise self._unavailable(client_id, f"bad answer: {exc}") from None
        if identity.expires_at is not None and identity.expires_at <= now:
            raise AuthError("the session has expired")
        return identity

    def _unavailable(self, client_id: str, reason: str) -> HookUnavailable:
        log.warning("connect hook failed", extra=fields(client_id=client_id, reason=reason))
        return HookUnavailable(reason)


def identity_from_answer(body: Any) -> Identity:
    """The identity a 2xx answer of the connect hook describes.

    Raises:
        BadHookAnswer: not a JSON object with a non-empty string `user_id`, or a field of
            the wrong shape.
    """
    if not isinstance(body, dict):
        raise BadHookAnswer("the answer must be a JSON object")
    user_id = _text(body, "user_id")
    if user_id is None:
        raise BadHookAnswer("user_id is required")
    info = body.get("info")
    if info is not None and not isinstance(info, dict):
        raise BadHookAnswer("info must be an object")
    expires_at = body.get("expires_at")
    if expires_at is not None and (
        isinstance(expires_at, bool) or not isinstance(expires_at, int | float)
    ):
        raise BadHookAnswer("expires_at must be a number (Unix seconds)")
    try:
        commands = command_grants(body.get("commands", []))
    except AuthError:
        raise BadHookAnswer('commands must be a list of command names or "*"') from None
    subscriptions = _strings(body, "subscriptions")
    if any(key_problem(key) is not None for key in subscriptions):
        raise BadHookAnswer("subscriptions must be subscription keys")
    return Identity(
        user_id,
        float(expires_at) if expires_at is not None else None,
        _patterns(body, "sub_topics"),
        _patterns(body, "pub_topics"),
        commands,
        _text(body, "session_id"),
        info,
        tuple(dict.fromkeys(subscriptions)),
    )


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or not encodable(value):
        raise BadHookAnswer(f"{name} must be a non-empty string")
    return value


def _strings(body: dict[str, Any], name: str) -> tuple[str, ...]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadHookAnswer(f"{name} must be a list of strings")
    return tuple(value)


def _patterns(body: dict[str, Any], name: str) -> tuple[str, ...]:
    patterns = _strings(body, name)
    if any(not encodable(item) or pattern_problem(item) is not None for item in patterns):
        raise BadHookAnswer(f"{name} must be topic patterns")
    return patterns
