"""What a request asks of tool calling, checked: tool definitions, `tool_choice`, `parallel_tool_calls`, and
histories that hold assistant `tool_calls` and `tool` messages.

Requests are untrusted and come in OpenAI's shapes (the Ollama adapter translates into them). Every error is a
one-line `UsageError` that names the field (`tools[0].function.name ...`), which the server answers with a 400.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aipc.errors import UsageError

# OpenAI allows [a-zA-Z0-9_-]{1,64}; MCP servers and Ollama clients also use dots and colons ("files.read").
NAME_RE = re.compile(r"^[a-zA-Z0-9_.:-]{1,128}\Z")
MAX_TOOLS = 128  # OpenAI's limit
CHOICES = ("none", "auto", "required")
ROLES = ("system", "user", "assistant", "tool")
_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    """An id in OpenAI's form (`call_` + 24 letters and digits), unguessable so ids never collide."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass(frozen=True)
class Tool:
    """One function the model may call. `parameters` is its JSON Schema (an object schema)."""

    name: str
    description: str | None
    parameters: dict[str, Any]
    strict: bool | None = None

    def openai(self) -> dict[str, Any]:
        """The `{"type": "function", "function": {...}}` form, as templates receive tools from transformers."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolRequest:
    """The tool side of one chat request.

    `choice` is "none", "auto" or "required"; a named function is `choice="required"` with `function` set,
    since both force a call and differ only in which names are allowed."""

    tools: tuple[Tool, ...]
    choice: str = "auto"
    function: str | None = None
    parallel: bool = True

    @property
    def calls_allowed(self) -> bool:
        return self.choice != "none" and bool(self.tools)

    @property
    def forced(self) -> bool:
        """A call must come (`required` or a named function): the engine prefills and constrains it."""
        return self.choice == "required"

    @property
    def allowed(self) -> tuple[Tool, ...]:
        """The tools a call may name: all of them, or the named one."""
        if self.function is not None:
            return tuple(t for t in self.tools if t.name == self.function)
        return self.tools

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.allowed)


def parse_request(tools: Any = None, tool_choice: Any = None, parallel_tool_calls: Any = None) -> ToolRequest | None:
    """The checked tool side of a request, or None when it has no tools (and so nothing to call)."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise UsageError("parallel_tool_calls must be true or false")
    if tools is None or (isinstance(tools, list) and not tools):
        if tool_choice not in (None, "none"):
            raise UsageError("tool_choice needs tools: give tools, or leave tool_choice out")
        return None
    parsed = _parse_tools(tools)
    choice, function = _parse_choice(tool_choice, parsed)
    return ToolRequest(parsed, choice, function, True if parallel_tool_calls is None else parallel_tool_calls)


def _parse_tools(tools: Any) -> tuple[Tool, ...]:
    if not isinstance(tools, list):
        raise UsageError('tools must be a list of {"type": "function", "function": {...}} objects')
    if len(tools) > MAX_TOOLS:
        raise UsageError(f"tools has {len(tools)} entries: at most {MAX_TOOLS} are allowed")
    out: list[Tool] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise UsageError(f'{where} must be an object {{"type": "function", "function": {{...}}}}')
        if tool.get("type", "function") != "function":  # left out by some hand-written clients, as Ollama allows
            raise UsageError(f"{where}.type must be 'function' (got {tool.get('type')!r})")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise UsageError(f"{where}.function must be an object with 'name', 'description', 'parameters'")
        name = function.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise UsageError(f"{where}.function.name must match {NAME_RE.pattern} (got {name!r})")
        if name in seen:
            raise UsageError(f"{where}.function.name {name!r} is defined twice: tool names must be unique")
        seen.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise UsageError(f"{where}.function.description must be a string")
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise UsageError(f"{where}.function.strict must be true or false")
        parameters = _parse_parameters(function.get("parameters"), f"{where}.function.parameters")
        out.append(Tool(name, description, parameters, strict))
    return tuple(out)


