"""The chat page at / in a real headless Chromium (Playwright driving Debian's /usr/bin/chromium).

Two kinds of test: the page against a real server and the embedded model (streaming, stop, regenerate, edit,
conversations kept across reloads, the server's states), and the page's Markdown renderer, a pure function
(`window.aipcRender(text)` -> a detached element), fed hostile and tricky text directly: no real model can be
made to say exactly that. Stored conversations (localStorage) go through the same rendering as a streamed answer,
so they carry such text end to end.

Skipped, with the reason printed, where Chromium or the playwright package is missing; `scripts/setup.sh dev`
installs both. Playwright's own browser download is never used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

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
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


# --- fixtures and helpers ----------------------------------------------------------------------------------
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
    assert len(kept) > 40  # what had arrived stays in the conversation
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


# --- Markdown, rendered safely -----------------------------------------------------------------------------
CODE = 'def greet(name):\n    # say hello\n    return f"Hello, {name}!" if name else None'
MARKDOWN = f"""## Steps

1. Install **aipc** with `pip`.
2. Run it:
   - `aipc serve`
   - open the *page*
3. Done.

| Backend | Speed | Notes |
|:--|--:|:-:|
| openvino | 120 | ~~slow~~ fast |
| llama.cpp | 110 | [docs](https://github.com/ggml-org/llama.cpp) |

```python
{CODE}
```
"""

RENDERED = """(text) => {
  const node = window.aipcRender(text);
  const all = (sel) => [...node.querySelectorAll(sel)];
  const texts = (sel) => all(sel).map((e) => e.textContent);
  return {
    h2: texts("h2"), items: texts("ol > li").length, nested: texts("ol > li > ul > li"),
    inline: texts("li > code"), strong: texts("strong"), em: texts("em"), del: texts("del"),
    th: texts("th"), td: texts("td"), align: all("th").map((e) => e.className),
    links: all("a").map((a) => [a.textContent, a.getAttribute("href"), a.target, a.rel]),
    code: texts("pre code"), lang: texts(".code-lang"), copy: texts(".code-block button[data-act=copy-code]"),
    tokens: all("pre code span").map((s) => [s.className, s.textContent]),
    font: (() => { document.body.append(node); const f = getComputedStyle(node.querySelector("pre code")).fontFamily;
                   node.remove(); return f; })(),
  };
}"""


def test_markdown_renders_headings_lists_tables_and_highlighted_code_with_a_copy_button(page):
    r = page.evaluate(RENDERED, MARKDOWN)
    assert r["h2"] == ["Steps"] and r["items"] == 3 and r["nested"] == ["aipc serve", "open the page"]
    assert r["inline"] == ["pip", "aipc serve"] and r["strong"] == ["aipc"] and r["em"] == ["page"]
    assert r["del"] == ["slow"]
    assert r["th"] == ["Backend", "Speed", "Notes"] and r["align"] == ["", "al-right", "al-center"]
    assert r["td"] == ["openvino", "120", "slow fast", "llama.cpp", "110", "docs"]
    assert r["links"] == [["docs", "https://github.com/ggml-org/llama.cpp", "_blank", "noopener noreferrer"]]
    assert r["code"] == [CODE] and r["lang"] == ["python"] and r["copy"] == ["Copy"]
    tokens = r["tokens"]
    assert ["tok-k", "def"] in tokens and ["tok-f", "greet"] in tokens and ["tok-c", "# say hello"] in tokens
    assert ["tok-s", 'f"Hello, {name}!"'] in tokens and ["tok-l", "None"] in tokens
    assert "mono" in r["font"].lower()


@pytest.mark.parametrize(
    ("lang", "code", "expected"),
    [
        ("js", "const x = `t`; // c\nfetch(url)", [["tok-k", "const"], ["tok-s", "`t`"], ["tok-c", "// c"]]),
        ("ts", "let n: number = 0x1F;", [["tok-k", "let"], ["tok-n", "0x1F"]]),
        ("json", '{"a": [1, true, null]}', [["tok-p", '"a"'], ["tok-n", "1"], ["tok-l", "true"]]),
        ("bash", 'echo "$HOME" # hi\nexport X=1', [["tok-b", "echo"], ["tok-s", '"$HOME"'], ["tok-c", "# hi"]]),
        ("c", "#include <stdio.h>\nint main() { return 0; }", [["tok-d", "#include <stdio.h>"], ["tok-k", "int"]]),
        ("rust", 'fn main() { let s = "x"; }', [["tok-k", "fn"], ["tok-f", "main"], ["tok-s", '"x"']]),
    ],
)
def test_code_is_highlighted_in_common_languages(page, lang, code, expected):
    text = f"```{lang}\n{code}\n```"
    r = page.evaluate(RENDERED, text)
    assert r["code"] == [code]  # highlighting adds spans, never changes the text
    for token in expected:
        assert token in r["tokens"]


def test_markdown_edge_cases_stay_readable(page):
    cases = {
        "snake_case_name and 2 * 3 * 4": "snake_case_name and 2 * 3 * 4",
        "unclosed **bold": "unclosed **bold",
        "a `code with *stars*` b": "a code with *stars* b",
        "\\*not emphasis\\*": "*not emphasis*",
        "see https://example.com/a_(b). Next": "see https://example.com/a_(b). Next",
    }
    for source, text in cases.items():
        assert page.evaluate("(t) => window.aipcRender(t).textContent", source) == text
    # an answer still streaming: an unclosed code fence is already a code block
    assert page.evaluate("(t) => window.aipcRender(t).querySelector('pre code').textContent", "```py\nx = 1") == "x = 1"


FUZZ = """() => {
  let seed = 42;
  const pick = (n) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
  const parts = ["*", "**", "_", "~~", "`", "```", "[", "]", "(", ")", "<", ">", "!", "|", "#", "-", "+", "1.",
    "\\n", "\\n\\n", " ", "\\t", "\\\\", "http://a.b/c", "javascript:", "word", "> ", "---", "|---|", ":", "  - "];
  const texts = [];
  for (let k = 0; k < 2000; k++) {
    let s = "";
    for (let i = pick(60); i > 0; i--) s += parts[pick(parts.length)];
    texts.push(s);
  }
  // deep nesting and long unmatched runs: bounded depth, no runaway scans
  texts.push("> ".repeat(20000), "*_".repeat(20000) + "x" + "_*".repeat(20000), "*a ".repeat(5000),
    "[a](".repeat(5000), "[".repeat(10000), "  - a\\n".repeat(3000));
  const bad = [];
  for (const text of texts) {
    const node = window.aipcRender(text);
    const unsafe = node.querySelector("script, img, iframe, svg, .plain")
      || [...node.querySelectorAll("a")].find((a) => !/^(https?:|mailto:)/.test(a.getAttribute("href")));
    if (unsafe) bad.push(text);
  }
  return bad;
}"""


def test_the_renderer_survives_random_and_pathological_markdown(page):
    # .plain is the renderer's fallback when it throws: it must not be needed, whatever the model writes.
    assert page.evaluate(FUZZ) == []


HOSTILE = [
    '<img src=x onerror="window.__pwned = 1">',
    "<script>window.__pwned = 2</script>",
    "[x](javascript:alert(1))",
    "[y](JaVaScRiPt:window.__pwned=3)",
    "[t](java\tscript:window.__pwned=4)",
    "[d](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[v](vbscript:msgbox(1))",
    "[r](/v1/models)",
    "<javascript:window.__pwned=5>",
    "![i](javascript:window.__pwned=6)",
    '[q](https://example.com "x" onmouseover="window.__pwned=7")',
    "**<iframe src=javascript:window.__pwned=8>**",
    "| a | <svg onload=window.__pwned=9> |\n|---|---|\n| <img src=x onerror=window.__pwned=10> | b |",
    "```html\n<script>window.__pwned = 11</script>\n```",
    "`<b onclick=window.__pwned=12>x</b>` &#106;avascript:alert(1) &lt;script&gt;",
    "- <details open ontoggle=window.__pwned=13>",
]
SAFE_TAGS = {"p", "a", "br", "code", "pre", "div", "span", "button", "strong", "em", "del", "ul", "ol", "li"}
SAFE_TAGS |= {"table", "thead", "tbody", "tr", "th", "td", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "blockquote"}

INSPECT = """(texts) => texts.map((text) => {
  const node = window.aipcRender(text);
  document.getElementById("messages").append(node);  // live in the document: a handler here would run
  const all = [...node.querySelectorAll("*")];
  return {
    text: node.textContent, tags: all.map((e) => e.tagName.toLowerCase()),
    attrs: all.flatMap((e) => [...e.attributes].map((a) => a.name)),
    hrefs: all.filter((e) => e.tagName === "A").map((a) => a.getAttribute("href")),
  };
})"""


def _assert_inert(results: list[dict]) -> None:
    for source, r in zip(HOSTILE, results, strict=True):
        assert set(r["tags"]) <= SAFE_TAGS, (source, r["tags"])
        assert not [a for a in r["attrs"] if a.startswith("on") or a in ("src", "srcdoc", "style")], source
        assert all(h.startswith(("https://", "http://", "mailto:")) for h in r["hrefs"]), (source, r["hrefs"])
    texts = [r["text"] for r in results]
    assert texts[0] == HOSTILE[0] and texts[1] == HOSTILE[1]  # shown literally, as the model wrote it
    assert texts[2] == "[x](javascript:alert(1))" and texts[8] == HOSTILE[8]
    assert results[7]["hrefs"] == []  # a relative link: no link


def test_hostile_model_output_stays_text_even_without_the_csp(browser, server):
    # The CSP alone would block inline handlers; with it bypassed, only the renderer stands between the model's
    # text and the page. Nothing may run, and nothing but plain formatting elements may be created.
    o = Opened(browser, server.url, bypass_csp=True)
    try:
        results = o.page.evaluate(INSPECT, HOSTILE)
        o.page.wait_for_timeout(500)  # time for an onerror / onload / ontoggle to fire, had one been created
        _assert_inert(results)
        assert o.page.evaluate("window.__pwned") is None
        assert o.dialogs == [] and o.errors == []
    finally:
        o.close()


def test_a_stored_answer_with_hostile_text_is_shown_literally(opened):
    page = opened.page
    seed(page, ("user", "Show me some HTML."), ("assistant", "\n\n".join(HOSTILE)))
    answer = page.locator(".msg.assistant .content")
    answer.wait_for()
    page.wait_for_timeout(500)
    assert page.evaluate("window.__pwned") is None
    shown = answer.inner_text()
    for text in ('<img src=x onerror="window.__pwned = 1">', "<script>window.__pwned = 2</script>"):
        assert text in shown
    assert "[x](javascript:alert(1))" in shown
    assert answer.locator("img, script, iframe, svg, details").count() == 0
    hrefs = answer.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert all(h.startswith("https://") for h in hrefs)


def test_the_copy_button_copies_the_code(browser, server):
    o = Opened(browser, server.url)
    try:
        o.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
        seed(o.page, ("user", "Code please."), ("assistant", MARKDOWN))
        copy = o.page.locator(".msg.assistant [data-act=copy-code]")
        copy.click()
        expect(copy).to_have_text("Copied")
        assert o.page.evaluate("navigator.clipboard.readText()") == CODE
        assert o.errors == []
    finally:
        o.close()


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
