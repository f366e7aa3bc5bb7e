"""`aipc serve`'s API on the real embedded model, through the official `openai` client and raw HTTP.

One in-process server (uvicorn in a thread on a free loopback port) serves the session's CPU model; the
security tests start their own with the settings they check.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai import OpenAI

from aipc.server.settings import ServerSettings
from tests.conftest import PARIS_QUESTION
from tests.test_server_support import LiveServer, chat_body, sse_data

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def server(model):
    with LiveServer(ServerSettings(max_messages=8), model) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


# --- the openai client -------------------------------------------------------------------------------------
def test_openai_chat_completion_answers_paris(client):
    reply = client.chat.completions.create(
        model="smollm2:135m", messages=[{"role": "user", "content": PARIS_QUESTION}], temperature=0
    )
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.object == "chat.completion" and reply.model == "smollm2:135m"
    assert reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 3
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_openai_streamed_chat_answers_paris_then_usage(client):
    chunks = list(
        client.chat.completions.create(
            model="smollm2:135m",
            messages=[{"role": "user", "content": PARIS_QUESTION}],
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 3  # streamed, not one blob
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 3
    assert all(c.usage is None for c in chunks[:-1])


def test_streamed_and_whole_answers_agree(client):
    kwargs = {"model": "smollm2:135m", "messages": [{"role": "user", "content": "Name three colours."}]}
    whole = client.chat.completions.create(temperature=0, max_tokens=40, **kwargs).choices[0].message.content
    stream = client.chat.completions.create(temperature=0, max_tokens=40, stream=True, **kwargs)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == whole


def test_openai_lists_and_retrieves_the_served_model(client):
    models = client.models.list()
    assert "smollm2:135m" in [m.id for m in models.data]  # and every other model this server can run
    assert client.models.retrieve("smollm2:135m").id == "smollm2:135m"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_a_model_card_is_the_same_from_both_routes(client):
    listed = {m.id: m for m in client.models.list().data}["smollm2:135m"]
    assert client.models.retrieve("smollm2:135m").created == listed.created


def test_what_clients_send_back_as_openai_defines_it_is_taken(client, http):
    ask = [{"role": "user", "content": "Say hi."}]
    # null for a field OpenAI lets be null means its default
    r = http.post("/v1/chat/completions", json={"messages": ask, "max_tokens": 3, "stream": None, "n": None})
    assert r.status_code == 200 and len(r.json()["choices"]) == 1
    r = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "echo": None, "n": None, "stream": None})
    assert r.status_code == 200 and not r.json()["choices"][0]["text"].startswith("Hi")
    # a whole earlier reply resent (model_dump has annotations), an assistant's refusal part
    earlier = client.chat.completions.create(model="smollm2:135m", messages=ask, max_tokens=3)
    resent = earlier.choices[0].message.model_dump()
    refusal = {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]}
    messages = [*ask, resent, {"role": "user", "content": "Again."}, refusal, {"role": "user", "content": "Once more."}]
    assert client.chat.completions.create(model="smollm2:135m", messages=messages, max_tokens=3).choices
    # OpenAI's newer fields that change nothing here, as SDKs and LiteLLM pass them through
    hints = {
        "prompt_cache_key": "k",
        "safety_identifier": "u1",
        "reasoning_effort": "low",
        "verbosity": "low",
        "modalities": ["text"],
        "audio": None,
        "service_tier": "auto",
        "prediction": {"type": "content", "content": "Hi"},
        "stream_options": {"include_usage": True, "include_obfuscation": False},
    }
    r = http.post("/v1/chat/completions", json={"messages": ask, "max_tokens": 2, "stream": True} | hints)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text
    thought = {"role": "assistant", "content": "Hi.", "reasoning_content": "The user greets.", "cache_control": {}}
    r = http.post("/v1/chat/completions", json={"messages": [*ask, thought, *ask], "max_tokens": 2})
    assert r.status_code == 200, r.text
    # any int64 seed, negative ones as fixed as the rest
    seeded = [
        client.chat.completions.create(model="smollm2:135m", messages=ask, max_tokens=8, temperature=1, seed=-1)
        for _ in range(2)
    ]
    assert seeded[0].choices[0].message.content == seeded[1].choices[0].message.content
    two = client.chat.completions.create(model="smollm2:135m", messages=ask, max_tokens=4, n=2, seed=-1)
    assert len(two.choices) == 2  # choice 1's seed (seed + 1) wraps past the largest
    assert http.get("/v1/models/").json()["object"] == "list"  # with a trailing slash
    # more than OpenAI's 4 stop strings, as lm-eval's code tasks send
    stops = ["\nclass", "\ndef", "\n#", "\nif", "\nprint", "<|endoftext|>"]
    assert client.completions.create(model="smollm2:135m", prompt="def add(a, b):\n", max_tokens=8, stop=stops)


@pytest.mark.parametrize(
    "content, message",
    [
        ([{"type": "text"}], "a text part needs a string 'text'"),
        ([{"type": "image_url", "image_url": {"url": "data:,"}}], "only text content parts"),
        ([{"type": "refusal", "refusal": "no"}], "only text content parts"),  # a user's refusal part is not text
    ],
)
def test_a_content_part_the_model_cannot_take_is_named(http, content, message):
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
    assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_text_completion_sends_the_prompt_raw(client, model):
    prompt = "The capital of France is"
    reply = client.completions.create(model="smollm2:135m", prompt=prompt, max_tokens=6, temperature=0)
    assert "Paris" in reply.choices[0].text
    assert reply.usage.prompt_tokens == len(model.tokenize(prompt))  # no chat template around it
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 6


def test_streamed_text_completion_with_echo(http):
    body = {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "stream": True, "echo": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        events = list(sse_data(r.iter_lines()))
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["text"] for e in events[:-1])
    assert text.startswith("The capital of France is") and "Paris" in text
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_stop_strings_and_max_tokens(client):
    reply = client.chat.completions.create(
        model="smollm2:135m", messages=[{"role": "user", "content": PARIS_QUESTION}], temperature=0, stop=["Paris"]
    )
    assert "Paris" not in reply.choices[0].message.content
    assert reply.choices[0].message.content.startswith("The capital of France is")
    assert reply.choices[0].finish_reason == "stop"
    short = client.chat.completions.create(
        model="smollm2:135m", messages=[{"role": "user", "content": "Tell me a story."}], max_completion_tokens=5
    )
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 5


def test_min_p_as_vllm_and_llama_cpp_servers_take_it(client):
    """min_p 1 keeps only the most likely token: a hot sample is then the greedy answer."""
    ask = {"model": "smollm2:135m", "messages": [{"role": "user", "content": PARIS_QUESTION}], "max_tokens": 10}
    greedy = client.chat.completions.create(**ask, temperature=0).choices[0].message.content
    hot = client.chat.completions.create(**ask, temperature=1.5, top_p=1.0, extra_body={"min_p": 1.0, "top_k": 0})
    assert hot.choices[0].message.content == greedy


def test_json_schema_response_format_constrains_the_answer(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    reply = client.chat.completions.create(
        model="smollm2:135m",
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}},
    )
    answer = json.loads(reply.choices[0].message.content)
    assert isinstance(answer["city"], str) and "Paris" in answer["city"]


def test_a_json_schema_the_runtime_refuses_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="smollm2:135m",
            messages=[{"role": "user", "content": "Hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnitz"}}},
        )
    assert info.value.body["param"] == "response_format"
    assert "frobnitz" in info.value.message


def test_json_object_response_format_starts_an_object(client):
    reply = client.chat.completions.create(
        model="smollm2:135m",
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        temperature=0,
        max_tokens=30,
        response_format={"type": "json_object"},
    )
    assert reply.choices[0].message.content.lstrip().startswith("{")


@pytest.mark.parametrize(
    ("kwargs", "error", "param", "fragment"),
    [
        ({"temperature": 3}, openai.BadRequestError, "temperature", "less than or equal to 2"),
        ({"top_logprobs": 3}, openai.BadRequestError, "top_logprobs", "needs logprobs: true"),
        ({"model": "gpt-4o"}, openai.NotFoundError, "model", "does not exist"),
        ({"tools": [{"type": "retrieval"}]}, openai.BadRequestError, "tools", "must be 'function'"),
        ({"extra_body": {"mirostat": 2}}, openai.BadRequestError, "mirostat", "Unrecognized request argument"),
    ],
)
def test_openai_client_sees_each_error_as_its_exception(client, kwargs, error, param, fragment):
    args = {"model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4} | kwargs
    with pytest.raises(error) as info:
        client.chat.completions.create(**args)
    assert info.value.body["param"] == param
    assert fragment in info.value.message


# --- raw HTTP: every invalid request is a 400 naming its field, never a 500 ----------------------------------
@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ("{not json", None, "not valid JSON"),
        ("", None, "body is empty"),
        ("[1, 2]", None, "must be a JSON object, got an array"),
        ('"hello"', None, "got a string"),
        ({}, "messages", "Missing required parameter"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": "hi"}, "messages", "valid list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "'system', 'developer'"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages", "messages[0].tool_call_id must be"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "must be a string"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content", "valid"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content", "only text"),
        (chat_body(temperature="0.5"), "temperature", "valid number"),
        (chat_body(temperature=-1), "temperature", "greater than or equal to 0"),
        (chat_body(top_p=0), "top_p", "greater than 0"),
        (chat_body(max_tokens=0), "max_tokens", "greater than or equal to 1"),
        (chat_body(max_tokens=True), "max_tokens", "valid integer"),
        (chat_body(max_tokens=2.5), "max_tokens", "valid integer"),
        (chat_body(seed=-(2**63) - 1), "seed", "greater than or equal to"),
        (chat_body(service_tier="bogus"), "service_tier", "auto"),
        (chat_body(modalities=["text", "audio"]), "modalities", "audio output"),
        (chat_body(web_search_options={}), "web_search_options", "does not search"),
        (chat_body(top_k=10**12), "top_k", "less than or equal to"),
        (chat_body(min_p=1.5), "min_p", "less than or equal to 1"),
        (chat_body(max_tokens=10**9), "messages", "maximum context length is 8192 tokens"),
        (chat_body(max_tokens=10**12), "max_tokens", "an integer from 1 to 2147483647"),
        ('{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "temperature", "got NaN"),
        (chat_body(stream="yes"), "stream", "valid boolean"),
        (chat_body(stop=[str(i) for i in range(33)]), "stop", "at most 32"),
        (chat_body(stop=[""]), "stop", "1 to 256 characters"),
        (chat_body(stop=5), "stop", "valid string"),
        (chat_body(n=129), "n", "less than or equal to 128"),
        (chat_body(presence_penalty=2.5), "presence_penalty", "less than or equal to 2"),
        (chat_body(logit_bias={"x": -100}), "logit_bias", "must be token ids"),
        (chat_body(stream_options={"include_usage": True}), "stream_options", "only allowed when stream"),
        (chat_body(response_format={"type": "xml"}), "response_format.type", "'text', 'json_object'"),
        (chat_body(frobnicate=1), "frobnicate", "Unrecognized request argument supplied: frobnicate"),
        (chat_body(max_tokens=4, max_completion_tokens=5), "max_tokens", "not both"),
        ({"messages": [{"role": "user", "content": "x"}] * 9}, "messages", "at most 8"),
    ],
)
def test_invalid_chat_requests_are_400_with_param(http, body, param, fragment):
    r = http.post("/v1/chat/completions", **({"content": body} if isinstance(body, str) else {"json": body}))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fragment in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"max_tokens": 4}, "prompt", "Missing required parameter"),
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": "x", "suffix": "y"}, "suffix", "not supported"),
        ({"prompt": "x", "best_of": 3}, "best_of", "only 1"),
    ],
)
def test_invalid_text_completion_requests_are_400(http, body, param, fragment):
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and fragment in r.json()["error"]["message"]


def test_unknown_model_is_404_model_not_found(http):
    r = http.post("/v1/chat/completions", json=chat_body(model="llama-70b"))
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["message"].startswith("The model 'llama-70b' does not exist on this server; it can run ")
    assert "smollm2:135m" in error["message"]
    assert error | {"message": None} == {
        "message": None,
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_unknown_routes_and_methods_answer_in_openai_shape(http):
    r = http.get("/v1/engines")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = http.get("/v1/chat/completions")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]["message"]


def test_body_over_the_limit_is_413(model):
    settings = ServerSettings(max_body_bytes=4096)
    with LiveServer(settings, model) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        big = chat_body("x" * 5000)
        r = c.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks():  # no Content-Length: the limit must hold while the body streams in
            payload = json.dumps(big).encode()
            for i in range(0, len(payload), 1000):
                yield payload[i : i + 1000]

        r = c.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert c.post("/v1/chat/completions", json=chat_body(max_tokens=2)).status_code == 200


def test_context_length_is_checked_before_generating(model):
    with LiveServer(ServerSettings(context_length=64), model) as live:
        client = OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=30)
        long_question = "Please tell me about Paris. " * 20
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="smollm2:135m", messages=[{"role": "user", "content": long_question}])
        assert info.value.code == "context_length_exceeded"
        assert "maximum context length is 64 tokens" in info.value.message
        with pytest.raises(openai.BadRequestError) as info:  # the prompt fits, prompt + max_tokens does not
            client.chat.completions.create(
                model="smollm2:135m", messages=[{"role": "user", "content": "Hi"}], max_tokens=60
            )
        assert info.value.code == "context_length_exceeded" and info.value.body["param"] == "messages"
        # Without max_tokens the answer gets the room that is left, and ends with "length" at the latest.
        reply = client.chat.completions.create(
            model="smollm2:135m", messages=[{"role": "user", "content": "Write a long story."}], temperature=0
        )
        assert reply.usage.total_tokens <= 64


# --- health and loading ------------------------------------------------------------------------------------
def test_health_reports_ok_and_counts(http):
    r = http.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body | {"models": None} == {
        "status": "ok",
        "model": "smollm2:135m",
        "running": 0,
        "queued": 0,
        "models": None,
    }
    assert {"name": "smollm2:135m", "state": "ready", "running": 0, "queued": 0} in body["models"]
    # every response names its request, as OpenAI's do; a client's own id is kept
    assert (
        r.headers["x-request-id"].startswith("req_")
        and r.headers["x-request-id"] != http.get("/health").headers["x-request-id"]
    )
    assert http.get("/health", headers={"X-Request-Id": "mine-42"}).headers["x-request-id"] == "mine-42"
    assert http.get("/v1/nowhere").headers["x-request-id"].startswith("req_")  # errors too


def test_until_the_default_model_is_loaded_health_is_503_loading():
    # lifespan off: nothing starts the preload, so the server stays in its "loading" state for this test.
    with LiveServer(ServerSettings(), lifespan="off") as live, httpx.Client(base_url=live.url, timeout=10) as c:
        health = c.get("/health")
        assert health.status_code == 503 and health.json() == {"status": "loading", "model": "smollm2:135m"}
        assert "smollm2:135m" in [m["id"] for m in c.get("/v1/models").json()["data"]]  # listing needs no model
        assert c.get("/").status_code == 200


@pytest.mark.parametrize("schema", ["not json", "[1, 2]", 7])
def test_generation_config_json_schema_must_be_a_schema_object(schema):
    from aipc.engine.config import GenerationConfig
    from aipc.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError, match="json_schema must be a JSON Schema object"):
        GenerationConfig(json_schema=schema)
    assert GenerationConfig(json_schema='{"type": "object"}').json_schema == '{"type": "object"}'
