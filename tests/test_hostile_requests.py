"""Hostile request bodies against a real server on the embedded model: text that is not Unicode (a lone
surrogate in any string) and deeply nested JSON are a 400 naming the field, never a 500, on the OpenAI and
the Ollama routes alike; a runtime's error about a JSON schema reaches the client without the runtime's build
paths."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from aipc.server.body import MAX_DEPTH
from aipc.server.settings import ServerSettings
from tests.test_server_support import LiveServer, chat_body

LONE = "\ud800"


@pytest.fixture(scope="module")
def http(model):
    with LiveServer(ServerSettings(), model) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


def post(http: httpx.Client, path: str, body: object) -> httpx.Response:
    """`body` as JSON with every non-ASCII character escaped, as Python's json module (and so httpx) sends
    it: a lone surrogate travels as the escape "\\ud800"."""
    raw = json.dumps(body, ensure_ascii=True).encode()
    return http.post(path, content=raw, headers={"Content-Type": "application/json"})


def chat(content: str = "Hi", **extra: object) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 2, "temperature": 0, **extra}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", chat(f"a{LONE}b"), "messages[0].content"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "system", "content": "ok"}, {"role": "user", "content": LONE}]},
            "messages[1].content",
        ),
        ("/v1/chat/completions", chat(model=f"smollm2{LONE}"), "model"),
        ("/v1/chat/completions", chat(stop=["ok", f"x{LONE}"]), "stop[1]"),
        ("/v1/chat/completions", chat(stop=LONE), "stop"),
        ("/v1/chat/completions", chat(user=f"{LONE}user"), "user"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]},
            "messages[0].content[0].text",
        ),
        ("/v1/completions", {"prompt": f"Once upon{LONE}", "max_tokens": 2}, "prompt"),
        ("/v1/completions", {"prompt": ["fine", f"{LONE}"], "max_tokens": 2}, "prompt[1]"),
        ("/v1/chat/completions", chat(**{f"k{LONE}": 1}), '"k\\ud800"'),
    ],
)
def test_a_lone_surrogate_anywhere_is_a_400_naming_the_field(http, path, body, param):
    r = post(http, path, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert error["code"] == "invalid_value" and error["type"] == "invalid_request_error"
    assert "lone surrogate (\\ud800)" in error["message"]


def test_a_surrogate_pair_is_an_ordinary_character(http):
    r = post(http, "/v1/chat/completions", chat("Say \U0001f600"))  # sent as "\ud83d\ude00"
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        # 5,000 levels inside a real chat request, well under the 1 MiB body limit.
        (b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "levels deep"),
        (b'{"a": ' * 5000 + b"1" + b"}" * 5000, "levels deep"),
        (b"[" * ((1 << 20) - 100), "brackets do not pair up"),
        (b'{"messages": ' + b'[{"a": ' * 3000, "brackets do not pair up"),
    ],
)
def test_deeply_nested_json_is_a_400(http, raw, fragment):
    r = http.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"]["code"] == "invalid_json"
    assert fragment in r.json()["error"]["message"]


def test_nesting_up_to_the_limit_is_still_parsed(http):
    nested: object = "deep"
    for _ in range(MAX_DEPTH - 4):
        nested = [nested]
    r = post(http, "/v1/chat/completions", chat(metadata_x=nested))
    assert r.status_code == 400  # not for its depth: an argument the API does not take, named as such
    assert r.json()["error"]["code"] == "unknown_parameter" and r.json()["error"]["param"] == "metadata_x"


def test_a_refused_json_schema_does_not_leak_the_runtimes_build_paths(http):
    body = chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnitz"}}})
    r = post(http, "/v1/chat/completions", body)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "frobnitz" in message  # named by aipc's own schema check, before any runtime sees the schema
    for leak in ("/home/", "jenkins", ".cc", ".cpp", "src/", "_deps"):
        assert leak not in message, message
    assert not re.search(r"\[\d\d:\d\d:\d\d\]", message), message  # the runtime's log timestamp


# The same checks reach Ollama's routes: every dialect reads its body through core.read_json.
@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/api/chat",
            {"model": "smollm2", "messages": [{"role": "user", "content": f"a{LONE}"}]},
            "messages[0].content",
        ),
        ("/api/chat", {"model": f"smol{LONE}", "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ("/api/generate", {"model": "smollm2", "prompt": f"Once{LONE}", "stream": False}, "prompt"),
        ("/api/generate", {"model": "smollm2", "prompt": "hi", "options": {"stop": [LONE]}}, "options.stop[0]"),
        ("/api/show", {"model": f"{LONE}"}, "model"),
    ],
)
def test_a_lone_surrogate_is_a_400_on_ollamas_routes_too(http, path, body, param):
    r = post(http, path, body)
    assert r.status_code == 400, r.text
    message = r.json()["error"]  # Ollama's error shape: one string
    assert f"'{param}'" in message and "lone surrogate (\\ud800)" in message, message


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_deeply_nested_json_is_a_400_on_ollamas_routes_too(http, path):
    raw = b'{"model": "smollm2", "prompt": "hi", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = http.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text[:300]
    assert "levels deep" in r.json()["error"]


def test_the_server_still_answers_after_all_that(http):
    r = post(http, "/v1/chat/completions", chat_body(max_tokens=3))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
