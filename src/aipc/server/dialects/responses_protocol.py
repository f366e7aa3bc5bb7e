"""OpenAI's Responses API (/v1/responses) request bodies, validated strictly, as the engine takes them.

A request brings its conversation in `input` (messages, earlier function calls and their outputs), or
continues a stored response's with `previous_response_id` (responses_store.py); `conversation` objects,
`background` and item references are refused by name. Input items become the chat messages the engine takes,
function tools the chat form of tools; hosted tools (web search, file search, code interpreter...) and non-text
content are refused by name. Validation errors are 400s naming the field, as in openai_protocol.py.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from aipc.server.dialects.openai_protocol import NOT_SUPPORTED, StreamOptions, _Body
from aipc.server.errors import APIError

# What `include` may ask for: the output's log-probs (honoured), and what only a reasoning or hosted-tool model
# produces (nothing to add here, accepted as OpenAI's clients send them by default: the Agents SDK asks for
# encrypted reasoning when it does not store responses).
LOGPROBS = "message.output_text.logprobs"
_INCLUDE_NOTHING = (
    "reasoning.encrypted_content",
    "web_search_call.action.sources",
    "web_search_call.results",
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
    "file_search_call.results",
    "message.input_image.image_url",
)
_TEXT_PARTS = ("input_text", "output_text", "text")


class TextFormat(_Body):
    """`text.format`: plain text, any JSON object, or JSON constrained to a schema."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None

    def schema_text(self) -> str | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return '{"type": "object"}'
        if self.schema_ is None:
            raise APIError(400, "text.format.schema is required with type json_schema", param="text.format.schema")
        return json.dumps(self.schema_)

    def echoed(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class TextOptions(_Body):
    format: TextFormat | None = None
    verbosity: str | None = None  # how much a reasoning model says: nothing to change here


class Reasoning(_Body):  # echoed as given
    effort: str | None = None  # this model does not think: accepted, changes nothing
    summary: str | None = None
    generate_summary: str | None = None


class ResponsesRequest(_Body):
    model: str | None = None
    input: str | list[Any]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    include: list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)
    text: TextOptions | None = None
    reasoning: Reasoning | None = None
    truncation: Literal["auto", "disabled"] | None = None
    store: bool | None = None  # OpenAI's default, None, is true
    metadata: dict[str, str] | None = None
    user: str | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None

    def check_supported(self) -> None:
        if self.conversation is not None:
            raise APIError(
                400,
                f"conversation {NOT_SUPPORTED}: this server keeps no conversation objects; continue a stored "
                "response with previous_response_id, or send the whole conversation in input",
                param="conversation",
            )
        if self.background:
            raise APIError(
                400, f"background {NOT_SUPPORTED}: use stream to read the answer as it comes", param="background"
            )
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options")
        for value in self.include or ():
            if value != LOGPROBS and value not in _INCLUDE_NOTHING:
                raise APIError(400, f"include: {value!r} is not one of {LOGPROBS!r}, ...", param="include")

    @property
    def logprobs(self) -> bool:
        return LOGPROBS in (self.include or ())

    def options(self) -> dict[str, Any]:
        """The generation options for the engine (`GenerationConfig` names); None keeps the model's default."""
        values: dict[str, Any] = {
            "max_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }
        if self.logprobs:
            values["logprobs"] = self.top_logprobs or 0
        if self.text is not None and self.text.format is not None:
            values["json_schema"] = self.text.format.schema_text()
        return {k: v for k, v in values.items() if v is not None}

    @property
    def stored(self) -> bool:
        return self.store is not False

    def messages(self, earlier: list[dict[str, Any]] = ()) -> tuple[list[dict[str, Any]], list[str]]:
        """`instructions`, the `earlier` conversation (a stored response's, as input items) and `input` as the
        chat messages the engine takes, and for each message the input field it came from (to name it in
        errors)."""
        out: list[dict[str, Any]] = []
        origin: list[str] = []
        if self.instructions:
            out.append({"role": "system", "content": self.instructions})
            origin.append("instructions")
        for item in earlier:
            before = len(out)
            _add_item(out, item, "previous_response_id")
            origin += ["previous_response_id"] * (len(out) - before)
        if isinstance(self.input, str):
            return [*out, {"role": "user", "content": self.input}], [*origin, "input"]
        if not self.input:
            raise APIError(400, "input must not be empty", param="input")
        for i, item in enumerate(self.input):
            param = f"input[{i}]"
            if not isinstance(item, dict):
                raise APIError(
                    400,
                    f"{param} must be an item object (a message, function_call or function_call_output), "
                    f"got {type(item).__name__}: input is a string or a list of items",
                    param=param,
                )
            before = len(out)
            _add_item(out, item, param)
            origin += [param] * (len(out) - before)
        return out, origin

    def tool_options(self) -> dict[str, Any]:
        """The tool side of the request in the chat form `Model.prepare` checks."""
        tools = None
        if self.tools is not None:
            tools = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(self.tools)]
        choice = _tool_choice(self.tool_choice)
        if not tools and choice in ("auto", "none"):
            choice = None  # as OpenAI takes it: agent frameworks send tools: [] with their tool_choice
        return {"tools": tools, "tool_choice": choice, "parallel_tool_calls": self.parallel_tool_calls}


