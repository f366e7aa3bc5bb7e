"""OpenAI's dialect: /v1/chat/completions, /v1/completions and /v1/models, over the serving core.

This module only translates: a request body (openai_protocol.py) into core calls, and the core's events into
OpenAI's response objects, whole (JSON) or streamed (server-sent events).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from aipc import __version__
from aipc.engine.events import Done, TextDelta, ToolCall
from aipc.errors import AipcError
from aipc.server import core, embedding, errors
from aipc.server.dialects import openai_protocol as protocol
from aipc.server.dialects.openai_logprobs import CompletionLogprobs, TokenNames, chat_content, merge
from aipc.server.errors import json_bytes, sse_error

# Request fields that GenerationConfig's option names come from, to name them in errors.
_PARAM_OF_OPTION = {"json_schema": "response_format"}
_FINISH_REASONS = ("stop", "length", "tool_calls")


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
        from aipc.server import library

        if not model_id.strip("/"):
            return await list_models()  # /v1/models/ with its trailing slash
        name = state.check_name(model_id)
        if state.pool.find(name) is None:
            await state.sources(name)
        listed = {m.name: m for m in await run_in_threadpool(library.runnable)}.get(name)
        # the time /v1/models gives; a model opened from a path (not listed): its file's
        created = int(listed.modified) if listed is not None else _modified(name)
        return JSONResponse(protocol.model_card(name, created))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        state.check_serving()
        body = protocol.parse(protocol.EmbeddingRequest, await core.read_json(request))
        done = await embedding.embed(state, request, body.model, body.texts(), truncate=False)
        if done is None:
            return core.gone()
        result, served = done
        vectors = embedding.shortened(result.vectors, body.dimensions)
        data = [
            {"object": "embedding", "index": i, "embedding": _base64(v) if body.encoding_format == "base64" else v}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
        return JSONResponse({"object": "list", "data": data, "model": served, "usage": usage})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _complete(state, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(state, request, chat=False)


def _modified(path: str) -> int:
    """When the model at `path` was last changed; the server's start where that cannot be read."""
    try:
        return int(os.stat(path).st_mtime)
    except (OSError, ValueError):
        return _STARTED


_STARTED = protocol.now()


def _param(name: str) -> str:
    return _PARAM_OF_OPTION.get(name, name)


async def _complete(state: core.ServerState, request: Request, *, chat: bool) -> Response:
    state.check_serving()
    data = await core.read_json(request)
    body = protocol.parse(protocol.ChatRequest if chat else protocol.CompletionRequest, data)
    body.check_supported()
    jobs = _chat_jobs(state, body) if chat else _text_jobs(body)
    entry = await state.acquire(request, body.model)
    if entry is None:
        return core.gone()
    logprobs = bool(body.logprobs) if chat else body.logprobs is not None
    shape = _Shape(entry, chat=chat, include_usage=body.include_usage, logprobs=logprobs)
    # OpenAI answers a call it was made to make (tool_choice naming a function) with finish_reason "stop"
    shape.named_tool = chat and isinstance(body.tool_choice, dict)
    runs = _Runs(state, request, entry, jobs, body.n)
    if not body.stream and body.n > 1 and body.seed is None and len(jobs) == body.n:
        answered = await _together(request, shape, runs)
        if answered is not None:
            return answered
    if body.stream:
        first = await runs.start(0)
        if first is None:
            return core.gone()
        return core.StreamResponse(shape.stream(runs, first), runs, "text/event-stream")
    return await _whole(request, shape, runs, entry.slots.parallel if entry.slots is not None else 1)


