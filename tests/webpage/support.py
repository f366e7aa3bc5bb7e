"""What the chat-page tests share: where Chromium is, why they skip, a page in its own browser context, and the
steps a user takes on the page (fill the settings, ask, store a conversation)."""

from __future__ import annotations

import os
import shutil

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
LONG_STORY = "Write a very long story about a dragon and a knight."
MODEL = "smollm2:135m"
CHATS_KEY = "aipc.chats.v1"


def _skip_reason() -> str | None:
    if not shutil.which(CHROMIUM) and not os.access(CHROMIUM, os.X_OK):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or run scripts/setup.sh dev)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


SKIP_REASON = _skip_reason()  # shown in pytest's summary (the project runs pytest with -ra)


class Opened:
    """A page in its own browser context (its own localStorage), and the errors it logged."""

    def __init__(self, browser, url: str, *, ready: bool = True, **context_options) -> None:
        self.context = browser.new_context(**context_options)
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        self.page.on("dialog", self._dialog)
        self.page.goto(url + "/")
        if ready:
            wait_ready(self.page)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def script_errors(self) -> list[str]:
        """Errors but a refused connection or an HTTP error status, which some tests cause on purpose."""
        return [e for e in self.errors if not e.startswith("Failed to load resource")]

    def close(self) -> None:
        self.context.close()


def wait_ready(page) -> None:
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")


def expect(locator):
    # Playwright's expect() polls without eval(), which the page's Content-Security-Policy forbids.
    from playwright.sync_api import expect as _expect

    return _expect(locator)


def set_settings(page, **fields: object) -> None:
    """Fill the settings dialog (field ids: temperature, top-p, max-tokens, system) as a user does."""
    page.click("#open-settings")
    for field, value in fields.items():
        page.fill("#" + field.replace("_", "-"), str(value))
    page.click("#close-settings")


def chat_requests(page) -> list[dict]:
    """The body and headers of every chat request the page sends, as they go."""
    sent: list[dict] = []

    def record(request) -> None:
        if request.url.endswith("/v1/chat/completions"):
            sent.append({"body": request.post_data_json, "headers": request.headers})

    page.on("request", record)
    return sent


def answers(page):
    return page.locator(".msg.assistant[data-done='true']")


def ask(page, text: str, n_done: int = 1) -> str:
    """Send `text` from the composer and wait for the `n_done`-th finished answer; its text."""
    page.fill("#prompt", text)
    page.click("#send")
    answers(page).nth(n_done - 1).wait_for()
    return answers(page).nth(n_done - 1).locator(".content").inner_text()


def seed(page, *messages: tuple[str, str], title: str = "Seeded") -> None:
    """Store a conversation as the page stores its own, open it, reload: the page renders it as any answer."""
    chat = {
        "id": "seeded",
        "title": title,
        "updated": 1_700_000_000_000,
        "messages": [{"role": role, "content": content} for role, content in messages],
    }
    page.evaluate(
        "([key, chat]) => { localStorage.setItem(key, JSON.stringify({version: 1, chats: [chat]}));"
        " localStorage.setItem('aipc.current', JSON.stringify(chat.id)); }",
        [CHATS_KEY, chat],
    )
    page.reload()
    wait_ready(page)
