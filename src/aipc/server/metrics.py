"""What the server measures: Prometheus metrics at /metrics, and one log line per request with -v.

Counters and histograms are updated as requests end and generations finish (from the engine's `Done` event:
TTFT and next-token latency are the engine's own timings); gauges of the pool (running and queued requests
per model, loaded models and their memory) are read when /metrics is scraped. Each server has its own
registry. The `model` label only ever holds names of models that loaded (or ""), so clients cannot grow the
label set with made-up names.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("aipc.server")

# Seconds: from a few milliseconds (a warm small model's first token) to minutes (a long answer on the NPU).
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The server's Prometheus registry; `pool_view` lists the pool's entries when scraped."""

    def __init__(self, pool_view: Callable[[], list[Any]]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created series only double what scrapers record themselves
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "aipc_requests",
            "HTTP requests answered, by route, model and status",
            ["route", "model", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter("aipc_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generation_tokens = Counter("aipc_generation_tokens", "Tokens generated", ["model"], registry=r)
        self.ttft = Histogram(
            "aipc_time_to_first_token_seconds",
            "Time from a generation's start to its first token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.next_token = Histogram(
            "aipc_time_per_output_token_seconds",
            "Mean time between generated tokens, per request",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "aipc_queue_wait_seconds",
            "Time a request waited for a generation slot",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.drafted = Counter(
            "aipc_speculative_drafted_tokens",
            "Draft tokens the model checked (speculative decoding)",
            ["model"],
            registry=r,
        )
        self.accepted = Counter(
            "aipc_speculative_accepted_tokens",
            "Draft tokens the model accepted (speculative decoding)",
            ["model"],
            registry=r,
        )
        self.loads = Counter(
            "aipc_model_loads", "Model loads, by outcome (loaded, failed)", ["model", "outcome"], registry=r
        )
        self.load_seconds = Histogram(
            "aipc_model_load_seconds", "Time to load a model", ["model"], buckets=_LOAD_BUCKETS, registry=r
        )
        self.unloads = Counter(
            "aipc_model_unloads",
            "Model unloads, by reason (expired, keep_alive, evicted, stopped)",
            ["model", "reason"],
            registry=r,
        )
        self.unload_seconds = Histogram(
            "aipc_model_unload_seconds", "Time to unload a model", ["model"], buckets=_LOAD_BUCKETS, registry=r
        )
        r.register(_PoolCollector(pool_view))

    # --- events -------------------------------------------------------------------------------------------
    def loaded(self, entry: Any, outcome: str, seconds: float) -> None:
        self.loads.labels(entry.name, outcome).inc()
        if outcome == "loaded":
            self.load_seconds.labels(entry.name).observe(seconds)

    def unloaded(self, entry: Any, reason: str, seconds: float) -> None:
        self.unloads.labels(entry.name, reason).inc()
        self.unload_seconds.labels(entry.name).observe(seconds)

    def generated(self, model: str, done: Any, prompt_tokens: int, queue_s: float) -> None:
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generation_tokens.labels(model).inc(done.usage.completion_tokens)
        self.ttft.labels(model).observe(done.timings.ttft_s)
        if done.usage.completion_tokens > 1:
            self.next_token.labels(model).observe(done.timings.next_token_s)
        self.queue_wait.labels(model).observe(queue_s)
        self.drafted.labels(model).inc(getattr(done, "drafted", 0))
        self.accepted.labels(model).inc(getattr(done, "accepted", 0))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _PoolCollector:
    """Gauges read from the pool at scrape time."""

    def __init__(self, pool_view: Callable[[], list[Any]]) -> None:
        self.pool_view = pool_view

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        running = GaugeMetricFamily("aipc_requests_running", "Requests generating now", labels=["model"])
        queued = GaugeMetricFamily(
            "aipc_requests_queued", "Requests waiting for a slot or for their model to load", labels=["model"]
        )
        memory = GaugeMetricFamily(
            "aipc_model_memory_bytes", "Memory a loaded model takes (measured RSS growth at load)", labels=["model"]
        )
        entries = self.pool_view()
        loaded = GaugeMetricFamily("aipc_models_loaded", "Models loaded or loading", value=len(entries))
        for e in entries:
            running.add_metric([e.name], e.slots.running if e.slots is not None else 0)
            queued.add_metric([e.name], e.waiting)
            memory.add_metric([e.name], e.size_bytes)
        yield from (running, queued, loaded, memory)


# --- the request log -------------------------------------------------------------------------------------------
class RequestLog:
    """ASGI middleware: counts every request (route, model, status) and, with -v, logs one line for it.

    Routes record what they learn in the scope: `aipc.model` (a model that exists) and `aipc.stats` (tokens,
    TTFT, tokens/s, queue and load waits of a generation)."""

    def __init__(self, app: Any, metrics: Metrics, routes: frozenset[str], verbose: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.verbose = verbose

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        request_id = _request_id(scope)

        async def watched(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id)]}
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or (scope["path"] if scope["path"] in self.routes else "other")
            model = scope.get("aipc.model", "")
            self.metrics.requests.labels(path, model, str(status)).inc()
            if self.verbose:
                fields = {"method": scope["method"], "route": path, "status": status, "model": model}
                fields["request_id"] = request_id.decode()
                fields |= scope.get("aipc.stats", {})
                fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
                log.info("request", extra={"fields": fields})


def _request_id(scope: dict) -> bytes:
    """The client's X-Request-Id when it sent a short printable one (as vLLM keeps it), else a new one; every
    response carries it (the `openai` client reads it as `_request_id`) and the request's log line names it."""
    import secrets

    for name, value in scope.get("headers", []):
        if name.lower() == b"x-request-id" and 0 < len(value) <= 128 and all(33 <= c < 127 for c in value):
            return value
    return b"req_" + secrets.token_hex(12).encode()


class LogFormatter(logging.Formatter):
    """`aipc: request route=/api/chat status=200 ...` (text) or one JSON object per line (json)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if self.kind == "json":
            body = {"time": round(record.created, 3), "level": record.levelname.lower(), "message": record.getMessage()}
            if fields:
                body |= fields
            if record.exc_info:
                body["exception"] = self.formatException(record.exc_info)
            return json.dumps(body, ensure_ascii=False)
        text = "aipc: " + record.getMessage()
        if fields:
            text += " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=')) else text
