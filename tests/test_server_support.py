"""What the server tests share: a real server on a free loopback port, in this process (uvicorn in a thread,
serving an already opened model) or as `python -m aipc serve` in a subprocess, and an SSE reader.

No tests here; every wait has a timeout.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import PARIS_QUESTION

START_TIMEOUT_S = 120  # a subprocess imports OpenVINO and loads the model; slow on a busy 2-core machine


class LiveServer:
    """uvicorn in a thread, on 127.0.0.1 and a free port (or `port`), serving `model` with `settings`."""

    def __init__(self, settings: Any, model: Any = None, *, lifespan: str = "on", port: int = 0) -> None:
        import uvicorn

        from aipc.server.app import create_app
        from aipc.server.runner import bind, url_of

        self.app, self.state = create_app(settings, model=model)
        sock = bind("127.0.0.1", port)
        self.url = url_of(sock)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "the in-process server did not stop"

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServerProcess:
    """`python -m aipc serve ARGS --port 0` as a user runs it; `url` once it has printed its ready line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aipc", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = ""
        if wait:
            self.wait_ready()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"no ready line in {timeout} s; stderr: {self.proc.stderr.read()}") from None
        assert line.startswith("aipc: serving "), line
        self.url = line.split(" at ", 1)[1].split("/ ", 1)[0].rstrip("/")
        return line

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def chat_body(question: str = PARIS_QUESTION, **options: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}], "temperature": 0, **options}


LONG_STORY = {
    "messages": [{"role": "user", "content": "Write a very long story about a dragon and a knight."}],
    "temperature": 0,
    "max_tokens": 2000,
    "stream": True,
}


def sse_data(lines: Iterator[str]) -> Iterator[Any]:
    """The JSON of each `data:` event (and the string "[DONE]"), from the lines of an SSE body."""
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: ") :]
            yield data if data == "[DONE]" else json.loads(data)


class RawStream:
    """A streaming POST over a bare socket (http.client), so a test decides exactly when the connection closes."""

    def __init__(self, url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
        self._response: http.client.HTTPResponse | None = None

    @property
    def response(self) -> http.client.HTTPResponse:
        """The response (waits for its status line: a queued request gets it once it runs)."""
        if self._response is None:
            self._response = self.conn.getresponse()
        return self._response

    def events(self) -> Iterator[Any]:
        def lines() -> Iterator[str]:
            while line := self.response.readline():
                yield line.decode().rstrip("\r\n")

        return sse_data(lines())

    def close(self) -> None:
        """Drop the connection, as a client that goes away does."""
        if self.conn.sock is not None:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def first_tokens(stream: RawStream, n: int = 3) -> list[str]:
    """Read until `n` pieces of answer text have arrived: the generation is running."""
    texts = []
    for event in stream.events():
        content = event["choices"][0]["delta"].get("content") if event != "[DONE]" and event["choices"] else None
        if content:
            texts.append(content)
            if len(texts) == n:
                return texts
    raise AssertionError("the stream ended early")


def wait_for(predicate: Any, timeout: float, interval: float = 0.02) -> float:
    """Seconds until `predicate()` was true; raises AssertionError after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


def stored_copy(name: str, source: str = "smollm2:135m") -> str:
    """A second real model: the embedded model's file stored under another name (hard-linked, no space),
    as `POST /api/copy` makes it. Its first load converts it to OpenVINO IR once for the test store."""
    from aipc.server import library
    from aipc.store import store

    if not store.find(name):
        library.copy(source, name)
    return name


def broken_model(name: str = "broken-ir") -> str:
    """A stored OpenVINO IR variant whose files are not a model: its load fails inside OpenVINO."""
    from aipc.store import store
    from aipc.store.publish import staged

    if not store.find(name):
        with staged(store.variant_dir(name, "openvino-int4")) as tmp:
            if tmp is not None:
                (tmp / "openvino_model.xml").write_text("<net>this is not a model</net>\n")
                (tmp / "openvino_model.bin").write_bytes(b"\0" * 64)
                manifest = {"name": name, "variant": "openvino-int4", "format": "openvino-ir", "backend": "openvino"}
                store.write_manifest(tmp, manifest | {"precision": "int4", "device_target": "cpu"})
    return name


def metrics(url: str, **headers: str) -> dict[tuple[str, tuple], float]:
    """The server's /metrics samples by (name, labels)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", headers=headers, timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)
