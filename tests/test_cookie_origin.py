"""The auth cookie counts only for the gateway's own origin or an allowed one: a cross-origin
page that connects with the user's cookie gets the unauthenticated outcome (`hello`), while
tokens the page holds itself are unaffected. Raw upgrades on real sockets."""

from __future__ import annotations

import json

import pytest
import trio

from trio_gateway import Config, Gateway, serve
from trio_gateway.transport.origins import cookie_usable, same_origin

from .conftest import with_settings
from .helpers import API_KEY, TIMEOUT
from .raw_wire import server_frames, upgrade_head

SITE = "http://gateway.test"  # raw_wire's upgrade_head says Host: gateway.test
EVIL = "https://evil.example"


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://gateway.test", "gateway.test", True),
        ("http://gateway.test", "gateway.test:80", True),
        ("https://gateway.test", "gateway.test", True),  # TLS ended in front of us
        ("https://Gateway.Test:443", "gateway.test", True),
        ("http://gateway.test:8000", "gateway.test:8000", True),
        ("http://gateway.test:8000", "gateway.test", False),
        ("http://gateway.test", "gateway.test:8000", False),
        ("https://evil.example", "gateway.test", False),
        ("http://gateway.test.evil.example", "gateway.test", False),
        ("null", "gateway.test", False),
        ("http://gateway.test", None, False),
        ("http://gateway.test", "gateway.test:x", False),
        ("ftp://gateway.test", "gateway.test", False),
    ],
)
def test_same_origin(origin: str, host: str | None, same: bool) -> None:
    assert same_origin(origin, host) is same


def test_cookie_usable_without_an_origin_or_from_an_allowed_one() -> None:
    assert cookie_usable(None, "gateway.test", ())
    assert cookie_usable(EVIL, "gateway.test", (EVIL,))
    assert not cookie_usable(EVIL, "gateway.test", ())


@pytest.fixture
def config(config: Config) -> Config:
    return with_settings(config, auth_cookie="gw_token", identify_timeout=0.5)


async def first_frame(port: int, data: bytes) -> dict[str, object]:
    """The first text frame the server sends after its 101."""
    with trio.fail_after(TIMEOUT):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(data)
            received = b""
            while True:
                received += await stream.receive_some(65536)
                head, _, after = received.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101 "), head
                frames = server_frames(after)
                if frames and len(frames[0][1]) > 0:
                    message = json.loads(frames[0][1])
                    assert isinstance(message, dict)
                    return message


def cookie_upgrade(origin: str | None, *, token: str | None = None) -> bytes:
    extra = f"Cookie: theme=dark; gw_token={API_KEY}\r\n".encode()
    if origin is not None:
        extra += f"Origin: {origin}\r\n".encode()
    return upgrade_head(token=token, extra=extra)


@pytest.mark.parametrize("origin", [None, SITE, "https://gateway.test"])
async def test_the_cookie_counts_from_our_own_origin(gateway: Gateway, origin: str | None) -> None:
    assert (await first_frame(gateway.port, cookie_upgrade(origin)))["type"] == "ready"


async def test_a_cross_origin_page_does_not_get_the_cookies_identity(gateway: Gateway) -> None:
    assert (await first_frame(gateway.port, cookie_upgrade(EVIL)))["type"] == "hello"


async def test_tokens_the_page_holds_itself_are_unaffected(gateway: Gateway) -> None:
    frame = await first_frame(gateway.port, cookie_upgrade(EVIL, token=API_KEY))
    assert frame["type"] == "ready"


async def test_an_allowed_origin_may_use_the_cookie(nursery: trio.Nursery, config: Config) -> None:
    gateway: Gateway = await nursery.start(serve, with_settings(config, allowed_origins=(EVIL,)))
    assert (await first_frame(gateway.port, cookie_upgrade(EVIL)))["type"] == "ready"
