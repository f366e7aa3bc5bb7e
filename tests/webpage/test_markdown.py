"""The chat page's Markdown renderer (`window.aipcRender(text)` -> a detached element) fed hostile and tricky text
directly, since no real model can be made to say exactly that; stored conversations carry such text end to end."""

from __future__ import annotations

import pytest

from tests.webpage.support import SKIP_REASON, Opened, expect, seed

pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


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
