"""The serving core every API dialect shares: the model pool, reading bodies, preparing prompts, slots,
metrics, and running a generation whose events the dialects shape into their own responses.

A dialect adapter (server/dialects/) parses its request body, then calls the core: `read_json` for the body,
`state.acquire(request, name)` for the model (loaded on demand, pool.py), `chat_prompt`/`text_prompt` (in a
worker thread) for the prompt's token ids and the engine's options, and `generate` for the running
`Generation`, whose first event is read before any answer is sent, so that failures before any output are
plain HTTP errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from aipc.engine.events import Done
from aipc.errors import AipcError, GenerationError, InvalidConfigError
from aipc.server.body import read_json_body
from aipc.server.errors import APIError, ClientGone, to_api_error, without_build_paths
from aipc.server.pool import _UNSET, Entry
from aipc.server.scheduler import EventPump, unless_disconnected, wait_disconnect
from aipc.server.settings import ServerSettings
from aipc.store.catalog import DEFAULT_MODEL

log = logging.getLogger("aipc.server")

# The most max_tokens may ask for when neither the model's files nor --context-length give its context length.
MAX_TOKENS_UNKNOWN_CONTEXT = 32768


class ServerState:
    """What every dialect shares: the model pool, the metrics, and whether the server is shutting down.

    The model named on the command line (or the default one) is preloaded when the server starts, and kept
    loaded until it must make room; /health is 503 "loading" until then. Any other model a request names is
    loaded on demand (see pool.py)."""

    def __init__(self, settings: ServerSettings, model: Any = None) -> None:
        from aipc.server.metrics import Metrics
        from aipc.server.pool import ModelPool

        self.settings = settings
        self.metrics = Metrics(lambda: self.pool.running())
        self.pool = ModelPool(settings, self.metrics.loaded, self.metrics.unloaded)
        self.draining = False
        self._abort: asyncio.TimerHandle | None = None
        self.pumps: set[EventPump] = set()
        self.on_ready: Callable[[ServerState, Entry], None] | None = None
        self.on_failed: Callable[[BaseException], None] | None = None
        self.load_error: BaseException | None = None
        self.preloaded = False
        if model is not None:
            self.pool.add_external(model, {settings.model} if settings.model else set())
            self.preloaded = True
        self.default_model = settings.model or (model.info.name if model is not None else DEFAULT_MODEL)

    # --- the preloaded model ------------------------------------------------------------------------------
    def start_loading(self) -> None:
        """Preload the default model (the event loop keeps answering: /health is 503 "loading" meanwhile)."""
        if not self.preloaded:
            self.pool._spawn(self._preload())

    async def _preload(self) -> None:
        try:
            entry = await self.pool.acquire(self.default_model, keep_alive=None)
        except BaseException as exc:
            self.load_error = exc
            if self.on_failed is not None:
                self.on_failed(exc)
            return
        self.pool.release(entry)
        self.preloaded = True
        if self.on_ready is not None:
            self.on_ready(self, entry)

    @property
    def model(self) -> Any:
        """The default model, when it is loaded."""
        entry = self.pool.find(self.default_model)
        return entry.model if entry is not None else None

    def health(self) -> tuple[int, dict[str, Any]]:
        if self.draining:
            return 503, {"status": "draining"}
        if self.load_error is not None:
            return 503, {"status": "error", "model": self.default_model, "error": str(self.load_error)}
        if not self.preloaded:
            return 503, {"status": "loading", "model": self.default_model}
        entries = self.pool.running()
        models = [
            {
                "name": e.name,
                "state": e.state,
                "running": e.slots.running if e.slots is not None else 0,
                "queued": e.waiting,
            }
            for e in entries
        ]
        body = {
            "status": "ok",
            "model": self.default_model,
            "running": sum(m["running"] for m in models),
            "queued": sum(m["queued"] for m in models),
            "models": models,
        }
        return 200, body

    # --- models for requests --------------------------------------------------------------------------------
    def check_serving(self) -> None:
        if self.draining:
            raise unavailable("the server is shutting down", "shutting_down")

    def check_count(self, count: int, noun: str, param: str) -> None:
        """At most --max-messages messages (or input items) in one request."""
        most = self.settings.max_messages
        if count > most:
            raise APIError(400, f"too many {noun}: {count}, this server takes at most {most}", param=param)

    def check_name(self, name: str | None) -> str:
        """A request's model name, validated (None: the default model)."""
        from aipc.server import library

        try:
            return library.check_name(
                self.default_model if name is None else name,
                allow_paths=self.settings.allow_paths,
                pinned=self.pool.pinned,
            )
        except AipcError as exc:
            raise to_api_error(exc, param="model") from None

    async def sources(self, name: str) -> list[Any]:
        """The local sources of a checked name (a 404 naming what this server can run otherwise)."""
        from aipc.server import library

        s = self.settings
        return await run_in_threadpool(library.local_sources, name, allow_paths=s.allow_paths, pinned=self.pool.pinned)

    async def acquire(self, request: Any, name: str | None, keep_alive: Any = _UNSET) -> Entry | None:
        """The model a request names, loaded (the request waits for a load), or None when the client left
        first. The caller releases it with `state.pool.release`, or hands it to `generate`, which does."""
        self.check_serving()
        name = self.check_name(name)
        if self.pool.find(name) is None:
            await self.sources(name)  # unknown names fail here, before the pool makes an entry for them
        started = time.perf_counter()
        args = () if keep_alive is _UNSET else (keep_alive,)
        entry = await or_gone(request, self.pool.acquire(name, *args), discard=self.pool.release)
        if entry is None:
            return None
        request.scope["aipc.model"] = entry.name
        request.scope.setdefault("aipc.stats", {})["load_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return entry

    # --- shutting down ----------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Refuse new requests (503); those in flight may finish until the drain timeout, then are aborted."""
        self.draining = True
        if self._abort is None:
            self._abort = asyncio.get_running_loop().call_later(self.settings.drain_timeout, self.abort_all)

    def abort_all(self) -> None:
        error = unavailable("the server is shutting down (drain timeout reached)", "shutting_down")
        self.pool.abort(error)
        for entry in self.pool.running():
            if entry.slots is not None:
                entry.slots.fail_waiting(error)
        for pump in list(self.pumps):
            pump.abort(error)

    async def close(self) -> None:
        for pump in list(self.pumps):
            pump.stop()
        if self.pumps:
            await asyncio.wait([asyncio.ensure_future(p.finished.wait()) for p in self.pumps], timeout=10)
        await self.pool.close()


def unavailable(message: str, code: str) -> APIError:
    return APIError(503, message, type="server_error", code=code, headers={"Retry-After": "1"})


# --- request bodies ----------------------------------------------------------------------------------------
async def read_json(request: Any) -> Any:
    """The request body as decoded JSON, or a 400 naming what is wrong; every dialect reads bodies here, so
    the checks of body.py (no nesting over 64 levels, no lone surrogates in any string) hold for all."""
    return await read_json_body(request)


# --- prompts -----------------------------------------------------------------------------------------------
class Prepared:
    """A request checked against the model: the prompt's token ids and the engine's options."""

    def __init__(self, prompt: list[int], options: dict[str, Any], echo: str = "", chat: Any = None) -> None:
        self.prompt = prompt
        self.prompt_tokens = len(prompt)
        self.options = options
        self.echo = echo
        self.ids = prompt
        self.prompt_logprobs: list[Any] | None = None  # the prompt's log-probs, when echo asks for them
        self.chat = chat  # the engine's ChatPrompt when the request has tools or tool turns


def _config(entry: Entry, options: dict[str, Any], param_of: Callable[[str], str]) -> Any:
    """`GenerationConfig` for `options`, or a 400 naming the request field (through `param_of`)."""
    try:
        config = entry.model.defaults.updated(**options)
    except InvalidConfigError as exc:
        name = str(exc).split(" ", 1)[0]
        raise to_api_error(exc, param=param_of(name)) from None
    if config.logit_bias:  # an id past the vocabulary would be ignored by one runtime and crash another
        try:
            entry.model.check_ids([token for token, _ in config.logit_bias])
        except AipcError as exc:
            raise APIError(400, f"logit_bias: {exc}", param=param_of("logit_bias"), code="invalid_value") from None
    return config


def chat_prompt(
    entry: Entry,
    messages: list[dict[str, str]],
    options: dict[str, Any],
    *,
    asked: int | None,
    param_of: Callable[[str], str] = lambda name: name,
    what: str = "messages",
    context_length: int | None = None,
    within_room: bool = False,
    tools: dict[str, Any] | None = None,
    continue_final: bool = False,
) -> Prepared:
    """The chat prompt's token ids (the model's template, content unable to forge control tokens) and options,
    with max_tokens fitted to the context; `tools` (tools, tool_choice, parallel_tool_calls) are checked and
    rendered into the prompt. Blocking: call in a worker thread."""
    config = _config(entry, options, param_of)
    model = entry.model
    try:
        chat = model.prepare(messages, **(tools or {}), continue_final=continue_final)
        if chat.plan is not None:
            from aipc.engine.tools import session

            session.check(chat.plan, config, can_constrain=model.structured_output, where=model.where)
    except AipcError as exc:
        raise prompt_error(exc, what) from None
    options = dict(options)
    options["max_tokens"] = fit(entry, len(chat.ids), asked, config.max_tokens, what, context_length, within_room)
    return Prepared(chat.ids, options, chat=chat if chat.plan is not None else None)


_TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")


def prompt_error(exc: AipcError, what: str) -> APIError:
    """An error preparing a chat prompt, naming the tool field it is about, else `what` (the messages)."""
    first = str(exc).split(" ", 1)[0].split("[", 1)[0].split(".", 1)[0]
    return to_api_error(exc, param=first if first in _TOOL_FIELDS else what)


def text_prompt(
    entry: Entry,
    text: str | list[int],
    options: dict[str, Any],
    *,
    asked: int | None,
    param_of: Callable[[str], str] = lambda name: name,
    what: str = "prompt",
    echo: bool = False,
    context_length: int | None = None,
    within_room: bool = False,
) -> Prepared:
    """A raw prompt (no template), as text or token ids, and options, max_tokens fitted to the context.
    Blocking."""
    config = _config(entry, options, param_of)
    if isinstance(text, str):
        prompt = entry.model.tokenize(text)
    else:
        try:
            prompt = entry.model.check_ids(text)
        except AipcError as exc:
            raise to_api_error(exc, param=what) from None
        text = entry.model.detokenize(prompt) if echo else ""
    options = dict(options)
    options["max_tokens"] = fit(entry, len(prompt), asked, config.max_tokens, what, context_length, within_room)
    return Prepared(prompt, options, echo=text if echo else "")


def fit(
    entry: Entry,
    n_prompt: int,
    asked: int | None,
    default: int,
    what: str,
    context_length: int | None = None,
    within_room: bool = False,
) -> int:
    """max_tokens checked against the context: over it is a 400 `context_length_exceeded`, as OpenAI answers;
    when not asked for, the model's default shortened to the room the prompt leaves. `within_room`: Ollama's
    num_predict, a limit rather than a request: not asked for (unlimited), all of the room; asked for, at most
    the room (only a prompt that fills the context is refused); a limit the model was made with (a Modelfile's
    num_predict) stands when the request sets none. `context_length` narrows the context for this request."""
    info = entry.model.info
    if within_room and asked is None:
        asked = entry.model.answer_limit
    if asked is not None and asked < 0:  # asked for no limit
        asked = None
    limit = info.max_prompt_tokens
    if limit is not None and n_prompt > limit:
        raise APIError(
            400,
            f"This model's maximum prompt length on {info.device} is {limit} tokens. However, your {what} "
            f"resulted in {n_prompt} tokens. Please reduce the length of the {what}.",
            param=what,
            code="context_length_exceeded",
        )
    context = entry.context_length
    if context_length is not None:
        context = min(context, context_length) if context else context_length
    if context is None:
        if asked is not None and asked > MAX_TOKENS_UNKNOWN_CONTEXT:
            raise APIError(
                400,
                f"max_tokens is {asked}, over {MAX_TOKENS_UNKNOWN_CONTEXT}: this model's files do not say its "
                f"context length (start the server with --context-length N to set it)",
                param="max_tokens",
                code="invalid_value",
            )
        return asked or default
    if within_room and asked is not None and n_prompt < context:
        asked = min(asked, context - n_prompt)
    wanted = asked or 1
    if n_prompt + wanted > context:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{n_prompt + wanted} tokens ({n_prompt} in the {what}, {wanted} in the completion). "
            f"Please reduce the length of the {what} or completion.",
            param=what,
            code="context_length_exceeded",
        )
    return asked or (context - n_prompt if within_room else min(default, context - n_prompt))


# --- generation --------------------------------------------------------------------------------------------
class Generation:
    """A running generation whose first event has been read; its events come in batches as they arrive."""

    def __init__(
        self, state: ServerState, pump: EventPump, first: Any, prepared: Prepared, entry: Entry, stats: dict
    ) -> None:
        self.state = state
        self.pump = pump
        self.first = first
        self.prepared = prepared
        self.entry = entry
        self.stats = stats
        self.done: Done | None = None

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Lists of events (every one that is waiting, to write several tokens at once), the last with `Done`;
        errors from the runtime are raised here."""
        pending = [self.first]
        while True:
            for event in pending:
                if isinstance(event, Done):
                    self._finished(event)
            yield pending
            if self.done is not None:
                return
            try:
                pending = [await self.pump.__anext__(), *self.pump.ready()]
            except StopAsyncIteration:
                return

    def _finished(self, done: Done) -> None:
        self.done = done
        queue_s = self.stats.get("queue_ms", 0.0) / 1000
        self.state.metrics.generated(self.entry.name, done, self.prepared.prompt_tokens, queue_s)
        t = done.timings
        self.stats |= {
            "prompt_tokens": self.prepared.prompt_tokens,
            "completion_tokens": done.usage.completion_tokens,
            "ttft_ms": round(t.ttft_s * 1000, 1),
            "tokens_per_s": round(t.tokens_per_s, 1),
            "finish_reason": done.finish_reason,
        }

    async def collect(self, request: Any) -> list[Any] | None:
        """Every event, or None when the client left first (the generation is then stopped)."""

        async def all_events() -> list[Any]:
            return [e async for batch in self.batches() for e in batch]

        return await or_gone(request, all_events(), on_gone=self.pump.stop, on_error=self.pump.stop)


async def generate(
    state: ServerState,
    request: Any,
    entry: Entry,
    prepare: Callable[[Entry], Prepared],
    *,
    schema_param: str,
) -> Generation | None:
    """Prepare the prompt (in a worker thread), wait for a slot, start the generation and read its first
    event. None when the client left first: nothing is left to answer (the slot is given back).

    `entry` (from `state.acquire`) is released here once the generation has let go of the runtime, or at once
    when it never starts."""
    stats = request.scope.setdefault("aipc.stats", {})
    try:
        prepared = await run_in_threadpool(prepare, entry)
    except BaseException:
        state.pool.release(entry)
        raise
    model = entry.model
    if prepared.chat is not None:
        pump = await _pumped(state, request, entry, lambda: model.stream_prepared(prepared.chat, **prepared.options))
    else:
        pump = await _pumped(state, request, entry, lambda: model.stream(prepared.prompt, raw=True, **prepared.options))
    if pump is None:
        return None
    try:
        first = await or_gone(request, pump.__anext__(), on_gone=pump.stop, on_error=pump.stop)
    except GenerationError as exc:
        if "json_schema" in prepared.options:  # what the runtime refuses before the first token: the grammar
            message = f"the JSON schema in {schema_param} could not be used: {without_build_paths(str(exc))}"
            raise APIError(400, message, param=schema_param, code="invalid_value") from None
        raise
    if first is None:
        return None
    return Generation(state, pump, first, prepared, entry, stats)


NOT_TOGETHER = object()  # generate_choices: the model cannot sample these choices in one generation


async def generate_choices(
    state: ServerState, request: Any, entry: Entry, prepare: Callable[[Entry], Prepared], n: int
) -> tuple[Prepared, list[list[Any]]] | object | None:
    """n choices of one prompt sampled in one generation (`Model.stream_choices`), holding one slot: the
    prepared prompt and each choice's events. NOT_TOGETHER where the model cannot (`entry` is then still the
    caller's, to run the choices one by one); None when the client left first (the runtime finishes the
    batch meanwhile: OpenVINO cannot stop a multi-sequence generation early). Otherwise `entry` is released
    here, as `generate` does."""
    model = entry.model
    if not model.samples_choices_together:
        return NOT_TOGETHER
    try:
        prepared = await run_in_threadpool(prepare, entry)
        events = None if prepared.chat is not None else model.stream_choices(prepared.prompt, n, **prepared.options)
    except BaseException:
        state.pool.release(entry)
        raise
    if events is None:
        return NOT_TOGETHER
    stats = request.scope.setdefault("aipc.stats", {})
    pump = await _pumped(state, request, entry, lambda: events)
    if pump is None:
        return None
    pairs = await or_gone(request, _all(pump), on_gone=pump.stop, on_error=pump.stop)
    if pairs is None:
        return None
    choices: list[list[Any]] = [[] for _ in range(n)]
    for index, event in pairs:
        choices[index].append(event)
        if isinstance(event, Done):
            prompt = prepared.prompt_tokens if index == 0 else 0  # prefilled once for all n
            state.metrics.generated(entry.name, event, prompt, stats["queue_ms"] / 1000)
    return prepared, choices


async def take_slot(state: ServerState, request: Any, entry: Entry) -> Any:
    """One of `entry`'s slots, once free; None (and `entry` released) when the client left while queued."""
    try:
        slot = await or_gone(request, entry.slots.acquire(), discard=lambda s: s.release())
    except BaseException:
        state.pool.release(entry)
        raise
    if slot is None:
        state.pool.release(entry)
    return slot


async def _pumped(state: ServerState, request: Any, entry: Entry, start: Callable[[], Any]) -> EventPump | None:
    """Wait for one of `entry`'s slots, then run `start()`'s events in a thread; the slot and `entry` are given
    back once that thread has let go of the runtime. None (and `entry` released) when the client left while
    queued: its request never runs."""
    stats = request.scope.setdefault("aipc.stats", {})
    waited = time.perf_counter()
    slot = await take_slot(state, request, entry)
    if slot is None:
        return None
    stats["queue_ms"] = round((time.perf_counter() - waited) * 1000, 1)
    pump: EventPump | None = None

    def finished() -> None:  # on the loop, once the generation's thread has let go of the runtime
        slot.release()
        state.pumps.discard(pump)
        state.pool.release(entry)

    pump = EventPump(start, on_exit=finished)
    state.pumps.add(pump)
    return pump


async def _all(pump: EventPump) -> list[Any]:
    return [item async for item in pump]


async def or_gone(
    request: Any,
    awaitable: Any,
    *,
    discard: Callable[[Any], None] | None = None,
    on_gone: Callable[[], None] | None = None,
    on_error: Callable[[], None] | None = None,
) -> Any:
    """`awaitable`'s result, or None when the client left first (then `on_gone` runs)."""
    try:
        return await unless_disconnected(request.receive, awaitable, discard)
    except ClientGone:
        if on_gone is not None:
            on_gone()
        return None
    except BaseException:
        if on_error is not None:
            on_error()
        raise


GONE = 499  # the status logged for a request whose client left before its answer


def gone() -> Response:
    return Response(status_code=GONE)


class StreamResponse(Response):
    """A streamed response (SSE or NDJSON) that stops its generation the moment the client leaves.

    Starlette's StreamingResponse notices a gone client only when a write fails (or not at all, with ASGI 2.3
    servers, where writes to a closed connection are dropped); this one listens for the disconnect itself.
    """

    def __init__(self, chunks: AsyncIterator[bytes], pump: EventPump, media_type: str) -> None:
        super().__init__(status_code=200, media_type=media_type)
        self.chunks = chunks
        self.pump = pump

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = [
            (b"content-type", f"{self.media_type}; charset=utf-8".encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        writer = asyncio.ensure_future(self._write(send))
        watch = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait({writer, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.pump.stop()
            for task in (writer, watch):
                task.cancel()
            await asyncio.gather(writer, watch, return_exceptions=True)
            await self.chunks.aclose()

    async def _write(self, send: Any) -> None:
        async for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
