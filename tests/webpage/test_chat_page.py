"""The chat page against a real server and the embedded model, in headless Chromium: streaming, stop, regenerate,
edit, settings, conversations kept across reloads, the server's states, small screens and the keyboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from aipc.server.settings import ServerSettings
from tests.conftest import PARIS_QUESTION
from tests.test_server_support import LiveServer, wait_for
from tests.webpage.support import (
    CHATS_KEY,
    LONG_STORY,
    MODEL,
    SKIP_REASON,
    Opened,
    answers,
    ask,
    chat_requests,
    expect,
    seed,
    set_settings,
    wait_ready,
)

pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


# --- answers: streaming, stop, regenerate, edit ------------------------------------------------------------
def test_the_page_streams_an_answer_that_says_paris(page):
    assert page.title() == "aipc chat"
    assert page.locator("#status").inner_text() == "ready"
    set_settings(page, temperature=0)
    text = ask(page, PARIS_QUESTION)
    assert "Paris" in text
    assert page.locator(".msg.user .content").inner_text() == PARIS_QUESTION
    assert "tokens/s" in answers(page).locator(".stats").inner_text()  # the usage chunk arrived too
    assert page.locator("#status").inner_text() == "ready"


def test_the_stop_button_ends_the_answer_marks_it_stopped_and_frees_the_server(page, server):
    page.fill("#prompt", LONG_STORY)
    page.click("#send")
    expect(page.locator(".msg.assistant .content")).to_have_text(re.compile(r"[\s\S]{40,}"))
    assert page.locator("#status").inner_text() == "answering…"
    page.click("#stop")
    answers(page).first.wait_for()
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    assert answers(page).locator(".stopped").inner_text() == "(stopped)"
    kept = answers(page).locator(".content").inner_text()
    assert len(kept) >= 40  # what had arrived (40 characters or more when stopped) stays in the conversation
    wait_for(lambda: httpx.get(server.url + "/health", timeout=5).json()["running"] == 0, timeout=1.0)
    # The conversation goes on: the next question is sent with the history, and answered.
    sent = chat_requests(page)
    set_settings(page, temperature=0)
    assert "Paris" in ask(page, PARIS_QUESTION, n_done=2)
    assert [m["role"] for m in sent[0]["body"]["messages"]] == ["user", "assistant", "user"]
    assert len(sent[0]["body"]["messages"][1]["content"]) > 40


def test_regenerate_replaces_the_last_answer_and_editing_the_last_question_asks_again(page):
    sent = chat_requests(page)
    set_settings(page, temperature=0, max_tokens=16)
    ask(page, PARIS_QUESTION)
    page.click(".msg.assistant [data-act=regenerate]")
    answers(page).first.wait_for()
    assert len(sent) == 2 and page.locator(".msg.assistant").count() == 1
    assert sent[1]["body"]["messages"] == sent[0]["body"]["messages"]  # the same question, without the old answer

    page.click(".msg.user [data-act=edit]")
    editor = page.locator(".msg.user .edit textarea")
    assert editor.input_value() == PARIS_QUESTION
    editor.fill("What is the capital of Italy?")
    editor.press("Enter")
    answers(page).first.wait_for()
    assert len(sent) == 3
    assert sent[2]["body"]["messages"] == [{"role": "user", "content": "What is the capital of Italy?"}]
    assert page.locator(".msg.user .content").all_inner_texts() == ["What is the capital of Italy?"]
    assert page.locator(".msg.assistant").count() == 1


def test_settings_persist_and_go_with_each_request_with_the_chosen_model(page, server):
    listed = [m["id"] for m in httpx.get(server.url + "/v1/models", timeout=10).json()["data"]]
    assert page.locator("#model option").evaluate_all("os => os.map(o => o.value)") == listed
    set_settings(page, temperature=0.3, top_p=0.9, max_tokens=12, system="Answer in one word.")
    page.reload()
    wait_ready(page)
    page.click("#open-settings")
    assert page.input_value("#temperature") == "0.3" and page.input_value("#top-p") == "0.9"
    assert page.input_value("#max-tokens") == "12" and page.input_value("#system") == "Answer in one word."
    page.fill("#temperature", "5")  # out of range (0..2): marked invalid and not sent
    page.click("#close-settings")
    sent = chat_requests(page)
    ask(page, "Name a colour.")
    body = sent[0]["body"]
    assert body["model"] == page.input_value("#model") == listed[0]
    assert body["top_p"] == 0.9 and body["max_tokens"] == 12 and "temperature" not in body
    assert body["messages"][0] == {"role": "system", "content": "Answer in one word."}
    stats = answers(page).locator(".stats").inner_text()
    assert int(re.search(r"(\d+) tokens", stats).group(1)) <= 12


def test_an_example_prompt_on_the_empty_screen_sends_itself(page):
    examples = page.locator("#welcome .examples button")
    assert examples.count() >= 2
    set_settings(page, max_tokens=8)
    question = examples.first.inner_text()
    examples.first.click()
    answers(page).first.wait_for()
    assert page.locator(".msg.user .content").inner_text() == question
    assert page.locator("#welcome").count() == 0


# --- conversations: kept, listed, renamed, exported, deleted -----------------------------------------------
def test_conversations_survive_a_reload_and_can_be_renamed_exported_and_deleted(page):
    set_settings(page, temperature=0, max_tokens=16)
    answer = ask(page, PARIS_QUESTION)
    page.reload()
    wait_ready(page)
    assert page.locator(".msg.user .content").inner_text() == PARIS_QUESTION
    assert answers(page).locator(".content").inner_text() == answer
    items = page.locator("#chat-list li")
    assert items.count() == 1 and items.locator(".title").inner_text() == PARIS_QUESTION

    page.click("#chat-list li.current [data-act=rename]")
    page.fill("#chat-list li.current input", "Geography")
    page.keyboard.press("Enter")
    expect(page.locator("#chat-list li.current .title")).to_have_text("Geography")
    page.reload()
    wait_ready(page)
    expect(page.locator("#chat-list li.current .title")).to_have_text("Geography")

    with page.expect_download() as download:
        page.click("#chat-list li.current [data-act=export]")
    assert download.value.suggested_filename == "aipc-geography.md"
    exported = Path(download.value.path()).read_text(encoding="utf-8")
    assert exported.startswith("# Geography\n")
    assert f"## You\n\n{PARIS_QUESTION}\n" in exported and f"## {MODEL}\n\n" in exported
    assert answer.split("\n")[0] in exported

    page.click("#new-chat")
    assert page.locator("#welcome").is_visible()
    ask(page, "Say hello.")
    assert items.count() == 2 and items.first.locator(".title").inner_text() == "Say hello."
    page.click("#chat-list li.current [data-act=delete]")
    page.click("#chat-list li.current button:text-is('Delete')")  # the confirmation
    assert items.count() == 1 and page.locator("#welcome").is_visible()
    page.reload()
    wait_ready(page)
    assert items.count() == 1 and items.locator(".title").inner_text() == "Geography"
    items.locator(".chat-open").click()
    assert page.locator(".msg.user .content").inner_text() == PARIS_QUESTION


# --- the server's states -----------------------------------------------------------------------------------
def test_an_unreachable_server_is_named_and_the_page_recovers_when_it_returns(browser, model):
    first = LiveServer(ServerSettings(), model)
    o = Opened(browser, first.url)
    try:
        page = o.page
        first.close()  # the server goes away under an open page
        page.fill("#prompt", PARIS_QUESTION)
        page.click("#send")
        error = page.locator(".msg.error")
        error.wait_for()
        assert "Can't reach the aipc server" in error.inner_text()
        assert "Failed to fetch" not in page.locator("body").inner_text()
        expect(page.locator("#status")).to_have_text("offline")
        expect(page.locator("#banner")).to_contain_text("Retrying in")
        assert not page.is_enabled("#send")
        with LiveServer(ServerSettings(), model, port=first.port):
            expect(page.locator("#status")).to_have_text("ready", timeout=30_000)
            assert page.locator("#banner").is_hidden()
            set_settings(page, temperature=0)
            error.locator("[data-act=retry]").click()
            answers(page).first.wait_for()
            assert "Paris" in answers(page).inner_text()
        assert o.script_errors() == [] and o.dialogs == []
    finally:
        o.close()


def test_while_the_model_loads_the_page_says_so_then_becomes_ready(browser, model):
    # lifespan off: nothing starts the load, so the server stays "loading" until the test hands it the model.
    with LiveServer(ServerSettings(), lifespan="off") as live:
        state = live.state

        def hand_over():  # the session's model, served as the default one: the server must not close it
            state.pool.add_external(model, {state.default_model})
            state.preloaded = True

        o = Opened(browser, live.url, ready=False)
        try:
            page = o.page
            expect(page.locator("#status")).to_have_text("loading model…")
            expect(page.locator("#banner")).to_contain_text("Loading the model")
            assert not page.is_enabled("#send")
            loop = live.server.servers[0].get_loop()
            loop.call_soon_threadsafe(hand_over)
            expect(page.locator("#status")).to_have_text("ready", timeout=15_000)
            assert page.locator("#banner").is_hidden() and page.is_enabled("#send")
            assert o.script_errors() == []
        finally:
            o.close()


def test_with_an_api_key_the_page_asks_for_it_then_sends_it(browser, model):
    key = "page-key-0123456789"
    with LiveServer(ServerSettings(api_key=key), model) as live:
        o = Opened(browser, live.url, ready=False)  # the page itself is static and public; the API is not
        try:
            page = o.page
            page.locator("#api-key").wait_for(state="visible")
            assert "API key" in page.locator("#status").inner_text()
            page.fill("#api-key", key)
            page.dispatch_event("#api-key", "change")
            wait_ready(page)
            sent = chat_requests(page)
            set_settings(page, temperature=0)
            assert "Paris" in ask(page, PARIS_QUESTION)
            assert sent[0]["headers"]["authorization"] == f"Bearer {key}"
            assert o.script_errors() == []
        finally:
            o.close()


# --- phone width and keyboard ------------------------------------------------------------------------------
WIDE = (
    "A table wider than a phone:\n\n| "
    + " | ".join(f"column {i}" for i in range(12))
    + " |\n|"
    + "---|" * 12
    + "\n| "
    + " | ".join("value" for _ in range(12))
    + " |\n\n```python\n"
    + "x = "
    + " + ".join(str(i) for i in range(80))
    + "\n```\n\nhttps://example.com/"
    + "a" * 120
)


def test_at_phone_width_nothing_overflows_and_the_conversations_fold_away(browser, server):
    o = Opened(browser, server.url, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = o.page
        seed(page, ("user", "Show me a wide table. " * 5), ("assistant", WIDE))
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        header = page.locator("header").bounding_box()
        assert header["height"] < 60  # one row
        composer = page.locator("#composer").bounding_box()
        assert composer["height"] < 844 / 5 and composer["y"] + composer["height"] <= 844
        send = page.locator("#send").bounding_box()
        assert send["x"] + send["width"] <= 390
        assert not page.locator("#sidebar").is_visible()
        page.click("#toggle-sidebar")
        expect(page.locator("#sidebar")).to_be_visible()
        assert page.evaluate("document.activeElement.className") == "chat-open"
        page.keyboard.press("Escape")
        expect(page.locator("#sidebar")).to_be_hidden()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert o.errors == []
    finally:
        o.close()


def test_the_keyboard_alone_sends_adds_lines_stops_and_shows_focus(page):
    assert page.evaluate("document.activeElement.id") == "prompt"  # ready to type on arrival
    page.keyboard.type(LONG_STORY)
    page.keyboard.press("Enter")
    expect(page.locator(".msg.assistant .content")).to_have_text(re.compile(r"[\s\S]{40,}"))
    page.keyboard.press("Escape")
    answers(page).first.wait_for()
    assert answers(page).locator(".stopped").inner_text() == "(stopped)"
    assert page.locator(".msg.user .content").inner_text() == LONG_STORY

    assert page.evaluate("document.activeElement.id") == "prompt"
    page.keyboard.type("Line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#prompt") == "Line one\nline two"
    assert page.locator(".msg.user").count() == 1  # Shift+Enter did not send
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "send"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")  # a visible focus ring
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")  # back past the prompt, into the conversation's own buttons
    assert page.evaluate("document.activeElement.dataset.act") == "regenerate"
    for control in ("#toggle-sidebar", "#model", "#open-settings", "#new-chat"):
        assert page.get_attribute(control, "aria-label")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # back in the prompt: Enter sends the two lines
    page.locator(".msg.user").nth(1).wait_for()
    assert page.locator(".msg.user .content").nth(1).inner_text() == "Line one\nline two"
    page.keyboard.press("Escape")
    answers(page).nth(1).wait_for()
    assert json.loads(page.evaluate(f"localStorage.getItem('{CHATS_KEY}')"))["chats"][0]["messages"][-2]["content"] == (
        "Line one\nline two"
    )
