"""Credentials and permissions (pure): API keys, JWTs, token sources, topic grants."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trio_gateway.protocol.topics import covers
from trio_gateway.session.auth import (
    API_KEY_IDENTITY,
    Authenticator,
    AuthError,
    Identity,
    KeyFileError,
    may_publish,
    may_subscribe,
    token_from_request,
    verifier_key,
)

NOW = 1_800_000_000.0
SECRET = "s" * 32
HS = Authenticator(api_keys=("key-1",), jwt_secret=SECRET)


def hs256(**claims: Any) -> str:
    return jwt.encode({"sub": "alice", "exp": NOW + 60, **claims}, SECRET, algorithm="HS256")


def pem(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_api_keys_grant_everything() -> None:
    assert HS.authenticate("key-1", NOW) == API_KEY_IDENTITY
    assert API_KEY_IDENTITY.is_api_key
    assert may_subscribe(API_KEY_IDENTITY, "all")
    assert may_publish(API_KEY_IDENTITY, "any.topic")


def test_a_valid_hs256_token_names_the_user_and_grants() -> None:
    token = hs256(sub_topics=["chat.**"], pub_topics=["chat.room.*"], nbf=NOW - 1, iat=NOW)
    assert HS.authenticate(token, NOW) == Identity(
        "alice", NOW + 60, ("chat.**",), ("chat.room.*",), commands=()
    )


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (hs256(exp=NOW - 60), "expired"),
        (hs256(nbf=NOW + 60), "not yet valid"),
        (hs256(iat=NOW + 60), "issued in the future"),
        (jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), "exp"),
        (jwt.encode({"exp": NOW + 60}, SECRET, algorithm="HS256"), "sub"),
        (hs256(sub=""), "sub"),
        (hs256(sub=5), "sub must be a non-empty string"),
        (
            jwt.encode({"sub": "alice", "exp": NOW + 60}, "t" * 32, algorithm="HS256"),
            "bad signature",
        ),
        (hs256(sub_topics="chat"), "sub_topics"),
        (hs256(pub_topics=["chat..x"]), "pub_topics"),
        ("not-a-token", "invalid credentials"),
        ("a.b.c", "invalid token"),
    ],
)
def test_bad_tokens_are_refused(token: str, why: str) -> None:
    with pytest.raises(AuthError, match=why):
        HS.authenticate(token, NOW)


def test_alg_none_is_refused() -> None:
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = base64.urlsafe_b64encode(json.dumps({"sub": "eve", "exp": NOW + 60}).encode())
    token = f"{header.decode().rstrip('=')}.{body.decode().rstrip('=')}."
    with pytest.raises(AuthError):
        HS.authenticate(token, NOW)


def test_audience_and_issuer_are_checked_when_configured() -> None:
    strict = Authenticator(api_keys=(), jwt_secret=SECRET, jwt_audience="gw", jwt_issuer="idp")
    assert strict.authenticate(hs256(aud="gw", iss="idp"), NOW).user_id == "alice"
    for claims in ({"aud": "other", "iss": "idp"}, {"aud": "gw", "iss": "other"}, {}):
        with pytest.raises(AuthError):
            strict.authenticate(hs256(**claims), NOW)


def test_exp_may_be_made_optional() -> None:
    lenient = Authenticator(api_keys=(), jwt_secret=SECRET, jwt_require_exp=False)
    token = jwt.encode({"sub": "bot"}, SECRET, algorithm="HS256")
    assert lenient.authenticate(token, NOW) == Identity("bot", None, (), (), ())


def test_rs256_with_a_public_key_and_no_key_confusion(rsa_key: rsa.RSAPrivateKey) -> None:
    public_pem = pem(rsa_key.public_key())
    rs = Authenticator(api_keys=(), jwt_public_key=verifier_key(public_pem))
    good = jwt.encode({"sub": "bob", "exp": NOW + 60}, rsa_key, algorithm="RS256")
    assert rs.authenticate(good, NOW).user_id == "bob"
    # The classic confusion: an HS256 token whose secret is the public key's PEM text.
    # (built by hand: pyjwt itself refuses to sign with a PEM key as an HMAC secret).
    forged = _hs256_with_raw_secret({"sub": "mallory", "exp": NOW + 60}, public_pem)
    with pytest.raises(AuthError):
        rs.authenticate(forged, NOW)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AuthError, match=r"^invalid token: bad signature$"):
        rs.authenticate(jwt.encode({"sub": "bob", "exp": NOW + 60}, other, algorithm="RS256"), NOW)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _hs256_with_raw_secret(claims: dict[str, Any], secret: bytes) -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def test_es256_keys_are_accepted() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    es = Authenticator(api_keys=(), jwt_public_key=verifier_key(pem(private.public_key())))
    token = jwt.encode({"sub": "carol", "exp": NOW + 60}, private, algorithm="ES256")
    assert es.authenticate(token, NOW).user_id == "carol"


def test_a_bad_key_file_is_a_clear_error() -> None:
    with pytest.raises(KeyFileError, match="PEM"):
        verifier_key(b"not a key")


# --- token sources -----------------------------------------------------------------------------


def test_token_sources_in_order_of_precedence() -> None:
    bearer = [(b"authorization", b"Bearer from-header")]
    cookie = [(b"cookie", b"other=1; gw_token=from-cookie")]
    assert token_from_request(b"/api/ws?token=from-query", bearer + cookie, "gw_token") == (
        "from-query"
    )
    assert token_from_request(b"/api/ws", bearer + cookie, "gw_token") == "from-header"
    assert token_from_request(b"/api/ws", cookie, "gw_token") == "from-cookie"
    # The cookie counts only when a cookie name is configured.
    assert token_from_request(b"/api/ws", cookie, None) is None
    assert token_from_request(b"/api/ws", [(b"cookie", b"\x00garbage")], "gw_token") is None
    assert token_from_request(b"/api/ws?token=", [], None) == ""


# --- permissions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "pattern", "covered"),
    [
        ("chat.**", "chat.room.1", True),
        ("chat.**", "chat", True),
        ("chat.**", "chat.*", True),
        ("chat.**", "chat.**", True),
        ("chat.*", "chat.room", True),
        ("chat.*", "chat.*", True),
        ("chat.*", "chat.**", False),
        ("chat.*", "chat.room.1", False),
        ("chat.room", "chat.*", False),
        ("*.room", "chat.room", True),
        ("**", "anything.at.all", True),
        ("chat", "chat.room", False),
    ],
)
def test_covers(grant: str, pattern: str, covered: bool) -> None:
    assert covers(grant, pattern) is covered


def test_jwt_subscribe_permissions() -> None:
    user = Identity("u", None, ("chat.**", "workspace.W1", "session.*"), ("chat.room.*",))
    assert may_subscribe(user, "chat.room.1")
    assert may_subscribe(user, "chat.*")
    assert not may_subscribe(user, "news")
    assert may_subscribe(user, "workspace:W1")
    assert not may_subscribe(user, "workspace:W2")
    assert may_subscribe(user, "session:S9")
    # Ids that cannot be a topic segment are never covered by a grant.
    assert not may_subscribe(user, "session:a.b")
    assert not may_subscribe(user, "all")
    assert may_subscribe(Identity("root", None, ("**",), ()), "all")
    assert may_publish(user, "chat.room.5")
    assert not may_publish(user, "chat.lobby")
    assert not may_publish(user, "chat.room.*")


def test_a_refusal_never_quotes_the_jwt_librarys_own_text() -> None:
    # A correctly signed token whose payload is not JSON: PyJWT's message for it quotes
    # Python's JSONDecodeError ("Expecting value: line 1 column 1"), which must not reach a
    # client's error reply.
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(b"\xff\xfe")
    signing_input = f"{header}.{payload}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(AuthError, match=r"^invalid token: malformed$"):
        HS.authenticate(f"{signing_input}.{_b64(signature)}", NOW)
