"""OpenAI's Responses API: POST /v1/responses, stateless, over the serving core.

The request's instructions and input items become a chat (responses_protocol.py); the core runs it as it runs
/v1/chat/completions, tools and JSON schemas included, and this module shapes the events into a `response`
object: output items (an assistant message with `output_text`, a `function_call` per call), whole or streamed
as Responses' typed server-sent events (`response.created`, `response.output_text.delta`, ...,
`response.completed`, or `response.incomplete` when `max_output_tokens` cut the answer). Errors name the
Responses request's own fields (`input[3].call_id`, `tools[0].name`), not the chat they became. `truncation:
"auto"` drops the oldest whole turns that do not fit; POST /v1/responses/input_tokens counts a request's input.
Responses are stored unless `store` is false (responses_store.py): `previous_response_id` continues one, and
GET /v1/responses/{id}, its /input_items and DELETE read and drop them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from aipc.engine.events import Done, TextDelta, ToolCall
from aipc.errors import AipcError
from aipc.server import core
from aipc.server.dialects import openai_protocol, responses_store
from aipc.server.dialects import responses_protocol as protocol
from aipc.server.dialects.openai_logprobs import TokenNames, chat_content
from aipc.server.errors import APIError, json_bytes, openai_body, to_api_error

# GenerationConfig's names -> the request field they come from, to name it in errors.
_PARAM = {"max_tokens": "max_output_tokens", "json_schema": "text.format", "logprobs": "top_logprobs"}


def register(app: FastAPI, state: core.ServerState) -> None:
    """Add /v1/responses; its errors take OpenAI's shape (the /v1/ prefix)."""
    store = responses_store.ResponseStore()

    @app.post("/v1/responses")
    async def create(request: Request) -> Response:
        return await _respond(state, store, request)

    @app.post("/v1/responses/input_tokens")
    async def input_tokens(request: Request) -> Response:
        """How many tokens a request's input comes to on the model, without generating (the SDK's
        `responses.input_tokens.count`)."""
        state.check_serving()
        body, messages, origin, _ = _checked(state, store, await core.read_json(request))
        tools = body.tool_options()

        def count(entry: core.Entry) -> int:  # the whole input, whatever the context holds
            try:
                return len(entry.model.prepare(messages, **tools).ids)
            except AipcError as exc:
                raise _renamed(core.prompt_error(exc, "input"), origin) from None

        entry = await state.acquire(request, body.model)
        if entry is None:
            return core.gone()
        try:
            tokens = await run_in_threadpool(count, entry)
        finally:
            state.pool.release(entry)
        return JSONResponse({"object": "response.input_tokens", "input_tokens": tokens})

    @app.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str) -> Response:
        return JSONResponse(store.get(response_id).response)

    @app.delete("/v1/responses/{response_id}")
    async def delete(response_id: str) -> Response:
        store.delete(response_id)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    @app.get("/v1/responses/{response_id}/input_items")
    async def listed(response_id: str, request: Request) -> Response:
        query = request.query_params
        limit = query.get("limit", "20")
        if not limit.isdigit():
            raise APIError(400, f"limit must be an integer from 1 to 100, got {limit!r}", param="limit")
        items = store.get(response_id).input_items
        return JSONResponse(responses_store.listing(items, query.get("order", "desc"), int(limit), query.get("after")))

    @app.post("/v1/responses/{response_id}/{action}")
    @app.post("/v1/responses/{action}")
    async def not_served(request: Request) -> Response:
        raise APIError(404, f"{request.url.path} is not served: this server runs no background responses", param=None)


def _checked(
    state: core.ServerState, store: responses_store.ResponseStore, data: Any
) -> tuple[protocol.ResponsesRequest, list, list[str], list]:
    """The request parsed and checked, its chat messages with the input field each came from, and the stored
    conversation it continues (input items; empty without a previous_response_id)."""
    body = openai_protocol.parse(protocol.ResponsesRequest, data)
    body.check_supported()
    earlier = store.conversation(body.previous_response_id) if body.previous_response_id is not None else []
    state.check_count(len(earlier) + (len(body.input) if isinstance(body.input, list) else 1), "input items", "input")
    messages, origin = body.messages(earlier)
    return body, messages, origin, earlier


