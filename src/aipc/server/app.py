"""The HTTP application: OpenAI's chat and text completions, the model list, a health check, the chat page.

A request goes: Guard (security.py) -> parse and check the body (protocol.py) -> format and count the prompt
in a worker thread -> wait for a generation slot (scheduler.py) while watching for the client to leave ->
generate in the request's own thread (EventPump) -> JSON, or server-sent events as the tokens come.

The HTTP server starts before the model is loaded: /health says 503 "loading" until it is, so a supervisor
sees the process alive at once and ready later.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from aipc import __version__
from aipc.engine.events import Done, TextDelta
from aipc.errors import AipcError, GenerationError, InvalidConfigError
from aipc.server import errors, protocol
from aipc.server.errors import APIError, ClientGone, json_bytes, sse_error, to_api_error
from aipc.server.scheduler import EventPump, Slots, unless_disconnected, wait_disconnect
from aipc.server.security import Guard, allowed_host_names
from aipc.server.settings import ServerSettings

log = logging.getLogger("aipc.server")

# Request fields that GenerationConfig's option names come from, to name them in errors.
_PARAM_OF_OPTION = {"json_schema": "response_format"}
_FINISH_REASONS = ("stop", "length")
# The most max_tokens may ask for when neither the model's files nor --context-length give its context length.
MAX_TOKENS_UNKNOWN_CONTEXT = 32768


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
        self.created = protocol.now()
        self.on_ready: Callable[[ServerState], None] | None = None
        self.on_failed: Callable[[BaseException], None] | None = None
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
                model = aipc.load(
                    s.model,
                    backend=s.backend,
                    device=s.device,
                    parallel=s.parallel,
                    context_length=s.context_length,
                    kv_cache=s.kv_cache,
                    sampling={"repetition_penalty": s.repetition_penalty},
                )
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
            raise _unavailable("the server is shutting down", "shutting_down")
        if self.load_error is not None:
            raise _unavailable(f"the model failed to load: {self.load_error}", "model_load_failed")
        if self.model is None:
            raise _unavailable("the model is still loading", "model_loading")
        return self.model

    # --- shutting down ----------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Refuse new requests (503); those in flight may finish until the drain timeout, then are aborted."""
        self.draining = True
        if self._abort is None:
            self._abort = asyncio.get_running_loop().call_later(self.settings.drain_timeout, self.abort_all)

    def abort_all(self) -> None:
        error = _unavailable("the server is shutting down (drain timeout reached)", "shutting_down")
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


def _unavailable(message: str, code: str) -> APIError:
    return APIError(503, message, type="server_error", code=code, headers={"Retry-After": "1"})


