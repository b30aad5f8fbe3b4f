"""Who a connection is: API keys and JWTs in, an `Identity` out, and what it may do.

Owns credential checking (constant-time key comparison, JWT verification with pyjwt) and the
permission rules. Must not do I/O: the key file is read by the caller, and the clock is an
argument, so every rule is testable without sockets or sleeping.

API keys grant everything. A JWT names a user (`sub`) and, optionally, the topics it may
subscribe to (`sub_topics`) and publish on (`pub_topics`), as topic patterns, and the
commands it may call (`commands`: a list of names, or `*`); what a JWT does not grant it may
not do. A token that is neither is a `Pending` credential when the connect hook is
configured: the backend decides (backend/connect.py builds that identity). The accepted
algorithms are fixed by configuration, never read from the token: HS256 with a shared secret,
or RS256/ES256 with a public key. So `alg: none` and the HS/RS key-confusion attack (an HS256
token signed with the public key as its secret) are refused.

Permission to subscribe to a workspace or session is checked as the topic
`workspace.<id>` / `session.<id>`; the "all" scope needs a `**` grant.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..protocol.headers import bearer_token, header_values
from ..protocol.routing import ALL, SESSION_PREFIX, WORKSPACE_PREFIX, encodable
from ..protocol.topics import REST, covers, is_pattern, pattern_problem, topic_problem

# Seconds of clock skew tolerated on exp/nbf/iat between the token issuer and us.
LEEWAY = 5.0


class AuthError(Exception):
    """The credential is not acceptable; the message says why (never echoes the token)."""


class KeyFileError(ValueError):
    """The configured JWT public key cannot be used."""


@attrs.frozen
class Identity:
    """An authenticated connection's principal."""

    #: None for an API key.
    user_id: str | None
    #: Unix time the credential expires at; None when it never does (API keys).
    expires_at: float | None = None
    #: Patterns the client may subscribe to / publish on; None means anything (API keys).
    sub_topics: tuple[str, ...] | None = None
    pub_topics: tuple[str, ...] | None = None
    #: Commands the client may call ("*": any); None means any (API keys).
    commands: tuple[str, ...] | None = None
    #: The backend's session this connection belongs to (connect hook); None otherwise.
    session_id: str | None = None
    #: What the backend says about the user (connect hook), sent in `ready`; None otherwise.
    info: Any = None
    #: Subscription keys the backend bound the connection to (connect hook), held before
    #: `ready`.
    subscriptions: tuple[str, ...] = ()

    @property
    def is_api_key(self) -> bool:
        return self.user_id is None


API_KEY_IDENTITY = Identity(None)


@attrs.frozen
class Pending:
    """A token that is neither an API key nor a valid JWT, for the connect hook to judge."""

    token: str


#: What an upgrade request's token proved: who, why not, that the backend must say, or None
#: when there was no token.
Credential = Identity | AuthError | Pending | None