def _prepared(
    state: core.ServerState, store: responses_store.ResponseStore, data: Any
) -> tuple[protocol.ResponsesRequest, Any, list]:
    """The request checked, the function that prepares its prompt on a model (in a worker thread), and the
    stored conversation it continues."""
    body, messages, origin, earlier = _checked(state, store, data)
    tools = body.tool_options()
    options = body.options()

    def prepare(entry: core.Entry) -> core.Prepared:
        return _chat(entry, messages, origin, options, body.max_output_tokens, tools, body.truncation == "auto")

    return body, prepare, earlier


def _chat(entry, messages, origin, options, asked, tools, truncate: bool) -> core.Prepared:
    """The chat's prompt, errors naming Responses' fields. With `truncation: "auto"`, a conversation over the
    context loses its oldest turns (whole turns, from a user message on; the instructions stay), as few as fit."""

    keep = 1 if origin[:1] == ["instructions"] else 0

    def attempt(cut: int) -> core.Prepared:
        kept = messages[:keep] + messages[cut:] if cut else messages
        try:
            return core.chat_prompt(
                entry,
                kept,
                options,
                asked=asked,
                param_of=lambda n: _PARAM.get(n, n),
                what="input",
                tools=tools,
            )
        except APIError as exc:
            raise _renamed(exc, origin[:keep] + origin[cut:] if cut else origin) from None

    try:
        return attempt(0)
    except APIError as exc:
        if not (truncate and exc.code == "context_length_exceeded"):
            raise
        first = exc
    starts = [i for i, m in enumerate(messages) if i > 0 and m["role"] == "user" and origin[i] != "instructions"]
    low, high, best = 0, len(starts) - 1, None
    while low <= high:  # the fewest turns dropped that fit (dropping more only shortens the prompt)
        mid = (low + high) // 2
        try:
            best = attempt(starts[mid])
            high = mid - 1
        except APIError as exc:
            if exc.code != "context_length_exceeded":
                raise
            low = mid + 1
    if best is None:
        raise first
    return best


_MESSAGE_FIELD = re.compile(r"messages\[(\d+)\](\.tool_call_id)?")


def _renamed(exc: APIError, origin: list[str]) -> APIError:
    """An error the chat core raised, in the Responses request's own terms: `messages[i]` is the input item
    it came from, a function tool's fields are the tool's own, a named tool_choice is `{"type": "function",
    "name": ...}`."""

    def item(match: re.Match) -> str:
        index = int(match.group(1))
        where = origin[index] if index < len(origin) else "input"
        return where + (".call_id" if match.group(2) else "")

    def rename(text: str) -> str:
        text = _MESSAGE_FIELD.sub(item, text)
        text = re.sub(r"(tools\[\d+\])\.function\.", r"\1.", text).replace("tool_choice.function.", "tool_choice.")
        return text.replace('{"type": "function", "function": {"name": ...}}', '{"type": "function", "name": ...}')

    param = exc.param
    if param in (None, "messages", "input", "tools", "tool_choice"):  # the field the message names, if any
        found = _MESSAGE_FIELD.search(exc.message) or re.match(r"(?:tools\[\d+\]|tool_choice)[.\w]*", exc.message)
        param = rename(found.group(0)) if found else param
    renamed = APIError(exc.status, rename(exc.message), type=exc.type, param=param and rename(param), code=exc.code)
    renamed.headers = exc.headers
    return renamed


