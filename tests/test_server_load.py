"""The server under load: slots and the queue, 503 + Retry-After, clients that leave, continuous batching."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from openai import OpenAI

import aipc
from aipc.server.settings import ServerSettings
from tests.conftest import PARIS_QUESTION
from tests.test_server_support import LONG_STORY, LiveServer, RawStream, chat_body, first_tokens, wait_for


def health(live: LiveServer) -> dict:
    return httpx.get(live.url + "/health", timeout=10).json()


@pytest.fixture(scope="module")
def single(model):
    with LiveServer(ServerSettings(parallel=1, max_queue=1), model) as live:
        yield live


def test_a_client_that_disconnects_frees_its_slot_within_a_second(single):
    stream = RawStream(single.url, "/v1/chat/completions", LONG_STORY)
    first_tokens(stream)
    assert health(single)["running"] == 1
    stream.close()
    freed_after = wait_for(lambda: health(single)["running"] == 0, timeout=1.0)
    assert freed_after < 1.0
    started = time.monotonic()
    r = httpx.post(single.url + "/v1/chat/completions", json=chat_body(), timeout=30)
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"]
    assert time.monotonic() - started < 5  # it did not wait for the 2000-token story


def test_full_queue_is_503_with_retry_after_and_a_queued_request_runs_next(single):
    running = RawStream(single.url, "/v1/chat/completions", LONG_STORY | {"max_tokens": 200})
    first_tokens(running)
    queued = RawStream(single.url, "/v1/chat/completions", chat_body(stream=True))
    wait_for(lambda: health(single)["queued"] == 1, timeout=5)

    refused = httpx.post(single.url + "/v1/chat/completions", json=chat_body(), timeout=10)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "server_busy"
    assert int(refused.headers["retry-after"]) >= 1
    client = OpenAI(base_url=single.url + "/v1", api_key="x", max_retries=0, timeout=10)
    with pytest.raises(openai.InternalServerError) as info:  # what the official client makes of a 503
        client.chat.completions.create(model="smollm2:135m", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 503 and info.value.response.headers["retry-after"]

    # The running story finishes (200 tokens); the queued question then runs and is answered in full.
    assert list(running.events())[-1] == "[DONE]"
    events = list(queued.events())
    assert events[-1] == "[DONE]"
    assert "Paris" in "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
    running.close()
    queued.close()


def test_a_queued_request_whose_client_left_never_runs(single):
    running = RawStream(single.url, "/v1/chat/completions", LONG_STORY)
    first_tokens(running)
    queued = RawStream(single.url, "/v1/chat/completions", LONG_STORY)
    wait_for(lambda: health(single)["queued"] == 1, timeout=5)
    queued.close()
    wait_for(lambda: health(single)["queued"] == 0, timeout=1.0)
    assert health(single)["running"] == 1
    running.close()
    wait_for(lambda: health(single)["running"] == 0, timeout=1.0)
    time.sleep(0.5)  # had the left request been kept, it would hold the slot now
    assert health(single) | {"model": None, "models": None} == {
        "status": "ok",
        "model": None,
        "running": 0,
        "queued": 0,
        "models": None,
    }


def test_generation_does_not_block_the_event_loop(single):
    stream = RawStream(single.url, "/v1/chat/completions", LONG_STORY)
    first_tokens(stream)
    started = time.monotonic()
    for _ in range(10):
        assert httpx.get(single.url + "/health", timeout=5).status_code == 200
    assert (time.monotonic() - started) / 10 < 0.25  # answered between tokens, not after the story
    stream.close()
    wait_for(lambda: health(single)["running"] == 0, timeout=1.0)


# --- --parallel 2: continuous batching ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def batched():
    with aipc.load(device="cpu", parallel=2) as model:
        assert model.info.parallel == 2  # the registry opened the continuous-batching pipeline
        with LiveServer(ServerSettings(parallel=2, max_queue=2), model) as live:
            yield live


def test_parallel_requests_generate_together_and_answer_right(batched):
    results: dict[int, tuple[str, float, float]] = {}

    def ask(i: int, question: str) -> None:
        stream = RawStream(batched.url, "/v1/chat/completions", chat_body(question, stream=True, max_tokens=48))
        start = time.monotonic()
        first = None
        text = ""
        for event in stream.events():
            if event != "[DONE]" and event["choices"] and event["choices"][0]["delta"].get("content"):
                first = first or time.monotonic()
                text += event["choices"][0]["delta"]["content"]
        results[i] = (text, first - start, time.monotonic() - start)
        stream.close()

    # Answers long enough (48 tokens each) that the two surely overlap if they are batched.
    questions = ["Tell me about Paris, the capital of France.", "Describe Paris, the capital of France, in detail."]
    threads = [threading.Thread(target=ask, args=(i, q)) for i, q in enumerate(questions)]
    for t in threads:
        t.start()
    seen_running = 0
    while any(t.is_alive() for t in threads):
        seen_running = max(seen_running, health(batched)["running"])
        time.sleep(0.01)
    for t in threads:
        t.join(60)
    assert all("Paris" in results[i][0] for i in (0, 1)), results
    assert seen_running == 2  # both held a slot at once
    # Each started before the other ended: they were batched, not queued one after the other.
    assert results[0][1] < results[1][2] and results[1][1] < results[0][2]


def test_n_choices_generate_together_on_a_batching_server(batched):
    """n > 1 in a whole response: the choices hold slots at once (batched by the runtime), and differ."""
    body = chat_body("Write a short poem about the sea.", max_tokens=48) | {"n": 2, "temperature": 1.0, "seed": 7}
    reply: dict = {}

    def ask() -> None:
        reply.update(httpx.post(batched.url + "/v1/chat/completions", json=body, timeout=120).json())

    thread = threading.Thread(target=ask)
    thread.start()
    seen_running = 0
    while thread.is_alive():
        seen_running = max(seen_running, health(batched)["running"])
        time.sleep(0.01)
    thread.join()
    texts = [c["message"]["content"] for c in reply["choices"]]
    assert [c["index"] for c in reply["choices"]] == [0, 1] and all(texts) and texts[0] != texts[1], reply
    assert 2 <= reply["usage"]["completion_tokens"] <= 2 * 48
    assert seen_running == 2  # both choices held a slot at once


def test_batched_disconnect_frees_the_slot_and_the_batch_goes_on(batched):
    leaving = RawStream(batched.url, "/v1/chat/completions", LONG_STORY)
    staying = RawStream(batched.url, "/v1/chat/completions", LONG_STORY | {"max_tokens": 60})
    first_tokens(leaving)
    first_tokens(staying)
    leaving.close()
    wait_for(lambda: health(batched)["running"] == 1, timeout=1.0)
    events = list(staying.events())
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    staying.close()
    wait_for(lambda: health(batched)["running"] == 0, timeout=1.0)


def test_batched_pipeline_matches_the_single_pipeline(batched, model):
    """The continuous-batching mode is the same engine contract: same greedy text, stop strings, JSON schema."""
    batched_model = batched.state.model
    for question in (PARIS_QUESTION, "Name three colours."):
        assert batched_model.generate(question, temperature=0, max_tokens=40) == model.generate(
            question, temperature=0, max_tokens=40
        )
    assert batched_model.generate(PARIS_QUESTION, temperature=0, stop=["Paris"]) == "The capital of France is "
    schema = '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'
    answer = batched_model.generate("Give the capital of France as JSON.", temperature=0, json_schema=schema)
    assert "Paris" in json.loads(answer)["city"]
    events = batched_model.stream("Write a long story.", temperature=0, max_tokens=3)
    *_, done = events
    assert done.finish_reason == "length" and done.usage.completion_tokens == 3


def test_batched_answers_carry_log_probs_and_tool_calls(batched):
    """The batched pipeline reports the ids it generated (log-probs are scored from them) and streams control
    tokens, so tool-call markup reaches the engine as it does without batching."""
    client = OpenAI(base_url=batched.url + "/v1", api_key="x", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(
        model="smollm2:135m", messages=messages, temperature=0, max_tokens=12, logprobs=True, top_logprobs=2
    )
    content = reply.choices[0].logprobs.content
    assert content and "".join(c.token for c in content) == reply.choices[0].message.content
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    for stream in (False, True):
        kwargs = {"model": "smollm2:135m", "messages": ask, "tools": [weather], "temperature": 0, "max_tokens": 60}
        forced = {"type": "function", "function": {"name": "get_weather"}}
        if stream:
            parts = list(client.chat.completions.create(**kwargs, tool_choice=forced, stream=True))
            calls = [c for p in parts if p.choices for c in (p.choices[0].delta.tool_calls or [])]
            assert calls and calls[0].function.name == "get_weather"
            assert parts[-1].choices[0].finish_reason == "stop"  # OpenAI's, for a named tool_choice
        else:
            choice = client.chat.completions.create(**kwargs, tool_choice=forced).choices[0]
            assert choice.finish_reason == "stop" and choice.message.tool_calls[0].function.name == "get_weather"
            assert "city" in json.loads(choice.message.tool_calls[0].function.arguments)
            assert "<tool_call>" not in (choice.message.content or "")
