"""Subscription keys and publication routing: which clients a message is for.

Keys are the strings acknowledged on the wire: "all", "workspace:<id>", "session:<id>".
Pure functions only; the index that uses them lives in fanout/hub.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import ProtocolError
from .messages import Subscribe, Unsubscribe
from .topics import ALL as ALL
from .topics import MAX_TOPIC_LENGTH, is_pattern, pattern_problem

# The WebSocket endpoint, and the diagnostics echo endpoint (served only with `enable_echo`).
WS_PATH = "/api/ws"
ECHO_PATH = "/api/echo"
SESSION_PREFIX = "session:"
WORKSPACE_PREFIX = "workspace:"
# Internal keys of a user's connections (per-user delivery) and of a backend session's
# (connect hook); clients cannot subscribe to them.
USER_PREFIX = "user:"
LOGIN_PREFIX = "login:"


SUBSCRIBE_HINT = "Invalid subscribe: must provide scope, workspace_id, or session_id"

# Characters in a workspace, session, user, client or remote id. Ids become subscription keys
# and Redis channel names, so they are bounded like topics, on the socket and over HTTP.
MAX_ID_LENGTH = MAX_TOPIC_LENGTH


def id_problem(name: str, value: object) -> str | None:
    """Why `value` cannot be the id `name`, or None. The reason never quotes the value."""
    if not isinstance(value, str) or not value:
        return f"{name} must be a non-empty string"
    if len(value) > MAX_ID_LENGTH:
        return f"{name} must be at most {MAX_ID_LENGTH} characters"
    if not encodable(value):
        return f"{name} must be valid Unicode text"
    return None


def workspace_key(workspace_id: str) -> str:
    return WORKSPACE_PREFIX + workspace_id


def session_key(session_id: str) -> str:
    return SESSION_PREFIX + session_id


def _requested_key(message: Subscribe | Unsubscribe) -> str | None:
    verb = message.TAG
    given = [
        name
        for name in ("scope", "workspace_id", "session_id", "topic")
        if getattr(message, name) is not None
    ]
    if len(given) > 1:
        raise ProtocolError(
            f"Invalid {verb}: provide only one of scope, workspace_id, session_id, topic"
        )
    for name in given:
        if not encodable(getattr(message, name)):
            raise ProtocolError(f"Invalid {verb}: {name} must be valid Unicode text")
        if name != "topic" and len(getattr(message, name)) > MAX_ID_LENGTH:
            raise ProtocolError(
                f"Invalid {verb}: {name} must be at most {MAX_ID_LENGTH} characters"
            )
    if message.topic is not None:
        problem = pattern_problem(message.topic)
        if problem is not None:
            raise ProtocolError(f"Invalid {verb}: {problem}")
        return message.topic
    if message.scope is not None:
        if message.scope != ALL:
            raise ProtocolError(f'Invalid {verb}: scope must be "all"')
        return ALL
    if message.workspace_id is not None:
        if not message.workspace_id:
            raise ProtocolError(f"Invalid {verb}: workspace_id must not be empty")
        return workspace_key(message.workspace_id)
    if message.session_id is not None:
        if not message.session_id:
            raise ProtocolError(f"Invalid {verb}: session_id must not be empty")
        return session_key(message.session_id)
    return None


def subscription_key(message: Subscribe) -> str:
    """The key a subscribe message asks for.

    Raises:
        ProtocolError: no key, more than one, an empty id, or a scope other than "all".
    """
    key = _requested_key(message)
    if key is None:
        raise ProtocolError(SUBSCRIBE_HINT)
    return key


def unsubscription_key(message: Unsubscribe) -> str | None:
    """The key an unsubscribe message drops, or None for "drop every subscription"."""
    return _requested_key(message)


def key_problem(key: object) -> str | None:
    """Why `key` is not a subscription key as acked on the wire ("all", "workspace:<id>",
    "session:<id>", a topic or pattern), or None if it is one."""
    if not isinstance(key, str) or not encodable(key):
        return "a subscription key must be valid Unicode text"
    if key == ALL:
        return None
    for prefix in (WORKSPACE_PREFIX, SESSION_PREFIX):
        if key.startswith(prefix):
            return None if len(key) > len(prefix) else f"{prefix} needs an id"
    return pattern_problem(key)


def is_pattern_key(key: str) -> bool:
    """Whether a subscription key is a wildcard topic. Workspace, session and user keys are
    literal whatever their ids hold: a topic never contains ':', and "workspace:a.*" names
    the workspace "a.*"."""
    return ":" not in key and is_pattern(key)


def encodable(text: str) -> bool:
    """True unless `text` holds a lone surrogate, which no UTF-8 channel name can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def user_key(user_id: str) -> str:
    return USER_PREFIX + user_id


def personal_keys(user_id: str | None, session_id: str | None) -> tuple[str, ...]:
    """The internal keys a connection hears without subscribing: its user's, and its
    backend session's."""
    keys = []
    if user_id is not None:
        keys.append(user_key(user_id))
    if session_id is not None:
        keys.append(login_key(session_id))
    return tuple(keys)


def login_key(session_id: str) -> str:
    """The key every connection of one backend session (the connect hook's session_id)
    hears, for ending that session."""
    return LOGIN_PREFIX + session_id


def route_keys(workspace_id: str | None, session_id: str | None) -> tuple[str, ...]:
    """Every subscription key that receives a publication for this workspace/session."""
    keys = [ALL]
    if workspace_id:
        keys.append(workspace_key(workspace_id))
    if session_id:
        keys.append(session_key(session_id))
    return tuple(keys)


def event_problem(event: object) -> str | None:
    """Why `event` cannot be published, or None if it can.

    An event is a JSON object with a non-empty string `workspace_id` and an optional
    `session_id` that is a string or null; every other field passes through untouched.
    """
    if not isinstance(event, Mapping):
        return "event must be a JSON object"
    workspace_id = event.get("workspace_id")
    if not isinstance(workspace_id, str) or not workspace_id:
        return "workspace_id must be a non-empty string"
    session_id = event.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        return "session_id must be a string or null"
    if not encodable(workspace_id) or (session_id is not None and not encodable(session_id)):
        return "workspace_id and session_id must be valid Unicode text"
    if len(workspace_id) > MAX_ID_LENGTH or (
        session_id is not None and len(session_id) > MAX_ID_LENGTH
    ):
        return f"workspace_id and session_id must be at most {MAX_ID_LENGTH} characters"
    return None
