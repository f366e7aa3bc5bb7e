"""The chat page at / in a real headless Chromium (Playwright driving Debian's /usr/bin/chromium).

Skipped, with the reason printed, where Chromium or the playwright package is missing; `scripts/setup.sh dev`
installs both. Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import re
import shutil

import httpx
import pytest

from aipc.server.settings import ServerSettings
from tests.conftest import PARIS_QUESTION
from tests.test_server_support import LiveServer, wait_for

CHROMIUM = os.environ.get("AIPC_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _skip_reason() -> str | None:
    if not shutil.which(CHROMIUM) and not os.access(CHROMIUM, os.X_OK):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or run scripts/setup.sh dev)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


SKIP_REASON = _skip_reason()  # shown in pytest's summary (the project runs pytest with -ra)
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


@pytest.fixture(scope="module")
def server(model):
    with LiveServer(ServerSettings(), model) as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(server.url + "/")
    page.wait_for_selector("#model option[value='smollm2:135m']", state="attached")
    yield page
    context.close()
    assert errors == []  # no script errors, no Content-Security-Policy violations


def test_the_page_streams_an_answer_that_says_paris(page):
    assert page.title() == "aipc chat"
    assert page.locator("#status").inner_text() == "ready"
    page.fill("#temperature", "0")
    page.fill("#prompt", PARIS_QUESTION)
    page.click("#send")
    answer = page.locator(".msg.assistant").last
    answer.wait_for(state="attached")
    page.wait_for_selector(".msg.assistant[data-done='true']")
    assert "Paris" in answer.inner_text()
    assert page.locator(".msg.user").inner_text() == PARIS_QUESTION
    assert "tokens/s" in answer.locator(".stats").inner_text()  # the usage chunk arrived too


def test_the_stop_button_ends_the_answer_and_frees_the_server(page, server):
    from playwright.sync_api import expect

    page.fill("#prompt", "Write a very long story about a dragon and a knight.")
    page.click("#send")
    # Playwright's expect() polls without eval(), which the page's Content-Security-Policy forbids.
    expect(page.locator(".msg.assistant")).to_have_text(re.compile(r"[\s\S]{40,}"))
    page.click("#stop")
    page.wait_for_selector(".msg.assistant[data-done='true']")
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    kept = page.locator(".msg.assistant").inner_text()
    assert len(kept) > 40  # what had arrived stays in the conversation
    wait_for(lambda: httpx.get(server.url + "/health", timeout=5).json()["running"] == 0, timeout=1.0)
    # The conversation goes on: the next question is sent with the history, and answered.
    page.fill("#temperature", "0")
    page.fill("#prompt", PARIS_QUESTION)
    page.click("#send")
    page.locator(".msg.assistant[data-done='true']").nth(1).wait_for()
    assert page.locator(".msg.user").count() == 2


def test_with_an_api_key_the_page_asks_for_it_then_works(browser, model):
    key = "page-key-0123456789"
    with LiveServer(ServerSettings(api_key=key), model) as live:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(live.url + "/")  # the page itself is static and public; the API behind it is not
        page.locator("#api-key").wait_for(state="visible")
        assert "API key" in page.locator("#status").inner_text()
        page.fill("#api-key", key)
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector("#model option[value='smollm2:135m']", state="attached")
        page.fill("#temperature", "0")
        page.fill("#prompt", PARIS_QUESTION)
        page.click("#send")
        page.wait_for_selector(".msg.assistant[data-done='true']")
        assert "Paris" in page.locator(".msg.assistant").inner_text()
        context.close()
