"""Splitting gateway URLs: what a fresh connection needs, for WebSocket and HTTP alike."""

from __future__ import annotations

import pytest

from trio_gateway.client.urls import Endpoint, split_url


def test_split_url_defaults_the_port_by_scheme() -> None:
    assert split_url("ws://gw.example/api/ws", "ws", "wss") == Endpoint(
        host="gw.example", port=80, tls=False, host_header="gw.example", target="/api/ws"
    )
    assert split_url("https://gw.example", "http", "https") == Endpoint(
        host="gw.example", port=443, tls=True, host_header="gw.example", target="/"
    )


def test_split_url_keeps_the_query_and_drops_userinfo_from_the_host_header() -> None:
    where = split_url("wss://user:pw@[::1]:8443/p/api/ws?x=1", "ws", "wss")
    assert where == Endpoint(
        host="::1", port=8443, tls=True, host_header="[::1]:8443", target="/p/api/ws?x=1"
    )


@pytest.mark.parametrize("url", ["http://h/api/ws", "ws:///api/ws", "h:80"])
def test_split_url_refuses_another_scheme_or_no_host(url: str) -> None:
    with pytest.raises(ValueError, match=r"expected a ws:// or wss:// URL"):
        split_url(url, "ws", "wss")
