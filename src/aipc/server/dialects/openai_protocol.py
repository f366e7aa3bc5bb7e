"""OpenAI request bodies, validated strictly, and the response objects the API returns.

Pydantic lives here, at the HTTP edge, and nowhere else: a validated request becomes plain values (messages as
dicts, generation options as a dict for `GenerationConfig`) before it reaches the engine. Validation is strict
(no "0.5" for 0.5, no true for 1) and every failure becomes a 400 naming the field in `param`. Fields OpenAI
defines but this server cannot honour are refused by name rather than silently ignored; fields OpenAI does not
define are refused as OpenAI refuses them ("Unrecognized request argument supplied").
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aipc.server.errors import APIError

# OpenAI allows 4; vLLM and llama.cpp's server set no limit, and evaluation harnesses send more (lm-eval's code
# tasks: 5 or 6 stop strings each).
MAX_STOP = 32
MAX_COMPLETION_LOGPROBS = 5  # as OpenAI's completions API
MAX_CHOICES = 128  # prompts x n in one request
MAX_STOP_CHARS = 256
NOT_SUPPORTED = "is not supported by this server"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Body):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # padding against length side channels; loopback needs none


class ResponseFormat(_Body):
    """`text`, `json_object` (any JSON object) or `json_schema` (constrained to the schema)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    def schema_text(self) -> str | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return '{"type": "object"}'
        spec = self.json_schema or {}
        schema = spec.get("schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise APIError(400, "response_format.json_schema.schema must be an object", param="response_format")
        return json.dumps(schema)


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's calls, checked by aipc.engine.tools
    tool_call_id: str | None = None  # the call a tool message answers
    refusal: str | None = None  # echoed back by clients that resend whole assistant messages
    annotations: list[Any] | None = None  # likewise (url citations of OpenAI's search models); not used
    audio: dict[str, Any] | None = None  # likewise (a reference to an earlier spoken reply); not used
    function_call: None = None  # the deprecated form of tool_calls: null only, as a resent message has it
    reasoning_content: str | None = None  # vLLM's and DeepSeek's thinking, resent by their clients; not used
    reasoning: str | None = None
    cache_control: dict[str, Any] | None = None  # prompt caching hints (Anthropic-style clients); not needed

    def text(self, index: int) -> str:
        """The message's text: a string, or the concatenated text of `{"type": "text"}` parts."""
        if isinstance(self.content, str):
            return self.content
        param = f"messages[{index}].content"
        if self.content is None:
            raise APIError(
                400,
                f"{param} must be a string or a list of text parts (null only in an assistant message with tool_calls)",
                param=param,
            )
        texts = []
        for j, part in enumerate(self.content):
            kind = part.get("type")
            # an assistant's earlier refusal, resent with the conversation, is what it said
            key = "refusal" if kind == "refusal" and self.role == "assistant" else "text" if kind == "text" else None
            if key is None:
                raise APIError(
                    400, f"{param}[{j}]: only text content parts are supported by this model, got {kind!r}", param=param
                )
            if not isinstance(part.get(key), str):
                raise APIError(400, f"{param}[{j}]: a {kind} part needs a string {key!r}", param=param)
            texts.append(part[key])
        return "".join(texts)


class _Sampling(_Body):
    """What chat and text completions share."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # OpenAI: any int64
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=128)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Not OpenAI's, but common in local servers (vLLM, llama.cpp): aipc's own sampling options.
    top_k: int | None = Field(default=None, ge=0, le=2**31 - 1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)

    @field_validator("stream", "n", "echo", mode="before", check_fields=False)
    @classmethod
    def _null_is_default(cls, value: Any, info: Any) -> Any:
        """OpenAI's schema lets these be null (`echo`: completions only), meaning their default; clients that send
        every field send that."""
        return cls.model_fields[info.field_name].default if value is None else value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [] if value is None else [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed, got {len(stops)}")
        for s in stops:
            if not s or len(s) > MAX_STOP_CHARS:
                raise ValueError(f"each stop sequence must have 1 to {MAX_STOP_CHARS} characters")
        return stops

    def check_supported(self) -> None:
        """Refuse, by name, what this server cannot honour (rather than answer as if it had)."""
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options")
        for key in self.logit_bias or {}:
            if not key.isdigit():
                raise APIError(400, f"logit_bias keys must be token ids, got {key!r}", param="logit_bias")

    def options(self, max_tokens: int | None) -> dict[str, Any]:
        """The generation options for the engine (`GenerationConfig` names); None keeps the model's default."""
        values = {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "seed": None if self.seed is None else self.seed & (2**63 - 1),  # a negative seed, folded: still fixed
            "repetition_penalty": self.repetition_penalty,
            "stop": tuple(self.stop) if self.stop else None,
            "presence_penalty": self.presence_penalty or None,
            "frequency_penalty": self.frequency_penalty or None,
            "logit_bias": {int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
        }
        return {k: v for k, v in values.items() if v is not None}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    # Hints that change nothing here, accepted as they are harmless: caching and abuse-tracking keys, how much
    # a reasoning model thinks or says (this model does not think), a predicted output (a speed hint).
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    prediction: dict[str, Any] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if self.functions:
            message = f"functions (the deprecated form of tools) {NOT_SUPPORTED}: use tools"
            raise APIError(400, message, param="functions")
        if self.function_call not in (None, "none", "auto"):
            raise APIError(400, f"function_call {NOT_SUPPORTED}: use tool_choice", param="function_call")
        if self.store:
            raise APIError(400, f"store=true {NOT_SUPPORTED}: nothing is kept", param="store")
        if self.audio is not None or "audio" in (self.modalities or []):
            raise APIError(400, f"audio output {NOT_SUPPORTED}: this server answers in text", param="modalities")
        if self.web_search_options is not None:
            raise APIError(
                400, f"web_search_options {NOT_SUPPORTED}: this server does not search", param="web_search_options"
            )

    def options(self, max_tokens: int | None) -> dict[str, Any]:
        extra = {"logprobs": self.top_logprobs or 0} if self.logprobs else {}
        return super().options(max_tokens) | extra

    def wanted_max_tokens(self) -> int | None:
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise APIError(400, "give max_tokens or max_completion_tokens, not both", param="max_tokens")
        return self.max_completion_tokens or self.max_tokens

    def chat_messages(self) -> list[dict[str, Any]]:
        """Messages as the engine takes them; "developer" is OpenAI's newer name for "system". Tool turns keep
        their `tool_calls` and `tool_call_id` (the engine checks them)."""
        out = []
        for i, m in enumerate(self.messages):
            calls = m.role == "assistant" and bool(m.tool_calls)
            message: dict[str, Any] = {
                "role": "system" if m.role == "developer" else m.role,
                "content": None if calls and m.content is None else m.text(i),
            }
            if calls:
                message["tool_calls"] = m.tool_calls
            if m.name and m.role != "tool":
                message["name"] = m.name
            if m.tool_call_id is not None or m.role == "tool":  # OpenAI requires the id a result answers
                message["tool_call_id"] = m.tool_call_id or ""
            out.append(message)
        return out

    def tool_options(self) -> dict[str, Any]:
        """The tool side of the request, for `Model.prepare` (which checks it)."""
        return {"tools": self.tools, "tool_choice": self.tool_choice, "parallel_tool_calls": self.parallel_tool_calls}


class CompletionRequest(_Sampling):
    # Text, token ids, or a batch of either: each prompt gets its own choice (`n` each).
    prompt: str | list[str] | list[int] | list[list[int]]
    # OpenAI's default for the legacy completions API; 0 with echo scores the prompt without generating.
    max_tokens: int | None = Field(default=16, ge=0)
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.max_tokens == 0 and not self.echo:
            raise APIError(400, "max_tokens 0 is only valid with echo: true (to score the prompt)", param="max_tokens")
        if self.suffix:
            raise APIError(400, f"suffix (fill-in-the-middle) {NOT_SUPPORTED}", param="suffix")
        if self.best_of not in (None, 1):
            raise APIError(400, f"best_of={self.best_of} is not supported: only 1", param="best_of")

    def options(self, max_tokens: int | None) -> dict[str, Any]:
        extra = {"logprobs": self.logprobs} if self.logprobs is not None else {}
        return super().options(max_tokens or None) | extra

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each text or token ids; a list of integers is one prompt of token ids."""
        p = self.prompt
        if isinstance(p, str) or (p and all(isinstance(x, int) for x in p)):
            items: list = [p]
        else:
            items = list(p)
        if not items:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if len(items) * self.n > MAX_CHOICES:
            raise APIError(400, f"at most {MAX_CHOICES} choices (prompts x n) per request", param="prompt")
        for i, item in enumerate(items):
            if not item:
                raise APIError(400, "prompt must not be empty", param="prompt")
            if not isinstance(item, str) and any(t < 0 or t >= 2**31 for t in item):
                raise APIError(400, f"prompt[{i}] holds a token id out of range", param="prompt")
        return items


class EmbeddingRequest(_Body):
    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def texts(self) -> list[Any]:
        """Each input: a string or a list of token ids (one list of ids is one input, as OpenAI reads it)."""
        value = self.input
        if isinstance(value, str) or (value and isinstance(value[0], int)):
            return [value]
        if not value:
            raise APIError(400, "input must not be empty", param="input")
        return list(value)


def parse(cls: type[_Body], data: Any) -> Any:
    """`data` (decoded JSON) as a `cls`, or a 400 that names the first offending field."""
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {_json_type(data)}", param=None)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def _validation_error(exc: ValidationError) -> APIError:
    err = exc.errors(include_url=False)[0]
    param = _param(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'", param=param, code="missing_required_parameter")
    if kind == "value_error":  # our own validators' messages say what was given
        return APIError(400, f"Invalid value for '{param}': {err['msg'].removeprefix('Value error, ')}", param=param)
    message = err["msg"]
    got = err.get("input")
    shown = json.dumps(got)[:60] if _jsonable(got) else type(got).__name__
    return APIError(400, f"Invalid value for '{param}': {message} (got {shown})", param=param, code="invalid_value")


def _param(loc: tuple[Any, ...]) -> str:
    """`("messages", 0, "role")` -> "messages[0].role"; union-member tags that pydantic adds are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or "[" in str(part):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-before"}


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))


# --- responses -----------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "aipc"}


def now() -> int:
    return int(time.time())
