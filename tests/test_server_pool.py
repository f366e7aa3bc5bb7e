"""Many models on one server: loaded on demand, reused, kept alive, evicted least recently used first, memory
given back on unload; `aipc ps`/`aipc stop`; /metrics; the names requests may use.

The second model is the embedded model's file stored under another name (`stored_copy`), so both are real.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from aipc.server.settings import ServerSettings
from tests.conftest import PARIS_QUESTION, run_cli
from tests.test_server_support import (
    LONG_STORY,
    LiveServer,
    RawStream,
    ServerProcess,
    broken_model,
    chat_body,
    first_tokens,
    metrics,
    sample,
    stored_copy,
    wait_for,
)

A = "smollm2:135m"


@pytest.fixture(scope="module")
def b() -> str:
    return stored_copy("smollm2-b")


def loaded(live: LiveServer) -> dict[str, dict]:
    return {m["name"]: m for m in httpx.get(live.url + "/api/ps", timeout=30).json()["models"]}


def ask(url: str, model: str, question: str = PARIS_QUESTION, **options) -> str:
    client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, **options
    )
    return reply.choices[0].message.content


@pytest.fixture(scope="module")
def two(model, b):
    with LiveServer(ServerSettings(parallel=1, max_queue=4), model) as live:
        yield live


def test_two_models_answer_from_one_server_without_reloading(two, b):
    assert "Paris" in ask(two.url, A)
    assert "Paris" in ask(two.url, b)  # loaded on demand
    assert "Paris" in ask(two.url, b)  # and reused
    ids = [m.id for m in OpenAI(base_url=two.url + "/v1", api_key="x").models.list().data]
    assert A in ids and b in ids
    assert set(loaded(two)) == {A, b}
    found = metrics(two.url)
    assert sample(found, "aipc_model_loads_total", model=b, outcome="loaded") == 1
    assert sample(found, "aipc_models_loaded") == 2
    assert sample(found, "aipc_model_memory_bytes", model=b) > 10_000_000
    assert sample(found, "aipc_requests_total", route="/v1/chat/completions", model=b, status="200") == 2
    assert sample(found, "aipc_generation_tokens_total", model=b) >= 6
    assert sample(found, "aipc_time_to_first_token_seconds_count", model=b) == 2


def test_requests_to_different_models_run_at_once(two, b):
    first = RawStream(two.url, "/v1/chat/completions", LONG_STORY | {"model": A})
    second = RawStream(two.url, "/v1/chat/completions", LONG_STORY | {"model": b})
    first_tokens(first)
    first_tokens(second)  # each model has its own slot: the second did not queue behind the first
    health = httpx.get(two.url + "/health", timeout=10).json()
    assert {m["name"]: m["running"] for m in health["models"]} == {A: 1, b: 1}
    assert health["running"] == 2
    found = metrics(two.url)
    assert sample(found, "aipc_requests_running", model=A) == 1 and sample(found, "aipc_requests_running", model=b) == 1
    first.close()
    second.close()
    wait_for(lambda: httpx.get(two.url + "/health", timeout=10).json()["running"] == 0, timeout=2)


def test_a_model_that_fails_to_load_fails_only_its_requests(two):
    name = broken_model()
    for _ in range(2):
        r = httpx.post(two.url + "/v1/chat/completions", json=chat_body(model=name), timeout=60)
        assert r.status_code == 500 and r.json()["error"]["code"] == "model_load_failed", r.text
        assert name in r.json()["error"]["message"]
    assert name not in loaded(two)  # not kept: each request tries again
    assert sample(metrics(two.url), "aipc_model_loads_total", model=name, outcome="failed") == 2
    assert "Paris" in ask(two.url, A)


@pytest.mark.parametrize(
    ("name", "status", "fragment"),
    [
        ("../../etc/passwd", 400, "invalid model name"),
        ("/etc/passwd", 400, "--allow-paths"),
        ("src", 404, "does not exist on this server"),  # a folder in the working directory is not a model name
        ("phi3:mini-128k", 404, "pull it first"),  # hub-only: a chat never starts a download
        ("no-such-model", 404, "does not exist on this server"),
    ],
)
def test_model_names_go_through_the_store_validation(two, name, status, fragment):
    assert Path("src").is_dir()
    r = httpx.post(two.url + "/v1/chat/completions", json=chat_body(model=name), timeout=30)
    assert r.status_code == status and fragment in r.json()["error"]["message"], r.text
    assert name not in loaded(two)
    assert (
        sample(metrics(two.url), "aipc_requests_total", route="/v1/chat/completions", model=name, status=str(status))
        == 0
    )


def test_paths_are_served_only_with_allow_paths(model):
    from aipc.store.resolve import resolve

    path = str(resolve(None).path)
    with LiveServer(ServerSettings(allow_paths=True, max_loaded=2), model) as live:
        client = OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=120)
        reply = client.completions.create(model=path, prompt="The capital of France is", max_tokens=4)
        assert reply.usage.completion_tokens == 4 and path in loaded(live)


def test_a_model_over_the_memory_budget_is_refused(model, b):
    with LiveServer(ServerSettings(max_memory=50 * 2**20), model) as live:
        r = httpx.post(live.url + "/v1/chat/completions", json=chat_body(model=b), timeout=60)
        assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_memory", r.text
        assert "--max-memory" in r.json()["error"]["message"]


# --- keep-alive and eviction ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one(b):
    """At most one model loaded; the preloaded one kept (keep-alive) for an hour."""
    with LiveServer(ServerSettings(model=b, max_loaded=1, keep_alive=3600)) as live:
        wait_for(lambda: httpx.get(live.url + "/health", timeout=10).status_code == 200, timeout=120)
        yield live


def test_an_idle_model_is_evicted_at_once_to_make_room(one, b):
    started = time.monotonic()
    assert "Paris" in ask(one.url, A)  # b was idle: unloaded now, not after its hour of keep-alive
    assert time.monotonic() - started < 60
    assert set(loaded(one)) == {A}
    assert sample(metrics(one.url), "aipc_model_unloads_total", model=b, reason="evicted") >= 1
    assert "Paris" in ask(one.url, b)  # and back: A is the least recently used now
    assert set(loaded(one)) == {b}


def test_a_busy_model_is_not_evicted_the_load_waits(one, b):
    ask(one.url, b)
    busy = RawStream(one.url, "/v1/chat/completions", LONG_STORY | {"model": b, "max_tokens": 300})
    first_tokens(busy)
    answer: list[str] = []
    waiter = threading.Thread(target=lambda: answer.append(ask(one.url, A)))
    waiter.start()
    wait_for(lambda: loaded(one).get(A, {}).get("state") == "loading", timeout=10)
    assert loaded(one)[b]["running"] == 1  # still generating: not unloaded under it
    events = list(busy.events())
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"  # all 300 tokens
    busy.close()
    waiter.join(120)
    assert answer and "Paris" in answer[0]
    assert set(loaded(one)) == {A}


def test_keep_alive_zero_unloads_after_the_request_and_a_duration_expires(model, b):
    with LiveServer(ServerSettings(), model) as live:
        body = {"model": b, "prompt": "Hi", "stream": False}  # a first load compiles the model: allow for it
        r = httpx.post(live.url + "/api/generate", json=body | {"keep_alive": 0}, timeout=120)
        assert r.status_code == 200 and r.json()["done"]
        wait_for(lambda: b not in loaded(live), timeout=10)
        r = httpx.post(live.url + "/api/generate", json=body | {"keep_alive": "2s"}, timeout=120)
        assert r.status_code == 200
        assert b in loaded(live)
        wait_for(lambda: b not in loaded(live), timeout=15)
        # /api/ps drops a model as its unload starts; the metric counts it once the unload has finished
        wait_for(lambda: sample(metrics(live.url), "aipc_model_unloads_total", model=b, reason="expired") == 1, 10)
        assert A in loaded(live)  # the served model stays


# --- a real server process: memory given back, aipc ps / stop, the JSON request log ---------------------------
def test_unload_gives_memory_back_and_ps_stop_work_from_the_cli(b):
    import psutil

    with ServerProcess("-v", "--log-format", "json", "--api-key", "pool-key-0123456789") as srv:
        env = {"AIPC_HOST": srv.url.removeprefix("http://"), "AIPC_API_KEY": "pool-key-0123456789"}
        headers = {"Authorization": "Bearer pool-key-0123456789"}
        client = OpenAI(base_url=srv.url + "/v1", api_key="pool-key-0123456789", max_retries=0, timeout=120)

        def chat(model: str) -> str:
            return (
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": PARIS_QUESTION}], temperature=0
                )
                .choices[0]
                .message.content
            )

        process = psutil.Process(srv.proc.pid)
        assert "Paris" in chat(A)  # the served model has run once: its working memory is counted
        time.sleep(0.5)
        before = process.memory_info().rss
        assert "Paris" in chat(b)
        with_b = process.memory_info().rss
        ps = run_cli("ps", env=env, timeout=60)
        assert ps.returncode == 0, ps.stderr
        lines = ps.stdout.splitlines()
        assert lines[0].split() == ["NAME", "VARIANT", "PROCESSOR", "SIZE", "CONTEXT", "UNTIL"]
        row = next(line for line in lines if line.startswith(b + " "))
        assert "gguf-q4_1" in row and "openvino/cpu" in row and "8192" in row and "minutes from now" in row
        assert any(line.startswith(A + " ") and "Forever" in line for line in lines)

        stop = run_cli("stop", b, env=env, timeout=60)
        assert stop.returncode == 0, stop.stderr
        wait_for(
            lambda: b not in {m["name"] for m in httpx.get(srv.url + "/api/ps", headers=headers).json()["models"]}, 10
        )
        time.sleep(0.5)
        after = process.memory_info().rss
        assert with_b - before > 50 * 2**20, (before, with_b)  # the second model really took memory
        # and unloading gave most of it back (the allocator keeps some; with the weights file's pages released
        # after the first inference, the baseline is small enough that a 10% margin was a few MB)
        assert with_b - after >= 0.7 * (with_b - before), (before, with_b, after)

        again = run_cli("stop", b, env=env, timeout=60)
        assert again.returncode == 1 and "is not loaded" in again.stderr
        alias = run_cli("stop", "smollm2", env=env, timeout=60)  # the served model, by its alias
        assert alias.returncode == 0, alias.stderr
        wait_for(
            lambda: A not in {m["name"] for m in httpx.get(srv.url + "/api/ps", headers=headers).json()["models"]}, 10
        )
        denied = run_cli("ps", env={**env, "AIPC_API_KEY": "wrong-key-0123456789"}, timeout=60)
        assert denied.returncode == 1 and "incorrect API key" in denied.stderr and "HTTP 401" in denied.stderr
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(30) == 0
        log = [json.loads(line) for line in srv.proc.stderr.read().splitlines() if line.startswith("{")]
    requests = [r for r in log if r.get("message") == "request" and r.get("route") == "/v1/chat/completions"]
    assert [r["model"] for r in requests] == [A, b]
    for r in requests:
        assert r["status"] == 200 and r["completion_tokens"] > 3 and r["ttft_ms"] > 0 and r["tokens_per_s"] > 0
    assert requests[1]["load_ms"] > requests[0]["load_ms"]  # the second model was loaded for its request


def test_ps_without_a_server_is_one_line_and_exit_1():
    result = run_cli("ps", env={"AIPC_HOST": "127.0.0.1:9"}, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("aipc: error: cannot reach the server at http://127.0.0.1:9")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("", "http://127.0.0.1:11435"),
        ("localhost:8080", "http://localhost:8080"),
        (":9000", "http://127.0.0.1:9000"),
        ("example.com", "http://example.com:11435"),
        ("https://example.com", "https://example.com:443"),
        ("[::1]:5000", "http://[::1]:5000"),
    ],
)
def test_aipc_host_is_read_as_ollama_host_is(value, url):
    from aipc.cli.client import server_url

    assert server_url(value) == url


def test_keep_alive_and_sizes_parse_as_ollama_and_people_write_them():
    from aipc.errors import InvalidConfigError, UsageError
    from aipc.server.settings import parse_keep_alive, parse_size

    assert [parse_keep_alive(v) for v in ("5m", "1h30m", "30s", "0", 0, 90, -1, "-1m", "2.5s")] == [
        300,
        5400,
        30,
        0,
        0,
        90,
        None,
        None,
        2.5,
    ]
    assert [parse_keep_alive(v) for v in (1e20, "1000000000h", float("inf"), 4e9)] == [None, None, None, None]
    for bad in ("forever", "5 minutes", "", True, "1h-", float("nan")):
        with pytest.raises(InvalidConfigError):
            parse_keep_alive(bad)
    assert parse_size("8G") == 8 * 2**30 and parse_size("512MB") == 512 * 2**20 and parse_size("1000") == 1000
    with pytest.raises(UsageError):
        parse_size("lots")


def test_bad_keep_alive_from_the_environment_is_refused_at_start_up():
    result = run_cli("serve", "--port", "0", env={"AIPC_KEEP_ALIVE": "forever"}, timeout=60)
    assert result.returncode == 2 and "AIPC_KEEP_ALIVE" in result.stderr and "forever" in result.stderr


def test_cwd_is_the_repository_root():
    """The name checks above rely on a folder named `src` in the server's working directory."""
    assert (Path(os.getcwd()) / "src" / "aipc").is_dir()
