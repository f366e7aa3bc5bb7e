"""`aipc serve`'s log-probabilities, n > 1, penalties and vLLM's tokenizer routes, on the real embedded model, through
the official `openai` client, raw HTTP, and lm-evaluation-harness as a real evaluation client."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from openai import OpenAI

from aipc.server.settings import ServerSettings
from tests.conftest import PARIS_QUESTION
from tests.test_server_support import LiveServer, metrics, sse_data
from tests.test_server_support import sample as metric_sample


@pytest.fixture(scope="module")
def server(model):
    with LiveServer(ServerSettings(), model) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


MESSAGES = [{"role": "user", "content": PARIS_QUESTION}]


# --- chat -------------------------------------------------------------------------------------------------------
def test_chat_logprobs_cover_every_token_of_the_answer(client, model):
    reply = client.chat.completions.create(
        model="smollm2:135m", messages=MESSAGES, temperature=0, max_tokens=16, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    content = choice.logprobs.content
    assert "".join(c.token for c in content) == choice.message.content
    n = reply.usage.completion_tokens
    assert n - 1 <= len(content) <= n  # the end-of-turn token, when counted, has no text and no entry
    for c in content:
        assert c.logprob <= 0 and len(c.top_logprobs) == 3
        assert c.top_logprobs[0].logprob >= c.top_logprobs[-1].logprob
        if "\ufffd" not in c.token:
            assert bytes(c.bytes).decode("utf-8") == c.token
        same = [t.logprob for t in c.top_logprobs if t.token == c.token]
        assert not same or same[0] == pytest.approx(c.logprob, abs=1e-6)  # one distribution per position
        # greedy picks the most likely token, up to how OpenVINO's bf16 decoding differs from the fp32 scorer
        assert c.top_logprobs[0].logprob >= c.logprob - 1.0


def test_streamed_chat_logprobs_match_the_whole_answer(client):
    kwargs = {"model": "smollm2:135m", "messages": MESSAGES, "temperature": 0, "max_tokens": 16, "logprobs": True}
    whole = client.chat.completions.create(**kwargs).choices[0].logprobs.content
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = [c for ch in chunks if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [(c.token, round(c.logprob, 5)) for c in streamed] == [(c.token, round(c.logprob, 5)) for c in whole]
    assert all(c.top_logprobs == [] for c in streamed)


def test_chat_without_logprobs_answers_null(client):
    reply = client.chat.completions.create(model="smollm2:135m", messages=MESSAGES, temperature=0, max_tokens=4)
    assert reply.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"top_logprobs": 2}, "top_logprobs", "needs logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
        ({"logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
        ({"presence_penalty": 3}, "presence_penalty", "less than or equal to 2"),
    ],
)
def test_invalid_logprob_and_sampling_requests_are_400(http, body, param, fragment):
    r = http.post("/v1/chat/completions", json={"messages": MESSAGES, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and fragment in error["message"]


def test_n_choices_are_distinct_seeded_samples(client):
    kwargs = {"model": "smollm2:135m", "messages": MESSAGES, "temperature": 1.0, "max_tokens": 12, "seed": 7}
    reply = client.chat.completions.create(n=3, **kwargs)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) > 1
    assert reply.usage.completion_tokens > 3 * 3
    chunks = list(client.chat.completions.create(n=3, stream=True, **kwargs))
    streamed = [
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
        for i in range(3)
    ]
    assert streamed == texts


def test_unseeded_n_choices_are_sampled_in_one_generation_where_the_runtime_can(client, server, model):
    """Without a seed, OpenVINO samples a whole response's n choices in one generation (num_return_sequences):
    the prompt is prefilled once, which the server's prompt-token counter shows; usage counts it once."""
    if not model.samples_choices_together:
        pytest.skip(f"{model.where} samples one sequence per generation: choices run one by one")
    poem = [{"role": "user", "content": "Write a short poem about the sea."}]
    n_prompt = len(model.encode(poem))
    before = metric_sample(metrics(server.url), "aipc_prompt_tokens_total", model="smollm2:135m")
    kwargs = {"model": "smollm2:135m", "messages": poem, "temperature": 1.0, "max_tokens": 24}
    reply = client.chat.completions.create(n=3, stop=["\n\n"], **kwargs)
    after = metric_sample(metrics(server.url), "aipc_prompt_tokens_total", model="smollm2:135m")
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    assert all(texts) and len(set(texts)) == 3 and not any("\n\n" in t or "<|im_end|>" in t for t in texts)
    assert {c.finish_reason for c in reply.choices} <= {"stop", "length"}
    assert reply.usage.prompt_tokens == n_prompt and after - before == n_prompt  # one prefill for three answers
    assert 3 <= reply.usage.completion_tokens <= 3 * 24
    again = [c.message.content for c in client.chat.completions.create(n=3, **kwargs).choices]
    assert again != texts  # a fresh random seed for every request