async def _respond(state: core.ServerState, store: responses_store.ResponseStore, request: Request) -> Response:
    state.check_serving()
    body, prepare, earlier = _prepared(state, store, await core.read_json(request))
    entry = await state.acquire(request, body.model)
    if entry is None:
        return core.gone()
    shape = _Shape(body, entry)
    if body.stored:
        shape.on_finished = lambda response: store.keep(response, earlier, responses_store.input_items(body.input))
    generation = await core.generate(state, request, entry, prepare, schema_param="text.format")
    if generation is None:
        return core.gone()
    if body.stream:
        return core.StreamResponse(shape.stream(generation), generation.pump, "text/event-stream")
    events = await generation.collect(request)
    if events is None:
        return core.gone()
    return JSONResponse(shape.whole(events, generation.prepared))


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class _Shape:
    """The `response` object of one request, and its stream of events."""

    def __init__(self, body: protocol.ResponsesRequest, entry: core.Entry) -> None:
        self.body = body
        self.names = TokenNames(entry.model) if body.logprobs else None
        defaults = entry.model.defaults
        text_format = body.text.format.echoed() if body.text and body.text.format else {"type": "text"}
        self.head: dict[str, Any] = {
            "id": _id("resp"),
            "object": "response",
            "created_at": openai_protocol.now(),
            "status": "in_progress",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": body.max_tool_calls,
            "model": entry.name,
            "output": [],
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": None, "summary": None}
            | (body.reasoning.model_dump(exclude_none=True) if body.reasoning else {}),
            "prompt_cache_key": body.prompt_cache_key,
            "safety_identifier": body.safety_identifier,
            "service_tier": "default",
            "store": body.stored,
            "temperature": body.temperature if body.temperature is not None else defaults.temperature,
            "text": {"format": text_format},
            "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
            "tools": body.tools or [],
            "top_logprobs": body.top_logprobs or 0,
            "top_p": body.top_p if body.top_p is not None else defaults.top_p,
            "truncation": body.truncation or "disabled",
            "usage": None,
            "user": body.user,
            "metadata": body.metadata or {},
        }
        self._sequence = 0
        self.on_finished: Callable[[dict[str, Any]], None] | None = None  # keeps the finished response

    def allowed(self, call: ToolCall) -> bool:
        """Within `max_tool_calls` (the calls after that many are dropped)."""
        return self.body.max_tool_calls is None or call.index < self.body.max_tool_calls

    def _logprobs(self, deltas: list[TextDelta]) -> list[dict[str, Any]]:
        if self.names is None:
            return []
        return chat_content([t for d in deltas for t in d.tokens], self.names)

    def _finished(self, output: list[dict[str, Any]], done: Done, prompt_tokens: int) -> dict[str, Any]:
        cut = done.finish_reason == "length"
        usage = {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": done.usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + done.usage.completion_tokens,
        }
        response = self.head | {
            "status": "incomplete" if cut else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "output": output,
            "usage": usage,
        }
        if self.on_finished is not None:
            self.on_finished(response)
        return response

    # --- whole ---------------------------------------------------------------------------------------------
    def whole(self, events: list[Any], prepared: core.Prepared) -> dict[str, Any]:
        done = next(e for e in events if isinstance(e, Done))
        status = "incomplete" if done.finish_reason == "length" else "completed"
        deltas = [e for e in events if isinstance(e, TextDelta)]
        calls = [e for e in events if isinstance(e, ToolCall) and self.allowed(e)]
        text = "".join(d.text for d in deltas)
        output = []
        if text or not calls:
            output.append(_message(_id("msg"), text, self._logprobs(deltas), status))
        output += [_function_call(_id("fc"), call, "completed") for call in calls]
        return self._finished(output, done, prepared.prompt_tokens)

    # --- streamed ------------------------------------------------------------------------------------------
    def _event(self, kind: str, body: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence} | body
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + json_bytes(data) + b"\n\n"

    async def stream(self, generation: core.Generation) -> AsyncIterator[bytes]:
        yield self._event("response.created", {"response": self.head})
        yield self._event("response.in_progress", {"response": self.head})
        items = _Items(self)
        try:
            async for batch in generation.batches():
                out = []
                for event in batch:
                    if isinstance(event, TextDelta):
                        out.append(items.text(event))
                    elif isinstance(event, ToolCall) and self.allowed(event):
                        out.append(items.call(event))
                    elif isinstance(event, Done):
                        out.append(items.close(event))
                        response = self._finished(items.output, event, generation.prepared.prompt_tokens)
                        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
                        out.append(self._event(kind, {"response": response}))
                if out:
                    yield b"".join(out)
        except Exception as exc:  # after the 200: the error travels as Responses' error event
            error = to_api_error(exc)
            fields = {"code": error.code or error.type, "message": error.message, "param": error.param}
            # `error` too, as OpenAI's chat stream has it: the Python SDK raises on that key
            yield self._event("error", fields | openai_body(error))


