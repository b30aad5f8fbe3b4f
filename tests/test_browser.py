"""The browser test tools (tests/browser.py) work here: Debian's Chromium under Playwright
reads what a real gateway process answers."""

from __future__ import annotations

import json

from .browser import chromium, gateway_process


def test_chromium_reads_the_health_of_a_gateway_process() -> None:
    with gateway_process("--api-key", "k") as gateway, chromium() as browser:
        page = browser.new_page()
        response = page.goto(f"{gateway.url}/api/health")
        assert response is not None
        assert response.status == 200
        assert json.loads(page.inner_text("body"))["status"] == "ok"