def _add_item(out: list[dict[str, Any]], item: dict[str, Any], param: str) -> None:
    """One input item appended to the chat messages: a message, a function call (an assistant turn's call,
    joined to that turn) or a function call's output (a tool message). Reasoning items carry nothing this model
    reads; references to stored items cannot be resolved here."""
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise APIError(400, f"{param}.role must be user, assistant, system or developer, got {role!r}", param=param)
        text = _text(item.get("content"), f"{param}.content", assistant=role == "assistant")
        out.append({"role": "system" if role == "developer" else role, "content": text})
    elif kind == "function_call":
        call_id, name, arguments = (item.get(k) for k in ("call_id", "name", "arguments"))
        if not all(isinstance(v, str) for v in (call_id, name, arguments)):
            raise APIError(400, f"{param}: a function_call needs string call_id, name and arguments", param=param)
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        last = out[-1] if out else None
        if last is not None and last["role"] == "assistant":  # the same turn's text, or its calls so far
            last.setdefault("tool_calls", []).append(call)
            if not last["content"]:
                last["content"] = None
        else:
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            raise APIError(400, f"{param}.call_id must be a string", param=f"{param}.call_id")
        output = item.get("output")
        text = output if isinstance(output, str) else _text(output, f"{param}.output", assistant=False)
        out.append({"role": "tool", "tool_call_id": call_id, "content": text})
    elif kind == "reasoning":
        return
    elif kind == "item_reference":
        raise APIError(
            400,
            f"{param}: item_reference {NOT_SUPPORTED}: send the item itself, or use previous_response_id",
            param=param,
        )
    else:
        raise APIError(
            400,
            f"{param}: input items of type {kind!r} are not supported: use message, function_call or "
            "function_call_output",
            param=param,
        )


def _text(content: Any, param: str, *, assistant: bool) -> str:
    """A message's text: a string, or its text parts joined (an assistant's refusal is what it said)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{param} must be a string or a list of text parts", param=param)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        key = "text" if kind in _TEXT_PARTS else "refusal" if kind == "refusal" and assistant else None
        if key is None:
            raise APIError(400, f"{param}[{j}]: only text parts are supported by this model, got {kind!r}", param=param)
        if not isinstance(part.get(key), str):
            raise APIError(400, f"{param}[{j}]: a {kind} part needs a string {key!r}", param=param)
        texts.append(part[key])
    return "".join(texts)


def _tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    """A Responses function tool ({type, name, description, parameters, strict}) in the chat form."""
    kind = tool.get("type")
    if kind != "function":
        raise APIError(
            400, f"{param}: {kind!r} tools are not supported by this server: only function tools", param=param
        )
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    extra = set(tool) - {"type", "name", "description", "parameters", "strict"}
    if extra:
        raise APIError(400, f"{param}: unknown field {sorted(extra)[0]!r} in a function tool", param=param)
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any] | None) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise APIError(
        400,
        'tool_choice must be "auto", "none", "required" or {"type": "function", "name": ...}',
        param="tool_choice",
    )
