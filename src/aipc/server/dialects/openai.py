"""OpenAI's dialect: /v1/chat/completions, /v1/completions and /v1/models, over the serving core.

This module only translates: a request body (openai_protocol.py) into core calls, and the core's events into
OpenAI's response objects, whole (JSON) or streamed (server-sent events).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from aipc import __version__
from aipc.engine.events import Done, TextDelta
from aipc.server import core, errors
from aipc.server.dialects import openai_protocol as protocol
from aipc.server.errors import APIError, json_bytes, sse_error

# Request fields that GenerationConfig's option names come from, to name them in errors.
_PARAM_OF_OPTION = {"json_schema": "response_format"}
_FINISH_REASONS = ("stop", "length")


def register(app: FastAPI, state: core.ServerState) -> None:
    """Add OpenAI's routes to `app`; their errors take OpenAI's shape."""
    errors.register(errors.OPENAI)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        from aipc.server import library

        models = await run_in_threadpool(library.runnable)
        cards = [protocol.model_card(m.name, int(m.modified)) for m in models]
        return JSONResponse({"object": "list", "data": cards})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> JSONResponse:
        name = state.check_name(model_id)
        if state.pool.find(name) is None:
            await state.sources(name)
        return JSONResponse(protocol.model_card(name, protocol.now()))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _complete(state, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(state, request, chat=False)


def _param(name: str) -> str:
    return _PARAM_OF_OPTION.get(name, name)


async def _complete(state: core.ServerState, request: Request, *, chat: bool) -> Response:
    state.check_serving()
    data = await core.read_json(request)
    body = protocol.parse(protocol.ChatRequest if chat else protocol.CompletionRequest, data)
    body.check_supported()
    prepare = _chat_prepare(state, body) if chat else _text_prepare(body)
    entry = await state.acquire(request, body.model)
    if entry is None:
        return core.gone()
    generation = await core.generate(state, request, entry, prepare, schema_param="response_format")
    if generation is None:
        return core.gone()
    shape = _Shape(entry.name, chat=chat, include_usage=body.include_usage)
    if body.stream:
        return core.StreamResponse(shape.stream(generation), generation.pump, "text/event-stream")
    events = await generation.collect(request)
    if events is None:
        return core.gone()
    return JSONResponse(shape.whole(events, generation.prepared))


def _chat_prepare(state: core.ServerState, body: protocol.ChatRequest) -> Any:
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
    options = body.options(asked) | extra

    def prepare(entry: core.Entry) -> core.Prepared:
        return core.chat_prompt(entry, messages, options, asked=asked, param_of=_param)

    return prepare


def _text_prepare(body: protocol.CompletionRequest) -> Any:
    text = body.prompt_text()
    options = body.options(body.max_tokens)

    def prepare(entry: core.Entry) -> core.Prepared:
        return core.text_prompt(entry, text, options, asked=body.max_tokens, param_of=_param, echo=body.echo)

    return prepare


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

    def whole(self, events: list[Any], prepared: core.Prepared) -> dict[str, Any]:
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

    async def stream(self, generation: core.Generation) -> AsyncIterator[bytes]:
        prepared = generation.prepared
        usage = {"usage": None} if self.include_usage else {}
        if self.chat:
            role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            yield self._event({"choices": [role]} | usage)
        if prepared.echo:
            yield self._text(prepared.echo)
        try:
            async for batch in generation.batches():
                out = []
                for event in batch:
                    if isinstance(event, TextDelta):
                        out.append(self._text(event.text))
                    elif isinstance(event, Done):
                        out.append(self._end(event, prepared))
                if out:
                    yield b"".join(out)
        except Exception as exc:  # after the 200: the error travels as an event, as OpenAI sends it
            yield sse_error(exc)
            return
        if generation.done is not None:
            yield b"data: [DONE]\n\n"

    def _end(self, done: Done, prepared: core.Prepared) -> bytes:
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