class _Items:
    """The output items of a streamed response as its events arrive: an assistant message opened by the first
    text and closed by a call or the end; a function_call item per call."""

    def __init__(self, shape: _Shape) -> None:
        self.shape = shape
        self.output: list[dict[str, Any]] = []
        self._message: dict[str, Any] | None = None  # the open message
        self._texts: list[str] = []  # its text and log-probs so far, each token's computed once
        self._logprobs: list[dict[str, Any]] = []

    def _open(self) -> bytes:
        index = len(self.output)
        self._message = _message(_id("msg"), "", [], "in_progress")
        self._texts, self._logprobs = [], []
        self.output.append(self._message)
        added = self._message | {"content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": self._message["id"], "output_index": index, "content_index": 0}
        return self.shape._event("response.output_item.added", {"output_index": index, "item": added}) + (
            self.shape._event("response.content_part.added", where | {"part": part})
        )

    def text(self, delta: TextDelta) -> bytes:
        head = self._open() if self._message is None else b""
        logprobs = self.shape._logprobs([delta])
        self._texts.append(delta.text)
        self._logprobs += logprobs
        index = len(self.output) - 1
        where = {"item_id": self._message["id"], "output_index": index, "content_index": 0}
        return head + self.shape._event(
            "response.output_text.delta", where | {"delta": delta.text, "logprobs": logprobs}
        )

    def _close(self, status: str) -> bytes:
        message, self._message = self._message, None
        if message is None:
            return b""
        index = self.output.index(message)
        text = "".join(self._texts)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": self._logprobs}
        message |= {"status": status, "content": [part]}
        where = {"item_id": message["id"], "output_index": index, "content_index": 0}
        return b"".join(
            (
                self.shape._event("response.output_text.done", where | {"text": text, "logprobs": part["logprobs"]}),
                self.shape._event("response.content_part.done", where | {"part": part}),
                self.shape._event("response.output_item.done", {"output_index": index, "item": message}),
            )
        )

    def call(self, call: ToolCall) -> bytes:
        head = self._close("completed")
        index = len(self.output)
        item = _function_call(_id("fc"), call, "completed")
        self.output.append(item)
        where = {"item_id": item["id"], "output_index": index}
        return head + b"".join(
            (
                self.shape._event(
                    "response.output_item.added",
                    {"output_index": index, "item": item | {"arguments": "", "status": "in_progress"}},
                ),
                self.shape._event("response.function_call_arguments.delta", where | {"delta": call.arguments}),
                self.shape._event(
                    "response.function_call_arguments.done", where | {"name": call.name, "arguments": call.arguments}
                ),
                self.shape._event("response.output_item.done", {"output_index": index, "item": item}),
            )
        )

    def close(self, done: Done) -> bytes:
        """The end: the open message closed (or an empty one, for an answer with neither text nor calls)."""
        status = "incomplete" if done.finish_reason == "length" else "completed"
        head = self._open() if not self.output else b""
        return head + self._close(status)


def _message(ident: str, text: str, logprobs: list[dict[str, Any]], status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
    return {"type": "message", "id": ident, "status": status, "role": "assistant", "content": [part]}


def _function_call(ident: str, call: ToolCall, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": ident,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }
