"""`aipc serve` as a process: the ready line, loading in the background, SIGTERM draining, start-up failures."""

from __future__ import annotations

import signal
import socket
import time

import httpx
import pytest

from tests.conftest import run_cli
from tests.test_server_support import LONG_STORY, RawStream, ServerProcess, chat_body, first_tokens, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_is_503_loading_until_the_model_is_ready_then_one_ready_line():
    port = free_port()
    with ServerProcess("--port", str(port), wait=False) as srv:
        seen = []

        def ready() -> bool:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            except httpx.TransportError:
                return False  # not listening yet
            seen.append((r.status_code, r.json()))
            return r.status_code == 200

        wait_for(ready, timeout=120, interval=0.05)
        line = srv.wait_ready(timeout=10)
        assert line.strip().startswith(f"aipc: serving smollm2:135m on openvino/cpu at http://127.0.0.1:{port}/")
        # the server answered before the model was loaded
        assert (503, {"status": "loading", "model": "smollm2:135m"}) in seen
        assert {s for s, _ in seen[:-1]} <= {503} and seen[-1][0] == 200
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat_body(), timeout=30)
        assert "Paris" in r.json()["choices"][0]["message"]["content"]
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(30) == 0
        assert srv.lines.empty()  # nothing but the one ready line on stdout


def test_sigterm_lets_the_stream_finish_refuses_new_requests_and_exits_0():
    with ServerProcess("--drain-timeout", "30") as srv:
        stream = RawStream(srv.url, "/v1/chat/completions", LONG_STORY | {"max_tokens": 200})
        first_tokens(stream)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        try:
            late = httpx.post(srv.url + "/v1/chat/completions", json=chat_body(), timeout=10)
        except httpx.ConnectError:
            pass  # the listener is closed: refused
        else:
            assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        events = list(stream.events())
        assert events[-1] == "[DONE]"
        assert events[-2]["choices"][0]["finish_reason"] == "length"  # all 200 tokens, not cut short
        stream.close()
        assert srv.proc.wait(30) == 0


def test_past_the_drain_timeout_streams_end_with_an_error_event():
    with ServerProcess("--drain-timeout", "1") as srv:
        stream = RawStream(srv.url, "/v1/chat/completions", LONG_STORY)  # 2000 tokens: far beyond 1 s
        first_tokens(stream)
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        events = list(stream.events())
        assert events[-1]["error"]["code"] == "shutting_down"
        assert events[-1]["error"]["type"] == "server_error"
        assert time.monotonic() - signalled < 10
        stream.close()
        assert srv.proc.wait(30) == 0


def test_a_busy_port_is_one_line_and_exit_2():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run_cli("serve", "--port", str(port), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"aipc: error: cannot listen on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize(
    ("model", "fragment"), [("./missing.gguf", "no such file"), ("llama:999b", "unknown model 'llama:999b'")]
)
def test_a_model_that_cannot_load_is_one_line_and_exit_2(model, fragment):
    result = run_cli("serve", model, "--port", "0", timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