def test_usage_counts_each_prompt_once_however_many_choices(http, model):
    prompts = ["The sea is", "Mountains are"]
    body = {"prompt": prompts, "n": 2, "max_tokens": 4, "temperature": 1.0, "seed": 3}
    reply = http.post("/v1/completions", json=body).json()
    assert sorted(c["index"] for c in reply["choices"]) == [0, 1, 2, 3]
    assert reply["usage"]["prompt_tokens"] == sum(len(model.tokenize(p)) for p in prompts)


def _most_repeated(model, text: str) -> int:
    ids = model.tokenize(text)
    return max(ids.count(i) for i in set(ids))


def test_penalties_are_honoured_not_refused(client, model):
    kwargs = {"model": "smollm2:135m", "temperature": 0, "max_tokens": 40, "prompt": "List some fruits:"}
    plain = client.completions.create(**kwargs).choices[0].text
    pen = client.completions.create(frequency_penalty=2.0, presence_penalty=2.0, **kwargs).choices[0].text
    print(f"most repeated token: {_most_repeated(model, plain)}x plain, {_most_repeated(model, pen)}x penalised")
    assert pen != plain and _most_repeated(model, pen) <= _most_repeated(model, plain)


# --- text completions ------------------------------------------------------------------------------------------
def test_completion_logprobs_with_echo_score_the_prompt_first(http, model):
    prompt = "The capital of France is"
    r = http.post(
        "/v1/completions", json={"prompt": prompt, "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 2}
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    ids = model.tokenize(prompt)
    n = len(ids)
    assert len(lp["tokens"]) == n + 3
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    expected = model.prompt_logprobs(ids, 2)
    assert lp["token_logprobs"][1:n] == pytest.approx([t.logprob for t in expected[1:]], abs=1e-5)
    assert all(2 <= len(top) <= 3 for top in lp["top_logprobs"][1:])  # the top 2, and the chosen token
    assert choice["text"].startswith(prompt)
    assert lp["text_offset"][0] == 0 and lp["text_offset"][n] == len(prompt)
    for offset, token in zip(lp["text_offset"][n:], lp["tokens"][n:], strict=True):
        assert choice["text"][offset:].startswith(token)


def test_max_tokens_0_with_echo_scores_a_token_id_prompt_without_generating(http, model):
    ids = model.tokenize("Paris is the capital of France.")
    r = http.post("/v1/completions", json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    assert choice["text"] == model.detokenize(ids)
    assert len(choice["logprobs"]["token_logprobs"]) == len(ids)
    total = sum(choice["logprobs"]["token_logprobs"][1:])
    assert total == pytest.approx(sum(t.logprob for t in model.prompt_logprobs(ids)[1:]), abs=1e-4)
    assert math.isfinite(total) and total < 0


def test_tokens_that_hold_part_of_a_character_are_named_by_their_bytes(http, client, model):
    """As OpenAI names them ("bytes:\\xf0\\x9f"): two different partial tokens are two names, each entry's
    top_logprobs holds its own token, and in chat the bytes join into the answer's UTF-8."""
    text = "Fruit: \U0001f34e\U0001f34c\U0001f347"
    r = http.post("/v1/completions", json={"prompt": text, "max_tokens": 0, "echo": True, "logprobs": 1})
    logprobs = r.json()["choices"][0]["logprobs"]
    partial = [t for t in logprobs["tokens"] if t.startswith("bytes:")]
    assert len(partial) >= 3 and len(set(partial)) >= 2, logprobs["tokens"]
    for token, top in zip(logprobs["tokens"][1:], logprobs["top_logprobs"][1:], strict=True):
        assert token in top
    reply = client.chat.completions.create(
        model="smollm2:135m",
        messages=[{"role": "user", "content": "Reply with three fruit emoji only."}],
        temperature=0,
        max_tokens=12,
        logprobs=True,
    )
    answer = reply.choices[0].message.content
    assert b"".join(bytes(c.bytes) for c in reply.choices[0].logprobs.content) == answer.encode("utf-8")


def test_a_batch_of_prompts_gets_a_choice_each(http, model):
    prompts = [model.tokenize("The capital of France is"), model.tokenize("The capital of Italy is")]
    r = http.post(
        "/v1/completions", json={"prompt": prompts, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
    )
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert [len(c["logprobs"]["tokens"]) for c in choices] == [len(p) + 1 for p in prompts]


def test_a_completion_that_ends_at_the_end_token_reports_its_log_prob(http, model):
    """As vLLM: the end-of-sequence token that stopped a completion has an entry (no text), so an evaluation
    harness that reads the one generated token after an echoed prompt still finds it, whole or streamed."""
    ids = model.encode(MESSAGES) + model.tokenize("The capital of France is Paris.")  # the end comes next
    body = {"prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == model.detokenize(ids)
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 1
    assert lp["text_offset"][-1] == len(choice["text"])
    (end,) = model.tokenize(lp["tokens"][-1])  # a control token's string is that control token
    expected = model.prompt_logprobs([*ids, end])[-1].logprob
    assert lp["token_logprobs"][-1] == pytest.approx(expected, abs=1e-3)
    with http.stream("POST", "/v1/completions", json=body | {"stream": True}) as r:
        events = [e for e in sse_data(r.iter_lines()) if e != "[DONE]"]
    last = events[-1]["choices"][0]
    assert last["finish_reason"] == "stop" and last["logprobs"]["tokens"] == lp["tokens"][-1:]


def test_streamed_completion_logprobs(http):
    body = {"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "logprobs": 1, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        events = [e for e in sse_data(r.iter_lines()) if e != "[DONE]"]
    parts = [e["choices"][0] for e in events if e["choices"][0]["text"]]
    assert all(p["logprobs"] and len(p["logprobs"]["tokens"]) >= 1 for p in parts)
    offsets = [o for p in parts for o in p["logprobs"]["text_offset"]]
    assert offsets == sorted(offsets) and offsets[0] == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "logprobs": 6}, "logprobs"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": [1, 2_000_000_000]}, "prompt"),
        ({"prompt": []}, "prompt"),
    ],
)
def test_invalid_completion_requests_are_400(http, body, param):
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


# --- tokenizer routes ------------------------------------------------------------------------------------------
def test_tokenizer_routes_tokenize_as_the_served_model(http, model):
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] == model.info.eos_token and info["chat_template"] == model.chat_template
    text = "Hello <|im_end|> world"
    r = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False, "return_token_strs": True}).json()
    assert r["tokens"] == model.tokenize(text) and r["count"] == len(r["tokens"])
    assert "".join(r["token_strs"]) == text
    assert http.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": model.detokenize(r["tokens"])}
    chat = http.post("/tokenize", json={"messages": MESSAGES}).json()
    assert chat["tokens"] == model.encode(MESSAGES)
    eos = http.post("/tokenize", json={"prompt": info["eos_token"]}).json()["tokens"]
    assert len(eos) == 1  # a control token's string is that control token


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {"prompt": 5}, "prompt"),
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "x", "extra": 1}, "extra"),
        ("/detokenize", {"tokens": ["a"]}, "tokens"),
        ("/detokenize", {"tokens": [True]}, "tokens"),
        ("/detokenize", {"tokens": [5, 2_000_000_000]}, "tokens"),
    ],
)
def test_tokenizer_routes_refuse_bad_bodies(http, path, body, param):
    r = http.post(path, json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


# --- lm-evaluation-harness -------------------------------------------------------------------------------------
MC_DOCS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "London", "Berlin"], "answer": 0},
    {"question": "What colour is the sky on a clear day?", "choices": ["green", "blue", "red"], "answer": 1},
    {"question": "How many legs does a cat have?", "choices": ["two", "six", "four"], "answer": 2},
    {"question": "Which animal barks?", "choices": ["dog", "fish"], "answer": 0},
]


