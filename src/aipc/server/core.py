"""The serving core every API dialect shares: the served model, reading bodies, preparing prompts, slots,
and running a generation whose events the dialects shape into their own responses.

A dialect adapter (server/dialects/) parses its request body, then calls the core: `read_json` for the body,
`state.lease(name)` for the model, `chat_prompt`/`text_prompt` (in a worker thread) for the prompt's token ids
and the engine's options, and `generate` for the running `Generation`, whose first event is read before any
answer is sent, so that failures before any output are plain HTTP errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from aipc.engine.events import Done
from aipc.errors import AipcError, GenerationError, InvalidConfigError
from aipc.server.errors import APIError, ClientGone, to_api_error
from aipc.server.scheduler import EventPump, Slots, unless_disconnected, wait_disconnect
from aipc.server.settings import ServerSettings

log = logging.getLogger("aipc.server")

# The most max_tokens may ask for when neither the model's files nor --context-length give its context length.
MAX_TOKENS_UNKNOWN_CONTEXT = 32768


class Lease:
    """A served model as a request uses it: the opened model, its slots, its context length and name."""

    def __init__(self, model: Any, slots: Slots, context_length: int | None) -> None:
        self.model = model
        self.slots = slots
        self.context_length = context_length
        self.name = model.info.name


class ServerState:
    """The model (once loaded), the slots, and whether the server is shutting down."""

    def __init__(self, settings: ServerSettings, model: Any = None) -> None:
        self.settings = settings
        self.model = model
        self.owns_model = model is None
        self.load_error: BaseException | None = None
        self.slots: Slots | None = None
        self.context_length: int | None = None
        self.draining = False
        self._abort: asyncio.TimerHandle | None = None
        self.pumps: set[EventPump] = set()
        self.on_ready: Callable[[ServerState], None] | None = None
        self.on_failed: Callable[[BaseException], None] | None = None
        self._lease: Lease | None = None
        if model is not None:
            self._ready(model)

    # --- the model's lifetime -----------------------------------------------------------------------------
    def start_loading(self) -> None:
        """Load the model in a thread; the event loop keeps answering (/health: 503 "loading") meanwhile."""
        loop = asyncio.get_running_loop()

        def load() -> None:
            import aipc

            s = self.settings
            try:
                model = aipc.load(s.model, backend=s.backend, device=s.device, parallel=s.parallel)
            except BaseException as exc:
                outcome: tuple[Callable[[Any], None], Any] = (self._failed, exc)
            else:
                outcome = (self._ready, model)
            try:
                loop.call_soon_threadsafe(*outcome)
            except RuntimeError:  # the server stopped while the model loaded
                if outcome[0] == self._ready:
                    outcome[1].close()

        threading.Thread(target=load, name="aipc-load", daemon=True).start()

    def _ready(self, model: Any) -> None:
        self.model = model
        info = model.info
        self.slots = Slots(max(1, min(self.settings.parallel, info.parallel)), self.settings.max_queue)
        self.context_length = self.settings.context_length or info.context_length
        self._lease = Lease(model, self.slots, self.context_length)
        if self.on_ready is not None:
            self.on_ready(self)

    def _failed(self, exc: BaseException) -> None:
        self.load_error = exc
        if self.on_failed is not None:
            self.on_failed(exc)

    @property
    def name(self) -> str:
        return self.model.info.name

    def names(self) -> set[str]:
        """What a request's `model` may say: the served model's name, or what `aipc serve` was given."""
        return {self.name} | ({self.settings.model} if self.settings.model else set())

    def check_ready(self) -> Any:
        if self.draining:
            raise unavailable("the server is shutting down", "shutting_down")
        if self.load_error is not None:
            raise unavailable(f"the model failed to load: {self.load_error}", "model_load_failed")
        if self.model is None:
            raise unavailable("the model is still loading", "model_loading")
        return self.model

    def lease(self, name: str | None) -> Lease:
        """The model a request names (None: the served one); 404 for any other name."""
        self.check_ready()
        if name is not None and name not in self.names():
            raise model_not_found(name, self.name)
        assert self._lease is not None
        return self._lease

    def health(self) -> tuple[int, dict[str, Any]]:
        if self.draining:
            return 503, {"status": "draining"}
        if self.load_error is not None:
            return 503, {"status": "error", "error": str(self.load_error)}
        if self.model is None:
            return 503, {"status": "loading"}
        slots = self.slots
        return 200, {"status": "ok", "model": self.name, "running": slots.running, "queued": slots.queued}

    # --- shutting down ----------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Refuse new requests (503); those in flight may finish until the drain timeout, then are aborted."""
        self.draining = True
        if self._abort is None:
            self._abort = asyncio.get_running_loop().call_later(self.settings.drain_timeout, self.abort_all)

    def abort_all(self) -> None:
        error = unavailable("the server is shutting down (drain timeout reached)", "shutting_down")
        if self.slots is not None:
            self.slots.fail_waiting(error)
        for pump in list(self.pumps):
            pump.abort(error)

    async def close(self) -> None:
        for pump in list(self.pumps):
            pump.stop()
        if self.pumps:
            await asyncio.wait([asyncio.ensure_future(p.finished.wait()) for p in self.pumps], timeout=10)
        if self.owns_model and self.model is not None:
            await run_in_threadpool(self.model.close)


def unavailable(message: str, code: str) -> APIError:
    return APIError(503, message, type="server_error", code=code, headers={"Retry-After": "1"})


def model_not_found(asked: str, served: str) -> APIError:
    return APIError(
        404,
        f"The model '{asked}' does not exist on this server; it serves '{served}'",
        param="model",
        code="model_not_found",
    )


# --- request bodies ----------------------------------------------------------------------------------------
async def read_json(request: Any) -> Any:
    """The request body as decoded JSON, or a 400 naming what is wrong; every dialect reads bodies here."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        where = f": {exc}" if raw.strip() else ": the body is empty"
        raise APIError(400, f"the request body is not valid JSON{where}", code="invalid_json") from None


# --- prompts -----------------------------------------------------------------------------------------------
class Prepared:
    """A request checked against the model: the prompt's token ids and the engine's options."""

    def __init__(self, prompt: list[int], options: dict[str, Any], echo: str = "") -> None:
        self.prompt = prompt
        self.prompt_tokens = len(prompt)
        self.options = options
        self.echo = echo


def _config(lease: Lease, options: dict[str, Any], param_of: Callable[[str], str]) -> Any:
    """`GenerationConfig` for `options`, or a 400 naming the request field (through `param_of`)."""
    try:
        return lease.model.defaults.updated(**options)
    except InvalidConfigError as exc:
        name = str(exc).split(" ", 1)[0]
        raise to_api_error(exc, param=param_of(name)) from None


def chat_prompt(
    lease: Lease,
    messages: list[dict[str, str]],
    options: dict[str, Any],
    *,
    asked: int | None,
    param_of: Callable[[str], str] = lambda name: name,
    what: str = "messages",
    context_length: int | None = None,
) -> Prepared:
    """The chat prompt's token ids (the model's template, content unable to forge control tokens) and options,
    with max_tokens fitted to the context. Blocking: call in a worker thread."""
    config = _config(lease, options, param_of)
    try:
        prompt = lease.model.encode(messages)
    except AipcError as exc:
        raise to_api_error(exc, param=what) from None
    options = dict(options)
    options["max_tokens"] = fit(lease, len(prompt), asked, config.max_tokens, what, context_length)
    return Prepared(prompt, options)


def text_prompt(
    lease: Lease,
    text: str,
    options: dict[str, Any],
    *,
    asked: int | None,
    param_of: Callable[[str], str] = lambda name: name,
    what: str = "prompt",
    echo: bool = False,
    context_length: int | None = None,
) -> Prepared:
    """A raw prompt (no template) and options, max_tokens fitted to the context. Blocking."""
    config = _config(lease, options, param_of)
    prompt = lease.model.tokenize(text)
    options = dict(options)
    options["max_tokens"] = fit(lease, len(prompt), asked, config.max_tokens, what, context_length)
    return Prepared(prompt, options, echo=text if echo else "")


def fit(
    lease: Lease, n_prompt: int, asked: int | None, default: int, what: str, context_length: int | None = None
) -> int:
    """max_tokens checked against the context: over it is a 400 `context_length_exceeded`, as OpenAI answers;
    when not asked for, the model's default, shortened to the room the prompt leaves."""
    info = lease.model.info
    limit = info.max_prompt_tokens
    if limit is not None and n_prompt > limit:
        raise APIError(
            400,
            f"This model's maximum prompt length on {info.device} is {limit} tokens. However, your {what} "
            f"resulted in {n_prompt} tokens. Please reduce the length of the {what}.",
            param=what,
            code="context_length_exceeded",
        )
    context = context_length or lease.context_length
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
    return asked or min(default, context - n_prompt)


# --- generation --------------------------------------------------------------------------------------------
class Generation:
    """A running generation whose first event has been read; its events come in batches as they arrive."""

    def __init__(self, pump: EventPump, first: Any, prepared: Prepared, lease: Lease) -> None:
        self.pump = pump
        self.first = first
        self.prepared = prepared
        self.lease = lease
        self.done: Done | None = None

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Lists of events (every one that is waiting, to write several tokens at once), the last with `Done`;
        errors from the runtime are raised here."""
        pending = [self.first]
        while True:
            for event in pending:
                if isinstance(event, Done):
                    self.done = event
            yield pending
            if self.done is not None:
                return
            try:
                pending = [await self.pump.__anext__(), *self.pump.ready()]
            except StopAsyncIteration:
                return

    async def collect(self, request: Any) -> list[Any] | None:
        """Every event, or None when the client left first (the generation is then stopped)."""

        async def all_events() -> list[Any]:
            return [e async for batch in self.batches() for e in batch]

        return await or_gone(request, all_events(), on_gone=self.pump.stop, on_error=self.pump.stop)


async def generate(
    state: ServerState,
    request: Any,
    lease: Lease,
    prepare: Callable[[Lease], Prepared],
    *,
    schema_param: str,
) -> Generation | None:
    """Prepare the prompt (in a worker thread), wait for a slot, start the generation and read its first
    event. None when the client left first: nothing is left to answer (the slot is given back)."""
    prepared = await run_in_threadpool(prepare, lease)
    slots = lease.slots
    slot = await or_gone(request, slots.acquire(), discard=lambda s: s.release())
    if slot is None:
        return None  # the client left while queued: its request never runs
    pump: EventPump

    def finished() -> None:  # on the loop, once the generation's thread has let go of the runtime
        slot.release()
        state.pumps.discard(pump)

    model = lease.model
    pump = EventPump(lambda: model.stream(prepared.prompt, raw=True, **prepared.options), on_exit=finished)
    state.pumps.add(pump)
    try:
        first = await or_gone(request, pump.__anext__(), on_gone=pump.stop, on_error=pump.stop)
    except GenerationError as exc:
        if "json_schema" in prepared.options:  # what the runtime refuses before the first token: the grammar
            message = f"the JSON schema in {schema_param} could not be used: {exc}"
            raise APIError(400, message, param=schema_param, code="invalid_value") from None
        raise
    if first is None:
        return None
    return Generation(pump, first, prepared, lease)


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