def _parse_parameters(schema: Any, where: str) -> dict[str, Any]:
    """An object schema: OpenAI passes arguments as one JSON object, so anything else could never be called."""
    if schema is None:
        return {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise UsageError(f"{where} must be a JSON Schema object")
    if schema.get("type", "object") != "object":
        raise UsageError(f"{where}.type must be 'object' (arguments are a JSON object), got {schema.get('type')!r}")
    properties = schema.get("properties")
    if properties is not None and not (
        isinstance(properties, dict) and all(isinstance(v, (dict, bool)) for v in properties.values())
    ):
        raise UsageError(f"{where}.properties must map each argument name to a schema")
    required = schema.get("required")
    if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        raise UsageError(f"{where}.required must be a list of argument names")
    return schema


def _parse_choice(choice: Any, tools: tuple[Tool, ...]) -> tuple[str, str | None]:
    if choice is None:
        return "auto", None
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise UsageError(
                f"tool_choice is {choice!r}: valid values are none, auto, required, "
                'or {"type": "function", "function": {"name": ...}}'
            )
        return choice, None
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        names = [t.name for t in tools]
        if name not in names:
            raise UsageError(f"tool_choice.function.name {name!r} is not one of the tools: {', '.join(names)}")
        return "required", name
    raise UsageError('tool_choice must be none, auto, required, or {"type": "function", "function": {"name": ...}}')


# --- messages -------------------------------------------------------------------------------------------------
def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI-style messages, checked and normalised, tool turns included.

    Each result has `role` and `content` (a string; "" where an assistant's content was null), plus
    `tool_calls` on assistant messages that call tools (`id`, `type`, `function.name`, `function.arguments`
    as the JSON string it came as) and `tool_call_id` (and `name`, the called function's) on tool messages.
    A tool message must answer a call of the assistant message before it, as OpenAI requires."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise UsageError("messages must be a non-empty list of {'role', 'content'} objects")
    clean: list[dict[str, Any]] = []
    open_calls: dict[str, str] = {}  # id -> function name, of the last assistant message's calls
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or "role" not in m:
            raise UsageError(f"{where} must be an object with 'role' and 'content'")
        role = m["role"]
        if role not in ROLES:
            raise UsageError(f"{where}.role is {role!r}: valid roles are {', '.join(ROLES)}")
        calls = m.get("tool_calls") if role == "assistant" else None
        content = m.get("content")
        if content is None and not calls:
            raise UsageError(f"{where}.content must be a string (null only on an assistant message with tool_calls)")
        if content is not None and not isinstance(content, str):
            raise UsageError(f"{where}.content must be a string")
        message: dict[str, Any] = {"role": role, "content": content or ""}
        if role != "tool" and isinstance(m.get("name"), str) and m["name"]:
            message["name"] = m["name"]  # a participant's name, for templates that write it (most do not)
        if role == "assistant":
            open_calls = {}
            if calls:
                message["tool_calls"] = _check_calls(calls, f"{where}.tool_calls")
                open_calls = {c["id"]: c["function"]["name"] for c in message["tool_calls"]}
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if call_id is None:  # a result that names no call (Ollama's clients, trimmed histories): as it is
                if isinstance(m.get("name"), str) and m["name"]:
                    message["name"] = m["name"]
                clean.append(message)
                continue
            if not isinstance(call_id, str) or not call_id:
                raise UsageError(f"{where}.tool_call_id must be the id of the call this message answers")
            if call_id not in open_calls:
                raise UsageError(
                    f"{where}.tool_call_id {call_id!r} answers no call of the assistant message before it: "
                    "a tool message must follow the assistant message with that id in its tool_calls"
                )
            message["tool_call_id"] = call_id
            message["name"] = open_calls[call_id]
        else:
            open_calls = {}
        clean.append(message)
    return clean


def _check_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise UsageError(f"{where} must be a list of calls")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        if not isinstance(call, dict):
            raise UsageError(f'{at} must be an object {{"id", "type": "function", "function": {{...}}}}')
        if call.get("type", "function") != "function":
            raise UsageError(f"{at}.type must be 'function'")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise UsageError(f"{at}.id must be a non-empty string")
        function = call.get("function")
        if not isinstance(function, dict):
            raise UsageError(f"{at}.function must be an object with 'name' and 'arguments'")
        name = function.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise UsageError(f"{at}.function.name must match {NAME_RE.pattern} (got {name!r})")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, dict):  # Ollama's form, and what some clients send
            arguments = json.dumps(arguments, ensure_ascii=False)
        if not isinstance(arguments, str):
            raise UsageError(f"{at}.function.arguments must be a JSON string")
        out.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
    return out


def arguments_object(arguments: str) -> dict[str, Any] | None:
    """The arguments of a past call as a dict (what most templates expect), or None when they are not a JSON
    object (a model may have written broken JSON; templates then get the string as it was)."""
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