def test_lm_eval_harness_log_likelihoods_equal_the_python_api(server, model, tmp_path, monkeypatch):
    """lm-evaluation-harness's `local-completions` model with `tokenizer_backend=remote` tokenizes through
    /tokenize, scores each choice through /v1/completions (token-id prompts, echo, logprobs 1, max_tokens 1), and
    its per-choice log-likelihoods equal the sum of `Model.prompt_logprobs` over the same continuation tokens."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: set it for this test only, so later tests in this
    # process (the hub look-alike's pulls) are not left offline.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness (lm-eval[api]) is not installed")
    from lm_eval.tasks import TaskManager

    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in MC_DOCS))
    (tmp_path / "aipc_mc.yaml").write_text(
        "task: aipc_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n"
    )
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model=smollm2:135m,base_url={server.url}/v1/completions,tokenizer_backend=remote,"
        "num_concurrent=1,max_retries=1,tokenized_requests=True",
        tasks=["aipc_mc"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        log_samples=True,
    )
    samples = results["samples"]["aipc_mc"]
    assert len(samples) == len(MC_DOCS)
    compared = 0
    for sample in samples:
        doc = sample["doc"]
        context = f"Question: {doc['question']}\nAnswer:"
        for choice, resp in zip(doc["choices"], sample["resps"], strict=True):
            loglik = float(resp[0][0])
            # as lm-eval splits a pair: the whole text tokenized, the context's tokens first
            whole, ctx = model.tokenize(f"{context} {choice}"), model.tokenize(context)
            assert whole[: len(ctx)] == ctx
            got = model.prompt_logprobs(whole)[len(ctx) :]
            assert loglik == pytest.approx(sum(t.logprob for t in got), abs=1e-4), (context, choice)
            compared += 1
    assert compared == sum(len(d["choices"]) for d in MC_DOCS)
    print("lm-eval acc:", results["results"]["aipc_mc"]["acc,none"])


def test_logit_bias_on_a_backend_without_it_is_refused_by_name(http, model):
    r = http.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2, "logit_bias": {"5": 1}})
    if model.info.backend in ("llamacpp", "onnxruntime"):
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 400, r.text
    assert f"logit_bias is not supported by the {model.info.backend} backend" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "logit_bias"


def test_logit_bias_past_the_vocabulary_is_refused(http):
    r = http.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2, "logit_bias": {"999999": 5}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias", r.text
    assert "999999 is not in this model's vocabulary" in r.json()["error"]["message"]


def test_ollama_penalty_options_are_honoured(http, model):
    body = {"model": "smollm2:135m", "prompt": "List some fruits:", "raw": True, "stream": False}
    plain = http.post("/api/generate", json=body | {"options": {"temperature": 0, "num_predict": 40}}).json()
    options = {"temperature": 0, "num_predict": 40, "frequency_penalty": 2.0, "presence_penalty": 2.0}
    pen = http.post("/api/generate", json=body | {"options": options})
    assert pen.status_code == 200, pen.text
    text, before = pen.json()["response"], plain["response"]
    assert text != before and _most_repeated(model, text) <= _most_repeated(model, before)
    # past OpenAI's range, taken at its end, as Ollama's sliders send such values
    over = http.post(
        "/api/generate", json=body | {"options": options | {"presence_penalty": 5, "frequency_penalty": 9}}
    )
    assert over.status_code == 200 and over.json()["response"] == text