def verifier_key(public_key_pem: bytes) -> tuple[Any, str]:
    """The key object and its one algorithm, from a PEM public key (RSA → RS256, EC → ES256).

    Raises:
        KeyFileError: not a PEM public key, or neither RSA nor EC.
    """
    try:
        key = load_pem_public_key(public_key_pem)
    except ValueError as exc:
        raise KeyFileError(f"not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, "ES256"
    raise KeyFileError("the public key must be RSA (RS256) or EC P-256 (ES256)")


@attrs.frozen
class Authenticator:
    api_keys: tuple[str, ...]
    jwt_secret: str | None = None
    #: (key object, algorithm) from `verifier_key`.
    jwt_public_key: tuple[Any, str] | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_require_exp: bool = True

    @property
    def accepts_jwt(self) -> bool:
        return self.jwt_secret is not None or self.jwt_public_key is not None

    def judge(self, token: str, now: float, *, hook: bool) -> Identity | AuthError | Pending:
        """What `token` proves at `now`; with the connect hook configured (`hook`), a token
        that proves nothing here is `Pending` rather than refused."""
        try:
            return self.authenticate(token, now)
        except AuthError as exc:
            if hook and encodable(token):
                return Pending(token)
            return exc

    def authenticate(self, token: str, now: float) -> Identity:
        """The identity `token` proves at Unix time `now`.

        Raises:
            AuthError: neither a configured API key nor a valid JWT.
        """
        if key_matches(token, self.api_keys):
            return API_KEY_IDENTITY
        # A lone surrogate (JSON allows one) is no key and no JWT, and the JWT library
        # would fail on it with an error of its own.
        if not self.accepts_jwt or token.count(".") != 2 or not encodable(token):
            raise AuthError("invalid credentials")
        return self._from_jwt(token, now)

    def _from_jwt(self, token: str, now: float) -> Identity:
        if self.jwt_public_key is not None:
            key, algorithm = self.jwt_public_key
        else:
            key, algorithm = self.jwt_secret, "HS256"
        required = ["sub", "exp"] if self.jwt_require_exp else ["sub"]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.jwt_audience,
                issuer=self.jwt_issuer,
                leeway=LEEWAY,
                options={
                    "require": required,
                    "verify_aud": self.jwt_audience is not None,
                    "verify_iss": self.jwt_issuer is not None,
                    # Checked below against `now`, so tests and refresh use one clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    # `sub` is checked below, in our words (PyJWT 2.10+ checks it too).
                    "verify_sub": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {_jwt_problem(exc)}") from None
        return _identity(claims, now)


def _jwt_problem(exc: jwt.InvalidTokenError) -> str:
    """Our words for why PyJWT refused a token: its own messages may quote Python's
    exception text (a payload that is not JSON), and they reach clients in error replies."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"{exc.claim} is required"
    for kind, problem in _JWT_PROBLEMS:
        if isinstance(exc, kind):
            return problem
    return "malformed"


_JWT_PROBLEMS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
)


def key_matches(token: str | None, keys: Sequence[str]) -> bool:
    """Constant-time check of `token` against every configured key (no early exit)."""
    if token is None:
        return False
    # surrogatepass: a token from JSON may hold a lone surrogate, which matches no key.
    presented = token.encode("utf-8", "surrogatepass")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key.encode("utf-8"))
    return matched


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(f"invalid token: {name} must be a number")
    return float(value)


def _grants(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AuthError(f"invalid token: {name} must be a list of topic patterns")
    for pattern in value:
        if pattern_problem(pattern) is not None:
            raise AuthError(f"invalid token: {name} holds an invalid pattern")
    return tuple(value)


def _identity(claims: Mapping[str, Any], now: float) -> Identity:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise AuthError("invalid token: sub must be a non-empty string")
    expires_at = _number(claims, "exp")
    not_before = _number(claims, "nbf")
    issued_at = _number(claims, "iat")
    if expires_at is not None and expires_at <= now - LEEWAY:
        raise AuthError("invalid token: expired")
    if not_before is not None and not_before > now + LEEWAY:
        raise AuthError("invalid token: not yet valid")
    if issued_at is not None and issued_at > now + LEEWAY:
        raise AuthError("invalid token: issued in the future")
    return Identity(
        subject,
        expires_at,
        _grants(claims, "sub_topics"),
        _grants(claims, "pub_topics"),
        command_grants(claims.get("commands", [])),
    )


def command_grants(value: object) -> tuple[str, ...]:
    """The commands a `commands` grant (a list of names, or "*") allows.

    Raises:
        AuthError: neither "*" nor a list of non-empty strings.
    """
    if value == "*":
        return ("*",)
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise AuthError('invalid token: commands must be a list of command names or "*"')
    return tuple(value)


# --- where the token comes from --------------------------------------------------------------


def token_from_request(
    target: bytes, headers: Sequence[tuple[bytes, bytes]], cookie_name: str | None
) -> str | None:
    """The credential of an upgrade request: `?token=`, else the first Bearer credential
    among its Authorization headers (the HTTP API reads only the first header), else the
    cookie named `cookie_name` (when configured)."""
    values = parse_qs(urlsplit(target.decode("latin-1")).query, keep_blank_values=True)
    if tokens := values.get("token"):
        # Present but empty is a credential too (a wrong one), not "no credentials".
        return tokens[0]
    for authorization in header_values(headers, b"authorization"):
        if (bearer := bearer_token(authorization)) is not None:
            return bearer
    if cookie_name is not None:
        for cookies in header_values(headers, b"cookie"):
            try:
                jar = SimpleCookie(cookies.decode("latin-1"))
            except CookieError:
                continue
            if (morsel := jar.get(cookie_name)) is not None and morsel.value:
                return morsel.value
    return None


# --- permissions -------------------------------------------------------------------------------


def _as_topic(key: str) -> str | None:
    """The topic a workspace/session key is checked as, or None if it cannot be one."""
    for prefix, name in ((WORKSPACE_PREFIX, "workspace"), (SESSION_PREFIX, "session")):
        if key.startswith(prefix):
            topic = f"{name}.{key[len(prefix) :]}"
            return topic if topic_problem(topic) is None else None
    return key


def may_subscribe(identity: Identity, key: str) -> bool:
    if identity.sub_topics is None:
        return True
    grants = identity.sub_topics
    if key == ALL:
        return REST in grants
    topic = _as_topic(key)
    if topic is None:
        return False
    return any(covers(grant, topic) for grant in grants)


def may_publish(identity: Identity, topic: str) -> bool:
    if identity.pub_topics is None:
        return True
    return not is_pattern(topic) and any(covers(grant, topic) for grant in identity.pub_topics)