async def _whole(request: Request, shape: _Shape, runs: _Runs, parallel: int) -> Response:
    """Every choice of a whole (not streamed) response. With `--parallel` above 1, up to that many choices
    generate at once (n > 1, or several prompts), batched by the runtime; otherwise one after the other."""
    gate = asyncio.Semaphore(max(1, min(parallel, len(runs))))

    async def one(i: int) -> tuple[dict[str, Any], int, int] | None:
        async with gate:
            run = await runs.start(i)  # None once the client has left: no more choices start
            if run is None:
                runs.stopped = True
                return None
            if isinstance(run, core.Prepared):  # scored, nothing generated (max_tokens 0)
                return shape.scored(i, run), runs.prompt_tokens(i, run), 0
            events = await run.collect(request)
        if events is None:
            runs.stopped = True
            return None
        choice, done = shape.choice(i, events, run.prepared)
        return choice, runs.prompt_tokens(i, run.prepared), done.usage.completion_tokens

    # Every choice runs to its end (an error in one does not abandon the others mid-generation), then the
    # first error, if any, is the answer.
    results = await asyncio.gather(*(one(i) for i in range(len(runs))), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    if any(result is None for result in results):
        return core.gone()
    choices = [r[0] for r in results]
    return JSONResponse(shape.whole(choices, sum(r[1] for r in results), sum(r[2] for r in results)))


async def _together(request: Request, shape: _Shape, runs: _Runs) -> Response | None:
    """The n choices of a whole response to one prompt, sampled in one generation where the runtime can
    (OpenVINO's num_return_sequences: one prefill, one batched decode); None where it cannot. Only without a
    seed: a seeded request's choice i is the answer to seed + i, the same streamed or whole."""
    prepare, score_only = runs.jobs[0]
    if score_only:
        return None
    got = await core.generate_choices(runs.state, request, runs.entry, prepare, len(runs))
    if got is core.NOT_TOGETHER:
        return None
    if got is None:
        return core.gone()
    prepared, events = got
    choices, completion = [], 0
    for i, choice_events in enumerate(events):
        choice, done = shape.choice(i, choice_events, prepared)
        choices.append(choice)
        completion += done.usage.completion_tokens
    return JSONResponse(shape.whole(choices, prepared.prompt_tokens, completion))


class _Runs:
    """The generations of one request (prompts x n) on the same model: streamed, one after the other (as the
    single pump `StreamResponse` stops, it stops the running one and starts no more); whole, see `_whole`."""

    def __init__(self, state: core.ServerState, request: Request, entry: core.Entry, jobs: list[Any], n: int) -> None:
        self.state = state
        self.request = request
        self.entry = entry
        self.jobs = jobs  # prompts x n, each prompt's n choices together
        self.n = n
        self.current: core.Generation | None = None
        self.stopped = False

    def __len__(self) -> int:
        return len(self.jobs)

    def prompt_tokens(self, i: int, prepared: core.Prepared) -> int:
        """Job `i`'s share of the usage's prompt tokens: as OpenAI counts them, each prompt once, not n times."""
        return prepared.prompt_tokens if i % self.n == 0 else 0

    async def start(self, i: int) -> core.Generation | core.Prepared | None:
        """Job `i` started (its first event read), or its `Prepared` when it only scores; None when the client
        left. The first job uses the entry the request acquired; each later one acquires it again."""
        if self.stopped:
            return None
        entry = self.entry if i == 0 else await self.state.pool.acquire(self.entry.name)
        prepare, score_only = self.jobs[i]
        if score_only:
            try:
                return await run_in_threadpool(prepare, entry)
            finally:
                self.state.pool.release(entry)
        self.current = await core.generate(self.state, self.request, entry, prepare, schema_param="response_format")
        return self.current

    def stop(self) -> None:
        self.stopped = True
        if self.current is not None:
            self.current.pump.stop()


def _base64(vector: list[float]) -> str:
    """An embedding as OpenAI's `encoding_format: base64` gives it: little-endian float32s, base64-encoded."""
    import base64
    import struct

    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _seeded(options: dict[str, Any], i: int) -> dict[str, Any]:
    """Choice `i`'s options: with a seed, each choice gets its own (seed + i), so n choices differ."""
    if i and options.get("seed") is not None:
        return options | {"seed": (options["seed"] + i) & (2**63 - 1)}  # past the largest seed: from 0 again
    return options


def _base_seed(options: dict[str, Any], n: int) -> dict[str, Any]:
    """n > 1 without a seed: a random one, so the choices differ even on runtimes whose unseeded sampling
    repeats itself (OpenVINO's default seed is fixed)."""
    if n > 1 and options.get("seed") is None:
        import random

        return options | {"seed": random.randrange(2**31 - 1024)}
    return options


def _chat_jobs(state: core.ServerState, body: protocol.ChatRequest) -> list[Any]:
    state.check_count(len(body.messages), "messages", "messages")
    messages = body.chat_messages()
    extra = {}
    if body.response_format is not None and (schema := body.response_format.schema_text()) is not None:
        extra["json_schema"] = schema
    asked = body.wanted_max_tokens()
    options = _base_seed(body.options(asked) | extra, body.n)
    tools = body.tool_options()

    def job(i: int) -> Any:
        def prepare(entry: core.Entry) -> core.Prepared:
            return core.chat_prompt(entry, messages, _seeded(options, i), asked=asked, param_of=_param, tools=tools)

        return prepare, False

    return [job(i) for i in range(body.n)]


def _text_jobs(body: protocol.CompletionRequest) -> list[Any]:
    options = _base_seed(body.options(body.max_tokens), body.n)
    score_only = body.max_tokens == 0
    top = body.logprobs

    def job(prompt: str | list[int], i: int) -> Any:
        def prepare(entry: core.Entry) -> core.Prepared:
            asked = body.max_tokens or None
            prepared = core.text_prompt(
                entry, prompt, _seeded(options, i), asked=asked, param_of=_param, echo=body.echo
            )
            if body.echo and top is not None:
                try:
                    prepared.prompt_logprobs = entry.model.prompt_logprobs(prepared.prompt, top)
                except AipcError as exc:
                    raise errors.to_api_error(exc, param="logprobs") from None
            return prepared

        return prepare, score_only

    return [job(p, i) for p in body.prompts() for i in range(body.n)]


class _Shape:
    """OpenAI's response objects for one request: whole (JSON) or streamed (SSE chunks)."""

    def __init__(self, entry: core.Entry, *, chat: bool, include_usage: bool, logprobs: bool) -> None:
        self.chat = chat
        self.include_usage = include_usage
        self.logprobs = logprobs
        self.named_tool = False
        self.names = TokenNames(entry.model)
        self.id = protocol.new_id("chatcmpl" if chat else "cmpl")
        self.head = {
            "id": self.id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": protocol.now(),
            "model": entry.name,
            "system_fingerprint": f"aipc_{__version__}",
        }
        self._usage = ',"usage":null' if include_usage else ""
        self._prefixes: dict[int, bytes] = {}

    def _event(self, body: dict[str, Any]) -> bytes:
        return b"data: " + json_bytes(self.head | body) + b"\n\n"

    def _text(self, index: int, text: str) -> bytes:
        """A text chunk without log-probs: a prefix, the JSON-encoded text, a suffix (no dict per token)."""
        prefix = self._prefixes.get(index)
        if prefix is None:
            if self.chat:
                choice = f'"choices":[{{"index":{index},"delta":{{"content":'
            else:
                choice = f'"choices":[{{"index":{index},"text":'
            prefix = self._prefixes[index] = b"data: " + json_bytes(self.head)[:-1] + b"," + choice.encode()
        tail = '},"logprobs":null,"finish_reason":null}]' if self.chat else ',"logprobs":null,"finish_reason":null}]'
        return prefix + json.dumps(text, ensure_ascii=False).encode() + (tail + self._usage + "}\n\n").encode()

    def _delta(self, index: int, text: str, logprobs: Any) -> bytes:
        if self.chat:
            choice = {"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": None}
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": None}
        return self._event({"choices": [choice]} | ({"usage": None} if self.include_usage else {}))

    # --- whole responses ---------------------------------------------------------------------------------
    def choice(self, index: int, events: list[Any], prepared: core.Prepared) -> tuple[dict[str, Any], Done]:
        deltas = [e for e in events if isinstance(e, TextDelta)]
        done = next(e for e in events if isinstance(e, Done))
        reason = _finish_reason(done, self.named_tool)
        text = prepared.echo + "".join(d.text for d in deltas)
        logprobs = None
        if self.chat:
            if self.logprobs:
                tokens = [t for d in deltas for t in d.tokens]
                logprobs = {"content": chat_content(tokens, self.names), "refusal": None}
            calls = [_call(e) for e in events if isinstance(e, ToolCall)]
            message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None}
            if calls:
                message["tool_calls"] = calls
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": reason}, done
        if self.logprobs:
            lp = CompletionLogprobs(self.names)
            parts = []
            if prepared.echo and prepared.prompt_logprobs is not None:
                parts.append(lp.prompt(prepared.prompt_logprobs, prepared.ids))
                lp.offset = len(prepared.echo)
            parts += [lp.generated(d.tokens, d.text) for d in deltas]
            if done.end_logprob is not None:  # as vLLM: the end token that stopped it, with no text of its own
                parts.append(lp.generated((done.end_logprob,), ""))
            logprobs = merge(parts)
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}, done

    def scored(self, index: int, prepared: core.Prepared) -> dict[str, Any]:
        """A text completion that generated nothing (max_tokens 0 with echo): the prompt and its log-probs."""
        logprobs = None
        if self.logprobs and prepared.prompt_logprobs is not None:
            logprobs = CompletionLogprobs(self.names).prompt(prepared.prompt_logprobs, prepared.ids)
        return {"index": index, "text": prepared.echo, "logprobs": logprobs, "finish_reason": "length"}

    def whole(self, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        head = self.head | {"object": "chat.completion" if self.chat else "text_completion"}
        return head | {"choices": choices, "usage": protocol.usage(prompt_tokens, completion_tokens)}

    # --- streamed responses ------------------------------------------------------------------------------
    async def stream(self, runs: _Runs, first: Any) -> AsyncIterator[bytes]:
        prompt_tokens = completion_tokens = 0
        usage = {"usage": None} if self.include_usage else {}
        run = first
        for index in range(len(runs)):
            if index:
                try:
                    run = await runs.start(index)
                except Exception as exc:  # after the 200: the error travels as an event, as OpenAI sends it
                    yield sse_error(exc)
                    return
                if run is None:
                    return
            if isinstance(run, core.Prepared):
                choice = self.scored(index, run)
                yield self._event({"choices": [choice]} | usage)
                prompt_tokens += runs.prompt_tokens(index, run)
                continue
            prepared = run.prepared
            if self.chat:
                # with tools, null, as OpenAI opens a reply that may be calls alone (clients then keep content None)
                role = {"role": "assistant", "content": None if prepared.chat is not None else ""}
                yield self._event(
                    {"choices": [{"index": index, "delta": role, "logprobs": None, "finish_reason": None}]} | usage
                )
            lp = CompletionLogprobs(self.names) if self.logprobs and not self.chat else None
            if prepared.echo:
                echo_lp = None
                if lp is not None and prepared.prompt_logprobs is not None:
                    echo_lp = lp.prompt(prepared.prompt_logprobs, prepared.ids)
                    lp.offset = len(prepared.echo)
                yield self._delta(index, prepared.echo, echo_lp) if echo_lp else self._text(index, prepared.echo)
            try:
                async for batch in run.batches():
                    out = []
                    for event in batch:
                        if isinstance(event, TextDelta):
                            out.append(self._chunk(index, event, lp))
                        elif isinstance(event, ToolCall):
                            out.append(self._call(index, event))
                        elif isinstance(event, Done):
                            out.append(self._end(index, event, lp))
                            completion_tokens += event.usage.completion_tokens
                    if out:
                        yield b"".join(out)
            except Exception as exc:  # after the 200: the error travels as an event, as OpenAI sends it
                yield sse_error(exc)
                return
            if run.done is None:
                return
            prompt_tokens += runs.prompt_tokens(index, prepared)
        if self.include_usage:
            yield self._event({"choices": [], "usage": protocol.usage(prompt_tokens, completion_tokens)})
        yield b"data: [DONE]\n\n"

    def _chunk(self, index: int, event: TextDelta, lp: CompletionLogprobs | None) -> bytes:
        if not self.logprobs:
            return self._text(index, event.text)
        if lp is not None:
            return self._delta(index, event.text, lp.generated(event.tokens, event.text))
        content = {"content": chat_content(event.tokens, self.names), "refusal": None}
        return self._delta(index, event.text, content)

    def _call(self, index: int, call: ToolCall) -> bytes:
        """A call as OpenAI streams one: a delta with its index, id, type and name, then its arguments."""
        usage = {"usage": None} if self.include_usage else {}
        head = {
            "index": call.index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        body = {"index": call.index, "function": {"arguments": call.arguments}}
        return b"".join(
            self._event(
                {
                    "choices": [
                        {"index": index, "delta": {"tool_calls": [part]}, "logprobs": None, "finish_reason": None}
                    ]
                }
                | usage
            )
            for part in (head, body)
        )

    def _end(self, index: int, done: Done, lp: CompletionLogprobs | None = None) -> bytes:
        reason = _finish_reason(done, self.named_tool)
        if self.chat:
            choice = {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
        else:
            end = lp.generated((done.end_logprob,), "") if lp is not None and done.end_logprob is not None else None
            choice = {"index": index, "text": "", "logprobs": end, "finish_reason": reason}
        return self._event({"choices": [choice]} | ({"usage": None} if self.include_usage else {}))


def _call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _finish_reason(done: Done, named_tool: bool = False) -> str:
    """OpenAI's: "tool_calls" for calls the model chose to make (tool_choice auto or required), "stop" for the call
    a named tool_choice made it make, as OpenAI (and vLLM) answer them."""
    if done.finish_reason == "tool_calls" and named_tool:
        return "stop"
    return done.finish_reason if done.finish_reason in _FINISH_REASONS else "stop"
