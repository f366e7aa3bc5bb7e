"""Ollama's native API (/api/...), on the same server and port as OpenAI's, over the same core.

Generation: /api/chat and /api/generate stream NDJSON by default (`"stream": false` for one object); the last
object carries Ollama's counters in nanoseconds, taken from the engine's `Done` timings (prompt evaluation is
the time to the first token; evaluation the rest). A request without messages or prompt loads the model, or
with `keep_alive: 0` unloads it, as Ollama does (`ollama stop` sends that). The model routes (/api/tags,
/api/show, /api/ps, /api/pull, ...) are in ollama_models.py. Errors are `{"error": "..."}`, so the `ollama`
client raises `ResponseError` with the status code.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from aipc.engine.events import Done, TextDelta, ToolCall
from aipc.errors import AipcError, InvalidConfigError
from aipc.server import core, embedding, errors
from aipc.server.dialects import ollama_protocol as protocol
from aipc.server.dialects.openai_logprobs import TokenNames, chat_content
from aipc.server.errors import APIError, json_bytes, to_api_error
from aipc.server.pool import _UNSET
from aipc.server.settings import parse_keep_alive

log = logging.getLogger("aipc.server")

# The Ollama API level these routes follow (clients that check /api/version compare against Ollama's).
API_VERSION = "0.12.0"
NDJSON = "application/x-ndjson"
# GenerationConfig's names -> the request field they come from, to name it in errors.
_PARAM = {
    "max_tokens": "options.num_predict",
    "temperature": "options.temperature",
    "top_p": "options.top_p",
    "top_k": "options.top_k",
    "min_p": "options.min_p",
    "seed": "options.seed",
    "stop": "options.stop",
    "repetition_penalty": "options.repeat_penalty",
    "presence_penalty": "options.presence_penalty",
    "frequency_penalty": "options.frequency_penalty",
    "json_schema": "format",
}


def _error_body(error: APIError) -> dict[str, Any]:
    return {"error": error.message}


def _stream_error(error: APIError) -> bytes:
    return json_bytes(_error_body(error)) + b"\n"


DIALECT = errors.Dialect("ollama", ("/api/",), _error_body, _stream_error)


def register(app: FastAPI, state: core.ServerState) -> None:
    """Add Ollama's routes to `app`; their errors take Ollama's shape."""
    errors.register(DIALECT)

    @app.post("/api/chat")
    async def chat(request: Request) -> Response:
        return await _generate(state, request, chat=True)

    @app.post("/api/generate")
    async def generate(request: Request) -> Response:
        return await _generate(state, request, chat=False)

    @app.post("/api/embed")
    async def embed(request: Request) -> Response:
        return await _embed(state, request, legacy=False)

    @app.post("/api/embeddings")
    async def embeddings(request: Request) -> Response:
        return await _embed(state, request, legacy=True)

    @app.api_route("/api/version", methods=["GET", "HEAD"])
    async def version() -> JSONResponse:
        from aipc import __version__

        return JSONResponse({"version": API_VERSION, "aipc_version": __version__})


# --- chat and generate ---------------------------------------------------------------------------------------
async def _generate(state: core.ServerState, request: Request, *, chat: bool) -> Response:
    started = time.perf_counter()
    state.check_serving()
    body = protocol.parse(protocol.ChatRequest if chat else protocol.GenerateRequest, await core.read_json(request))
    if not body.model:
        raise APIError(400, "model is required", param="model")
    keep = _UNSET if body.keep_alive is None else _keep_alive(body.keep_alive)
    _refuse_unsupported(body, chat=chat)
    if (chat and not body.messages) or (not chat and not body.prompt):
        return await _load_only(state, request, body.model, keep, started, chat=chat)
    options, asked, num_ctx = _options(body)
    prepare = (
        _chat_prepare(state, body, options, asked, num_ctx) if chat else _text_prepare(body, options, asked, num_ctx)
    )
    entry = await state.acquire(request, body.model, keep)
    if entry is None:
        return core.gone()
    load_s = time.perf_counter() - started
    generation = await core.generate(state, request, entry, prepare, schema_param="format")
    if generation is None:
        return core.gone()
    names = TokenNames(entry.model) if body.logprobs else None
    # as Ollama: responses name the model as the request did (`smollm2`, not the catalog's smollm2:135m)
    shape = _Shape(body.model, chat=chat, started=started, load_s=load_s, names=names, context=not (chat or body.raw))
    if body.stream:
        return core.StreamResponse(shape.stream(generation), generation.pump, NDJSON)
    events = await generation.collect(request)
    if events is None:
        return core.gone()
    return JSONResponse(shape.whole(events, generation.prepared))


async def _embed(state: core.ServerState, request: Request, *, legacy: bool) -> Response:
    """/api/embed (`input`: a string or a list; unit vectors as `embeddings`) and the older /api/embeddings
    (`prompt`; one `embedding`). No input loads the model, as a chat without messages does."""
    started = time.perf_counter()
    state.check_serving()
    kind = protocol.EmbeddingsRequest if legacy else protocol.EmbedRequest
    body = protocol.parse(kind, await core.read_json(request))
    if not body.model:
        raise APIError(400, "model is required", param="model")
    keep = _UNSET if body.keep_alive is None else _keep_alive(body.keep_alive)
    given = body.prompt if legacy else body.input
    texts = [given] if isinstance(given, str) else list(given or [])
    if not any(texts):  # as Ollama: nothing to embed loads the model and answers an empty list
        texts = []
    if not texts:
        entry = await state.acquire(request, body.model, keep)
        if entry is None:
            return core.gone()
        state.pool.release(entry)
        return JSONResponse({"embedding": []} if legacy else {"model": body.model, "embeddings": []})
    done = await embedding.embed(state, request, body.model, texts, keep_alive=keep, truncate=legacy or body.truncate)
    if done is None:
        return core.gone()
    result, _ = done
    if legacy:
        return JSONResponse({"embedding": result.vectors[0]})
    return JSONResponse(
        {
            "model": body.model,
            "embeddings": embedding.shortened(result.vectors, body.dimensions),
            "total_duration": _ns(time.perf_counter() - started),
            "load_duration": _ns(request.scope.get("aipc.stats", {}).get("load_ms", 0) / 1000),
            "prompt_eval_count": result.prompt_tokens,
        }
    )


def _keep_alive(value: Any) -> float | None:
    try:
        return parse_keep_alive(value)
    except InvalidConfigError as exc:
        raise APIError(400, str(exc), param="keep_alive", code="invalid_value") from None


def _refuse_unsupported(body: Any, *, chat: bool) -> None:
    """What aipc cannot honour yet is refused by name (tools and tool turns go to the engine)."""
    if body.think:
        raise APIError(400, "thinking is not supported by this model", param="think")
    if body.top_logprobs is not None and not 0 <= body.top_logprobs <= 20:
        raise APIError(400, f"top_logprobs must be from 0 to 20, got {body.top_logprobs}", param="top_logprobs")
    if chat:
        for i, m in enumerate(body.messages or []):
            if m.images:
                raise _no_images(f"messages[{i}].images")
            if m.role not in ("system", "developer", "user", "assistant", "tool"):
                message = f"messages[{i}].role must be system, developer, user, assistant or tool, got {m.role!r}"
                raise APIError(400, message, param=f"messages[{i}].role")
        return
    if body.images:
        raise _no_images("images")
    if body.suffix:
        raise APIError(400, "suffix (fill-in-the-middle) is not supported by this server", param="suffix")
    if body.template and not body.raw:
        raise APIError(
            400,
            "template is not supported: aipc formats prompts with the model's own chat template; "
            "send a formatted prompt with raw: true instead",
            param="template",
        )
    if body.context and body.raw:
        raise APIError(
            400,
            "context is not used with raw: a raw prompt is sent as it is, so put the earlier text in it",
            param="context",
        )


def _no_images(param: str) -> APIError:
    return APIError(400, "images are not supported: no vision model is available yet (text only)", param=param)


def _options(body: Any) -> tuple[dict[str, Any], int | None, int | None]:
    """GenerationConfig options, the num_predict asked for (None: the model's own limit, else until the context
    is full; -1: no limit), and num_ctx."""
    o = body.options or protocol.Options()
    for name, off in protocol.NEUTRAL.items():
        value = getattr(o, name)
        if value is not None and value != off:
            raise APIError(400, f"option {name} is not supported by this server", param=f"options.{name}")
    unknown = sorted(set(o.model_extra or {}) - protocol.RUNNER_OPTIONS)
    if unknown:
        log.warning("ignoring unknown option(s): %s", ", ".join(unknown))
    if o.num_predict == 0:
        raise APIError(400, "options.num_predict must be >= 1, or -1 for no limit", param="options.num_predict")
    stop = [o.stop] if isinstance(o.stop, str) else o.stop
    options = {
        "temperature": o.temperature,
        "top_p": o.top_p,
        "top_k": o.top_k,
        "min_p": o.min_p,
        "seed": o.seed if o.seed is not None and o.seed >= 0 else None,  # negative: random, as Ollama
        "repetition_penalty": o.repeat_penalty,
        "presence_penalty": o.presence_penalty or None,
        "frequency_penalty": o.frequency_penalty or None,
        "stop": tuple(stop) if stop else None,
    }
    if body.logprobs:  # as Ollama: top_logprobs counts only with logprobs
        options["logprobs"] = body.top_logprobs or 0
    if isinstance(body.format, dict):
        options["json_schema"] = json.dumps(body.format)
    elif body.format == "json":
        options["json_schema"] = '{"type": "object"}'
    asked = None if o.num_predict is None else max(o.num_predict, -1)  # -1: no limit, even a model's own
    return {k: v for k, v in options.items() if v is not None}, asked, o.num_ctx


def _param(name: str) -> str:
    return _PARAM.get(name, name)


def _chat_prepare(state: core.ServerState, body: Any, options: dict, asked: int | None, ctx: int | None) -> Callable:
    state.check_count(len(body.messages), "messages", "messages")
    messages = _chat_messages(body.messages)
    tools = {"tools": body.tools} if body.tools else None

    def prepare(entry: core.Entry) -> core.Prepared:
        return core.chat_prompt(
            entry,
            messages,
            options,
            asked=asked,
            param_of=_param,
            context_length=ctx,
            within_room=True,
            tools=tools,
            continue_final=True,  # as Ollama: a last assistant message is continued, not answered
        )

    return prepare


def _chat_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Ollama's messages in OpenAI's shape for the engine. Ollama's calls carry no ids and its tool messages
    name only the function (`tool_name`): each call gets an id here, and each result answers the first call
    of the assistant message before it that has that name (else the next unanswered one); a result left
    answering no call is passed on without one, as Ollama passes every message to the template."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, name) of the last assistant message's unanswered calls
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role  # OpenAI's newer name, which clients reuse here
        message: dict[str, Any] = {"role": role, "content": m.content or ""}
        if m.role == "assistant" and m.tool_calls:
            calls = []
            for j, call in enumerate(m.tool_calls):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise APIError(400, "each tool call must have a function", param=f"messages[{i}].tool_calls[{j}]")
                calls.append({"id": f"call_{i}_{j}", "type": "function", "function": function})
            message["tool_calls"] = calls
            pending = [(c["id"], str(c["function"].get("name"))) for c in calls]
        elif m.role == "tool":
            match = next((p for p in pending if m.tool_name in (None, p[1])), pending[0] if pending else None)
            if match is not None:
                pending.remove(match)
                message["tool_call_id"] = match[0]
            elif m.tool_name:  # a result that answers no open call: passed on as it is, as Ollama does
                message["name"] = m.tool_name
        elif m.role != "assistant":
            pending = []
        out.append(message)
    return out


def _text_prepare(body: Any, options: dict, asked: int | None, ctx: int | None) -> Callable:
    if body.raw:

        def prepare(entry: core.Entry) -> core.Prepared:
            return core.text_prompt(
                entry, body.prompt, options, asked=asked, param_of=_param, context_length=ctx, within_room=True
            )

        return prepare
    messages = ([{"role": "system", "content": body.system}] if body.system else []) + [
        {"role": "user", "content": body.prompt}
    ]
    if body.context:
        return _continued(body.context, messages, options, asked, ctx)

    def prepare_chat(entry: core.Entry) -> core.Prepared:
        return core.chat_prompt(
            entry,
            messages,
            options,
            asked=asked,
            param_of=_param,
            what="prompt",
            context_length=ctx,
            within_room=True,
        )

    return prepare_chat


def _continued(context: list[int], messages: list, options: dict, asked: int | None, ctx: int | None) -> Callable:
    """/api/generate with the `context` an earlier answer returned (deprecated in Ollama, still sent by older
    clients): those tokens, then this prompt in the chat template (its text never read as control tokens, and
    no second beginning-of-sequence token), as Ollama joins them."""

    def prepare(entry: core.Entry) -> core.Prepared:
        model = entry.model
        try:
            earlier = model.check_ids(context)
        except AipcError as exc:
            raise to_api_error(exc, param="context") from None
        turn = model.encode(messages)
        bos = model.tokenize(model.info.bos_token) if model.info.bos_token else []
        # A beginning-of-sequence token starts the turn once (Phi-3's <s>), unlike a ChatML model's <|im_start|>,
        # which marks every turn
        if len(bos) == 1 and turn[:1] == bos and turn.count(bos[0]) == 1:
            turn = turn[1:]
        ids = earlier + turn
        return core.text_prompt(entry, ids, options, asked=asked, param_of=_param, context_length=ctx, within_room=True)

    return prepare


async def _load_only(
    state: core.ServerState, request: Request, name: str, keep: Any, started: float, *, chat: bool
) -> Response:
    """No messages or prompt: load the model (or, with keep_alive 0, unload it), as Ollama does."""
    body: dict[str, Any] = {"model": name, "created_at": protocol.timestamp()}
    if keep == 0:
        checked = state.check_name(name)
        if await state.pool.stop(checked) is None:
            await state.sources(checked)  # nothing loaded by that name: a model this server does not have is a 404
        reason = "unload"
    else:
        entry = await state.acquire(request, name, keep)
        if entry is None:
            return core.gone()
        state.pool.release(entry)
        reason = "load"
    body |= {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
    body |= {"done": True, "done_reason": reason}
    if reason == "load":
        body["total_duration"] = body["load_duration"] = _ns(time.perf_counter() - started)
    return JSONResponse(body)


def _ns(seconds: float) -> int:
    return max(int(seconds * 1e9), 0)


class _Shape:
    """Ollama's response objects for one request: NDJSON lines as tokens come, or one object."""

    def __init__(
        self, model: str, *, chat: bool, started: float, load_s: float, names: TokenNames | None, context: bool
    ) -> None:
        self.model = model
        self.chat = chat
        self.context = context  # /api/generate's final object carries the conversation's tokens (not raw)
        self.started = started
        self.load_s = load_s
        self.names = names  # with `logprobs`: token ids -> text and bytes
        self._model_json = json.dumps(model, ensure_ascii=False)

    def _chunk(self, text: str, created: str, tokens: tuple = ()) -> bytes:
        if self.names is not None:  # Ollama's `logprobs` list: one entry per token, the shape OpenAI's chat uses
            body: dict[str, Any] = {"model": self.model, "created_at": created}
            body |= {"message": {"role": "assistant", "content": text}} if self.chat else {"response": text}
            return json_bytes(body | {"done": False, "logprobs": chat_content(tokens, self.names)}) + b"\n"
        content = json.dumps(text, ensure_ascii=False)
        body = f'"message":{{"role":"assistant","content":{content}}}' if self.chat else f'"response":{content}'
        return f'{{"model":{self._model_json},"created_at":"{created}",{body},"done":false}}\n'.encode()

    def _calls(self, calls: list[ToolCall], created: str) -> bytes:
        message = {"role": "assistant", "content": "", "tool_calls": [_call(c) for c in calls]}
        return json_bytes({"model": self.model, "created_at": created, "message": message, "done": False}) + b"\n"

    def _final(
        self,
        done: Done,
        prepared: core.Prepared,
        text: str = "",
        calls: list[ToolCall] | None = None,
        tokens: list | None = None,
    ) -> dict[str, Any]:
        t = done.timings
        body: dict[str, Any] = {"model": self.model, "created_at": protocol.timestamp()}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = [_call(c) for c in calls]
            body["message"] = message
        else:
            body["response"] = text
        if self.names is not None and tokens is not None:
            body["logprobs"] = chat_content(tokens, self.names)
        if self.context:  # what a client sends back as `context` to go on: the prompt's tokens and the answer's
            body["context"] = [*prepared.prompt, *done.token_ids]
        return body | {
            "done": True,
            "done_reason": done.finish_reason if done.finish_reason in ("stop", "length") else "stop",
            "total_duration": _ns(time.perf_counter() - self.started),
            "load_duration": _ns(self.load_s),
            "prompt_eval_count": prepared.prompt_tokens,
            "prompt_eval_duration": _ns(t.ttft_s),
            "eval_count": done.usage.completion_tokens,
            "eval_duration": _ns(t.total_s - t.ttft_s),
        }

    def whole(self, events: list[Any], prepared: core.Prepared) -> dict[str, Any]:
        deltas = [e for e in events if isinstance(e, TextDelta)]
        done = next(e for e in events if isinstance(e, Done))
        calls = [e for e in events if isinstance(e, ToolCall)]
        tokens = [t for d in deltas for t in d.tokens]
        return self._final(done, prepared, "".join(d.text for d in deltas), calls, tokens)

    async def stream(self, generation: core.Generation) -> AsyncIterator[bytes]:
        try:
            async for batch in generation.batches():
                created = protocol.timestamp()
                out = []
                for event in batch:
                    if isinstance(event, TextDelta):
                        out.append(self._chunk(event.text, created, event.tokens))
                    elif isinstance(event, ToolCall):
                        out.append(self._calls([event], created))
                    elif isinstance(event, Done):
                        out.append(json_bytes(self._final(event, generation.prepared)) + b"\n")
                if out:
                    yield b"".join(out)
        except Exception as exc:  # after the 200: the error travels as a line, as Ollama sends it
            yield _stream_error(to_api_error(exc))


def _call(call: ToolCall) -> dict[str, Any]:
    """A call in Ollama's shape: arguments as an object, not a JSON string."""
    return {"function": {"index": call.index, "name": call.name, "arguments": json.loads(call.arguments)}}
