"""The JavaScript client in a real browser: the README's page (examples/web/chat.html) loads
the client from the gateway, receives, keeps the connection through ping cycles with no pong
code of its own, and survives a gateway restart with nothing lost or repeated.

The page runs as written except for its gateway address and token, which the test swaps in.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, expect

from .browser import GatewayProcess, chromium, gateway_process
from .redis_server import RedisServer, free_port

PAGE = Path(__file__).resolve().parent.parent / "examples" / "web" / "chat.html"
KEY = "browser-key"
# Milliseconds the page gets for what a person would see at once.
SHOWN = 15_000


def publish(gateway: GatewayProcess, text: str) -> None:
    request = urllib.request.Request(
        f"{gateway.url}/api/publish",
        data=json.dumps({"topic": "chat.demo", "data": {"text": text}}).encode(),
        headers={"Authorization": f"Bearer {KEY}"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 202


def stats(gateway: GatewayProcess) -> dict[str, object]:
    request = urllib.request.Request(
        f"{gateway.url}/api/stats", headers={"Authorization": f"Bearer {KEY}"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        result: dict[str, object] = json.load(answer)
        return result


def messages_in(gateway: GatewayProcess, at_least: int = 0) -> int:
    """The gateway's count of client messages, once it reaches `at_least`.

    Pings run on the real clock in a separate process: this polls it, bounded.
    """
    deadline = time.monotonic() + SHOWN / 1000
    while True:
        totals = stats(gateway)["totals"]
        assert isinstance(totals, dict)
        count = int(totals["messages_in"])
        if count >= at_least:
            return count
        assert time.monotonic() < deadline, f"messages_in stayed at {count} < {at_least}"
        time.sleep(0.1)


def the_page_for(port: int, tmp_path: Path) -> str:
    text = PAGE.read_text().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    text = text.replace('token: "dev-key"', f'token: "{KEY}"')
    copy = tmp_path / "chat.html"
    copy.write_text(text)
    return copy.as_uri()


def shown(page: Page) -> list[str]:
    return [json.loads(text)["text"] for text in page.locator("#messages li").all_text_contents()]


def test_the_page_receives_pongs_by_itself_and_resumes_across_a_restart(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    flags = ("--api-key", KEY, "--redis-url", redis_server.url)
    fast_pings = ("--ping-interval", "0.3", "--pong-timeout", "0.3")
    with (
        gateway_process(*flags) as other,
        chromium() as browser,
    ):
        page = browser.new_page()
        with gateway_process(*flags, *fast_pings, port=port) as gateway:
            page.goto(the_page_for(port, tmp_path))
            expect(page.locator("#status")).to_have_text("connected", timeout=SHOWN)
            publish(gateway, "one")
            expect(page.locator("#messages li")).to_have_count(1, timeout=SHOWN)
            # Each pong the page's client sends is a message in; a page that sent none
            # would be closed 1008 after 0.6 s. Eight pings span well past that.
            before = messages_in(gateway)
            messages_in(gateway, at_least=before + 8)
            totals = stats(gateway)["totals"]
            assert isinstance(totals, dict)
            assert totals["connects"] == 1, "the page reconnected: it did not answer a ping"
            expect(page.locator("#status")).to_have_text("connected")
        # The gateway is gone: what is published meanwhile comes back from history.
        expect(page.locator("#status")).to_have_text("reconnecting", timeout=SHOWN)
        publish(other, "two")
        publish(other, "three")
        with gateway_process(*flags, port=port) as gateway:
            expect(page.locator("#status")).to_have_text("connected", timeout=SHOWN)
            publish(gateway, "four")
            expect(page.locator("#messages li")).to_have_count(4, timeout=SHOWN)
            assert shown(page) == ["one", "two", "three", "four"]
            assert page.locator("#messages li.gap").count() == 0