# --- the application ---------------------------------------------------------------------------------------
def create_app(settings: ServerSettings, *, model: Any = None) -> tuple[Any, ServerState]:
    """The ASGI app and its state. With `model`, serve that already opened model (the caller closes it);
    otherwise load `settings.model` in the background once the server has started."""
    state = ServerState(settings, model)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if state.model is None:
            state.start_loading()
        yield
        await state.close()

    app = FastAPI(title="aipc", version=__version__, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    errors.install(app)
    page, page_csp = _chat_page()

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if state.load_error is not None:
            return JSONResponse({"status": "error", "error": str(state.load_error)}, status_code=503)
        if state.model is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        slots = state.slots
        body = {"status": "ok", "model": state.name, "running": slots.running, "queued": slots.queued}
        return JSONResponse(body)

    @app.get("/")
    async def chat_page() -> HTMLResponse:
        if page is None:
            raise APIError(404, "the chat page is missing from this installation (aipc/server/static/index.html)")
        headers = {"Content-Security-Policy": page_csp, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
        return HTMLResponse(page, headers=headers)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        state.check_ready()
        return JSONResponse({"object": "list", "data": [protocol.model_card(state.name, state.created)]})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> JSONResponse:
        state.check_ready()
        if model_id not in state.names():
            raise _model_not_found(model_id, state.name)
        return JSONResponse(protocol.model_card(state.name, state.created))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _complete(state, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(state, request, chat=False)

    hosts = allowed_host_names(settings.host, settings.allowed_hosts)
    guarded = Guard(
        app,
        hosts=hosts,
        origins=settings.allowed_origins,
        api_key=settings.api_key,
        max_body_bytes=settings.max_body_bytes,
    )
    return guarded, state


def _chat_page() -> tuple[str | None, str]:
    """The page, and a Content-Security-Policy that admits exactly its own inline script and style."""
    try:
        page = resources.files("aipc.server").joinpath("static/index.html").read_text(encoding="utf-8")
    except OSError:  # an install without the package data: the API still works
        log.warning("the chat page (aipc/server/static/index.html) is not installed; / answers 404")
        return None, ""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    csp = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return page, csp


def _model_not_found(asked: str, served: str) -> APIError:
    return APIError(
        404,
        f"The model '{asked}' does not exist on this server; it serves '{served}'",
        param="model",
        code="model_not_found",
    )


# --- completions -------------------------------------------------------------------------------------------
class _Prepared:
    """A request checked against the model: the prompt text, its token count, and the engine's options."""

    def __init__(self, prompt: list[int], options: dict[str, Any], echo: str = "") -> None:
        self.prompt = prompt
        self.prompt_tokens = len(prompt)
        self.options = options
        self.echo = echo


async def _complete(state: ServerState, request: Request, *, chat: bool) -> Response:
    model = state.check_ready()
    data = await _read_json(request)
    body = protocol.parse(protocol.ChatRequest if chat else protocol.CompletionRequest, data)
    body.check_supported()
    if body.model is not None and body.model not in state.names():
        raise _model_not_found(body.model, state.name)
    prepared = await run_in_threadpool(_prepare_chat if chat else _prepare_text, state, model, body)

    slots = state.slots
    slot = await _or_gone(request, slots.acquire(), discard=lambda s: s.release())
    if slot is None:
        return Response(status_code=499)  # the client left while queued: its request never runs
    pump: EventPump

    def finished() -> None:  # on the loop, once the generation's thread has let go of the runtime
        slot.release()
        state.pumps.discard(pump)

    pump = EventPump(lambda: model.stream(prepared.prompt, raw=True, **prepared.options), on_exit=finished)
    state.pumps.add(pump)
    shape = _Shape(state.name, chat=chat, include_usage=body.include_usage)
    # The first event comes before any answer is sent, so errors before any output are plain HTTP errors.
    try:
        first = await _or_gone(request, pump.__anext__(), on_gone=pump.stop, on_error=pump.stop)
    except GenerationError as exc:
        if "json_schema" in prepared.options:  # what the runtime refuses before the first token: the grammar
            message = f"the JSON schema in response_format could not be used: {exc}"
            raise APIError(400, message, param="response_format", code="invalid_value") from None
        raise
    if first is None:
        return Response(status_code=499)
    if body.stream:
        return EventStream(shape.stream(first, pump, prepared), pump)
    rest = await _or_gone(request, _collect(pump), on_gone=pump.stop, on_error=pump.stop)
    if rest is None:
        return Response(status_code=499)
    return JSONResponse(shape.whole([first, *rest], prepared))


async def _or_gone(
    request: Request,
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


async def _read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        where = f": {exc}" if raw.strip() else ": the body is empty"
        raise APIError(400, f"the request body is not valid JSON{where}", code="invalid_json") from None


def _options(model: Any, body: Any, max_tokens: int | None, extra: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The engine options for `body`, validated by `GenerationConfig` (a 400 naming the field otherwise)."""
    options = body.options(max_tokens) | extra
    try:
        config = model.defaults.updated(**options)
    except InvalidConfigError as exc:
        name = str(exc).split(" ", 1)[0]
        raise to_api_error(exc, param=_PARAM_OF_OPTION.get(name, name)) from None
    return options, config


def _prepare_chat(state: ServerState, model: Any, body: protocol.ChatRequest) -> _Prepared:
    if len(body.messages) > state.settings.max_messages:
        raise APIError(
            400,
            f"too many messages: {len(body.messages)}, this server takes at most {state.settings.max_messages}",
            param="messages",
        )
    messages = body.chat_messages()
    extra = {}
    if body.response_format is not None and (schema := body.response_format.schema_text()) is not None:
        extra["json_schema"] = schema
    asked = body.wanted_max_tokens()
    options, config = _options(model, body, asked, extra)
    try:
        prompt = model.encode(messages)
    except AipcError as exc:
        raise to_api_error(exc, param="messages") from None
    options["max_tokens"] = _fit(state, model, len(prompt), asked, config.max_tokens, "messages")
    return _Prepared(prompt, options)


def _prepare_text(state: ServerState, model: Any, body: protocol.CompletionRequest) -> _Prepared:
    text = body.prompt_text()
    options, config = _options(model, body, body.max_tokens, {})
    prompt = model.tokenize(text)
    options["max_tokens"] = _fit(state, model, len(prompt), body.max_tokens, config.max_tokens, "prompt")
    return _Prepared(prompt, options, echo=text if body.echo else "")


def _fit(state: ServerState, model: Any, n_prompt: int, asked: int | None, default: int, what: str) -> int:
    """max_tokens checked against the context: over it is a 400 `context_length_exceeded`, as OpenAI answers;
    when not asked for, the model's default, shortened to the room the prompt leaves."""
    limit = model.info.max_prompt_tokens
    if limit is not None and n_prompt > limit:
        raise APIError(
            400,
            f"This model's maximum prompt length on {model.info.device} is {limit} tokens. However, your {what} "
            f"resulted in {n_prompt} tokens. Please reduce the length of the {what}.",
            param=what,
            code="context_length_exceeded",
        )
    context = state.context_length
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


async def _collect(pump: EventPump) -> list[Any]:
    return [event async for event in pump]


class _Shape:
    """OpenAI's response objects for one request: whole (JSON) or streamed (SSE chunks)."""

    def __init__(self, model: str, *, chat: bool, include_usage: bool) -> None:
        self.chat = chat
        self.include_usage = include_usage
        self.id = protocol.new_id("chatcmpl" if chat else "cmpl")
        self.head = {
            "id": self.id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": protocol.now(),
            "model": model,
            "system_fingerprint": f"aipc_{__version__}",
        }
        # Each token's chunk is this prefix, the JSON-encoded text, this suffix: no dict per token.
        usage = ',"usage":null' if include_usage else ""
        if chat:
            choice = '"choices":[{"index":0,"delta":{"content":'
            tail = '},"logprobs":null,"finish_reason":null}]'
        else:
            choice = '"choices":[{"index":0,"text":'
            tail = ',"logprobs":null,"finish_reason":null}]'
        self._prefix = b"data: " + json_bytes(self.head)[:-1] + b"," + choice.encode()
        self._suffix = (tail + usage + "}\n\n").encode()

    def _event(self, body: dict[str, Any]) -> bytes:
        return b"data: " + json_bytes(self.head | body) + b"\n\n"

    def _text(self, text: str) -> bytes:
        return self._prefix + json.dumps(text, ensure_ascii=False).encode() + self._suffix

    def whole(self, events: list[Any], prepared: _Prepared) -> dict[str, Any]:
        text = prepared.echo + "".join(e.text for e in events if isinstance(e, TextDelta))
        done = next(e for e in events if isinstance(e, Done))
        reason = _finish_reason(done)
        head = self.head | {"object": "chat.completion" if self.chat else "text_completion"}
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return head | {
            "choices": [choice],
            "usage": protocol.usage(prepared.prompt_tokens, done.usage.completion_tokens),
        }

    async def stream(self, first: Any, pump: EventPump, prepared: _Prepared) -> AsyncIterator[bytes]:
        usage = {"usage": None} if self.include_usage else {}
        if self.chat:
            role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            yield self._event({"choices": [role]} | usage)
        if prepared.echo:
            yield self._text(prepared.echo)
        pending = [first]
        try:
            while True:
                out = []
                for event in pending:
                    if isinstance(event, TextDelta):
                        out.append(self._text(event.text))
                    elif isinstance(event, Done):
                        out.append(self._end(event, prepared))
                if out:
                    yield b"".join(out)
                if any(isinstance(e, Done) for e in pending):
                    break
                pending = [await pump.__anext__(), *pump.ready()]
        except StopAsyncIteration:
            return
        except Exception as exc:  # after the 200: the error travels as an event, as OpenAI sends it
            yield sse_error(exc)
            return
        yield b"data: [DONE]\n\n"

    def _end(self, done: Done, prepared: _Prepared) -> bytes:
        reason = _finish_reason(done)
        if self.chat:
            choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": reason}
        out = self._event({"choices": [choice]} | ({"usage": None} if self.include_usage else {}))
        if self.include_usage:
            out += self._event(
                {"choices": [], "usage": protocol.usage(prepared.prompt_tokens, done.usage.completion_tokens)}
            )
        return out


def _finish_reason(done: Done) -> str:
    return done.finish_reason if done.finish_reason in _FINISH_REASONS else "stop"


class EventStream(Response):
    """A server-sent-events response that stops its generation the moment the client leaves.

    Starlette's StreamingResponse notices a gone client only when a write fails (or not at all, with ASGI 2.3
    servers, where writes to a closed connection are dropped); this one listens for the disconnect itself.
    """

    def __init__(self, chunks: AsyncIterator[bytes], pump: EventPump) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self.chunks = chunks
        self.pump = pump

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
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
