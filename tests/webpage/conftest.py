"""Fixtures of the chat-page tests: a live server on the embedded model and a headless Chromium, one of each
per test module; a fresh page (its own localStorage) per test, which must log no script error."""

from __future__ import annotations

import pytest

from aipc.server.settings import ServerSettings
from tests.test_server_support import LiveServer
from tests.webpage.support import CHROMIUM, CHROMIUM_ARGS, Opened


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
def opened(browser, server):
    o = Opened(browser, server.url)
    yield o
    o.close()
    assert o.errors == []  # no script errors, no Content-Security-Policy violations
    assert o.dialogs == []


@pytest.fixture
def page(opened):
    return opened.page
