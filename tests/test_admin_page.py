"""The admin page as an operator uses it, in headless Chromium against a real gateway process:
sign in, watch real clients come and go, tail a pattern, publish, look up presence, sign out.

Everything waits on what the page shows (Playwright's `expect`, bounded), never on a sleep.
The page runs under its real Content-Security-Policy; any violation fails the test. A
screenshot is left in the artifacts directory (tests/browser.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import ConsoleMessage, Page, expect

from .browser import ROOT, GatewayProcess, artifacts_dir, child_env, chromium, gateway_process

KEY = "admin-test-key"
# Milliseconds any one expectation may wait: a poll is every 1.5 s.
WAIT = 10_000


@contextmanager
def subscribers(
    gateway: GatewayProcess, count: int, topic: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` scripts/client.py processes subscribed to `topic`, killed on exit."""
    command = [
        sys.executable, str(ROOT / "scripts" / "client.py"),
        "--url", gateway.url, "--token", KEY, "subscribe", "--topic", topic,
    ]  # fmt: skip
    processes = [
        subprocess.Popen(command, env=child_env(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]  # fmt: skip
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.wait()


def sign_in(page: Page, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#sign-in-form button")


def publish(page: Page, topic: str, data: str) -> None:
    page.fill("#publish-topic", topic)
    page.fill("#publish-data", data)
    page.click("#publish-form button")


def test_operator_signs_in_watches_clients_tails_publishes_and_signs_out() -> None:
    with (
        gateway_process("--admin", "--api-key", KEY, "--presence-topic", "chat.*") as gateway,
        chromium() as browser,
    ):
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        violations: list[str] = []

        def watch(message: ConsoleMessage) -> None:
            if "Content Security Policy" in message.text:
                violations.append(message.text)

        page.on("console", watch)
        page.on("pageerror", lambda error: violations.append(str(error)))
        page.goto(f"{gateway.url}/admin")

        sign_in(page, "not-the-key")
        expect(page.locator("#sign-in-error")).to_contain_text("not an API key", timeout=WAIT)
        expect(page.locator("#dashboard")).to_be_hidden()

        sign_in(page, KEY)
        expect(page.locator("#connections")).to_have_text("0", timeout=WAIT)
        expect(page.locator("#nodes")).to_contain_text("memory ok", timeout=WAIT)
        assert KEY not in page.url

        with subscribers(gateway, 3, "chat.room1") as clients:
            expect(page.locator("#connections")).to_have_text("3", timeout=WAIT)
            expect(page.locator("#top-keys tr").first).to_have_text("chat.room13", timeout=WAIT)
            # Each API-key connection is a member of its own (its client_id).
            page.fill("#presence-topic", "chat.room1")
            page.click("#presence-form button")
            expect(page.locator("#presence-result")).to_have_text("3 on chat.room1", timeout=WAIT)
            expect(page.locator("#presence-members li")).to_have_count(3)
            expect(page.locator("#presence-members li").first).to_contain_text(
                "online  1 connection"
            )

            clients[0].kill()
            expect(page.locator("#connections")).to_have_text("2", timeout=WAIT)

            page.fill("#tail-topic", "chat.*")
            page.click("#tail-form button[type=submit]")
            expect(page.locator("#tail-state")).to_have_text("(chat.*: connected)", timeout=WAIT)
            expect(page.locator("#connections")).to_have_text("3", timeout=WAIT)

            publish(page, "chat.room1", '{"text": "hello", "html": "<b>not bold</b>"}')
            expect(page.locator("#publish-result")).to_have_text(
                "Published on chat.room1 at offset 1.", timeout=WAIT
            )
            newest = page.locator("#tail li").first
            expect(newest.locator("code")).to_have_text(
                '{"text":"hello","html":"<b>not bold</b>"}', timeout=WAIT
            )
            expect(newest.locator(".meta")).to_contain_text("chat.room1  #1")
            assert page.locator("#tail b").count() == 0  # data is text, never markup

            for number in range(2, 6):
                publish(page, "chat.room2", f"plain words {number}")
                expect(page.locator("#publish-result")).to_contain_text(f"offset {number - 1}.")
            expect(page.locator("#tail li").first.locator("code")).to_have_text(
                '"plain words 5"', timeout=WAIT
            )
            expect(page.locator("#tail li")).to_have_count(5)

            # The rates need two polls after the publications; then the page is worth a look.
            expect(page.locator("#deliveries-rate")).not_to_have_text("0.0", timeout=WAIT)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(artifacts_dir() / "admin.png"))

            publish(page, "chat.*", "{}")
            expect(page.locator("#publish-result")).to_contain_text("Not published (400)")

            page.fill("#presence-topic", "news")
            page.click("#presence-form button")
            expect(page.locator("#presence-result")).to_have_text(
                "Presence is not tracked on this topic.", timeout=WAIT
            )

        page.click("#sign-out")
        expect(page.locator("#sign-in")).to_be_visible()
        expect(page.locator("#dashboard")).to_be_hidden()
        assert page.evaluate("sessionStorage.length") == 0
        assert violations == []
