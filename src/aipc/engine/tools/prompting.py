"""Prompts with tools and tool histories, for every template.

The order matters for safety: every string that came in the request (message content, call arguments, tool
definitions) has its control-token strings broken first (`aipc.engine.prompt`), and only then does aipc add
the markup of the format (`<|tool_call|>`, `<tool_response>`), so the markup stays control tokens while
nothing a client sends can become one.

Templates that render tool turns themselves get them as transformers passes them (calls with their
arguments as objects where the template needs objects). For the others, calls become the assistant text the
model would have written, and results become user turns, so a history with tool turns renders on every
template (SmolLM2's ChatML template knows only system, user and assistant).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aipc.engine import prompt, template
from aipc.engine.tools.formats import ToolFormat
from aipc.engine.tools.request import Tool, ToolRequest, arguments_object

PHI4_DEFAULT_SYSTEM = "You are a helpful assistant with some tools."  # Phi-4-mini's model card example


@dataclass(frozen=True)
class RenderedPrompt:
    """The prompt text, and whether request strings in it were escaped: then it must be tokenized with
    `aipc.engine.prompt.tokenize_pieces`, else as plain text."""

    text: str
    escaped: bool


def render_prompt(
    chat_template: str | None,
    messages: Sequence[dict[str, Any]],
    request: ToolRequest | None,
    fmt: ToolFormat,
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    specials: Iterable[str] = (),
) -> RenderedPrompt:
    """The prompt for checked messages (`validate_messages`) and tools, in the format `fmt`.

    Tools are shown to the model only when it may call them: with `tool_choice` "none" they are left out,
    so a model never sees a reason to write markup that would then be plain content."""
    specials = frozenset(specials)
    escaper = _Escaper(specials)
    clean = [escaper.message(m) for m in messages]
    tools = tuple(escaper.tool(t) for t in request.tools) if request is not None and request.calls_allowed else ()
    converted, template_tools = _convert(clean, tools, request, fmt)
    text = template.render(
        chat_template,
        converted,
        bos_token=bos_token,
        eos_token=eos_token,
        add_generation_prompt=add_generation_prompt,
        tools=template_tools,
    )
    return RenderedPrompt(text, escaper.changed)


class _Escaper:
    """Breaks control-token strings in every request string, remembering whether any needed it."""

    def __init__(self, specials: frozenset[str]) -> None:
        self.specials = specials
        self.changed = False

    def text(self, value: str) -> str:
        if self.specials and prompt.has_specials(value, self.specials):
            self.changed = True
            return prompt.break_specials(value, self.specials)
        return value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value

    def message(self, m: dict[str, Any]) -> dict[str, Any]:
        out = {**m, "content": self.text(m["content"])}
        if "tool_calls" in m:
            out["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": self.text(c["function"]["arguments"])}}
                for c in m["tool_calls"]
            ]
        return out

    def tool(self, t: Tool) -> Tool:
        description = self.text(t.description) if t.description is not None else None
        return Tool(t.name, description, self.value(t.parameters), t.strict)


def _convert(
    messages: list[dict[str, Any]], tools: tuple[Tool, ...], request: ToolRequest | None, fmt: ToolFormat
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages and the `tools` variable to hand the template."""
    native = fmt.prompting == "native"
    caps = fmt.caps
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "assistant" and "tool_calls" in m:
            if native and caps.tool_calls:
                out.append(_native_calls(m, caps.object_arguments))
            else:
                out.append({"role": "assistant", "content": _calls_as_text(m, fmt.name)})
        elif m["role"] == "tool":
            if native and caps.tool_responses:
                out.append(dict(m))
            else:
                _append_result(out, m, fmt)
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if not tools:
        return _strip_marks(out), None
    if native:
        return _strip_marks(out), [t.openai() for t in tools]
    if fmt.prompting == "system-field":
        return _with_system(out, "", tools_field=_phi4_tools(tools), default=PHI4_DEFAULT_SYSTEM), None
    if fmt.prompting == "inline" and fmt.name == "phi4":
        block = "<|tool|>" + _phi4_tools(tools) + "<|/tool|>"
        return _with_system(out, block, joiner="", default=PHI4_DEFAULT_SYSTEM, system_role=caps.system_role), None
    if fmt.prompting == "inline":  # hermes
        return _with_system(out, _hermes_instruction(tools, request), system_role=caps.system_role), None
    return _with_system(out, generic_instruction(tools, request), system_role=caps.system_role), None


def _native_calls(m: dict[str, Any], objects: bool) -> dict[str, Any]:
    calls = []
    for c in m["tool_calls"]:
        arguments: Any = c["function"]["arguments"]
        if objects:
            parsed = arguments_object(arguments)
            arguments = parsed if parsed is not None else arguments
        calls.append(
            {"id": c["id"], "type": "function", "function": {"name": c["function"]["name"], "arguments": arguments}}
        )
    return {"role": "assistant", "content": m["content"], "tool_calls": calls}


def _call_object(c: dict[str, Any]) -> dict[str, Any]:
    arguments = arguments_object(c["function"]["arguments"])
    return {
        "name": c["function"]["name"],
        "arguments": arguments if arguments is not None else c["function"]["arguments"],
    }


def _dumps(value: Any) -> str:
    # ensure_ascii=False keeps escaping sentinels as characters, so the prompt still splits on them.
    return json.dumps(value, ensure_ascii=False)


def _calls_as_text(m: dict[str, Any], family: str) -> str:
    """A past assistant turn with calls, written as the model writes calls in its format."""
    objects = [_call_object(c) for c in m["tool_calls"]]
    if family == "phi4":
        markup = "<|tool_call|>" + _dumps(objects) + "<|/tool_call|>"
    elif family == "hermes":
        markup = "\n".join(f"<tool_call>\n{_dumps(o)}\n</tool_call>" for o in objects)
    else:
        markup = _dumps({"tool_calls": objects})
    content = m["content"]
    return f"{content}\n{markup}" if content and family != "phi4" else content + markup


def _append_result(out: list[dict[str, Any]], m: dict[str, Any], fmt: ToolFormat) -> None:
    """A tool result for a template that does not render tool messages: Phi-4-mini's `<|tool_response|>` turn
    where the template writes any role as `<|role|>`, else a user turn (consecutive results share one, since
    many templates insist that roles alternate)."""
    if fmt.name == "phi4" and fmt.caps.any_role:
        out.append({"role": "tool_response", "content": m["content"]})
        return
    if fmt.name in ("hermes", "phi4"):
        text = f"<tool_response>\n{m['content']}\n</tool_response>"
        joiner = "\n"
    else:
        call = f"{m['name']} (call {m['tool_call_id']})" if m.get("tool_call_id") else m.get("name") or "a tool"
        text = f"Result of {call}:\n{m['content']}"
        joiner = "\n\n"
    previous = out[-1] if out else None
    if previous is not None and previous.get("_results"):
        previous["content"] += joiner + text
    else:
        out.append({"role": "user", "content": text, "_results": True})


def _with_system(
    messages: list[dict[str, Any]],
    text: str,
    *,
    tools_field: str | None = None,
    joiner: str = "\n\n",
    default: str = "",
    system_role: bool = True,
) -> list[dict[str, Any]]:
    """`text` added to the system message (one is inserted when there is none); for templates without a
    system role, to the first user message instead."""
    out = _strip_marks(messages)
    if out and out[0]["role"] == "system":
        system = out[0]
        system["content"] = system["content"] + (joiner if system["content"] and text else "") + text
    elif system_role or tools_field is not None:
        out.insert(0, {"role": "system", "content": default + (joiner if default and text else "") + text})
        system = out[0]
    else:
        first = next((m for m in out if m["role"] == "user"), None)
        if first is None:
            out.insert(0, {"role": "user", "content": text})
        else:
            first["content"] = text + "\n\n" + first["content"]
        return out
    if tools_field is not None:
        system["tools"] = tools_field
    return out


def _strip_marks(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "_results"} for m in messages]


def _phi4_tools(tools: tuple[Tool, ...]) -> str:
    """The tool list as Phi-4-mini's model card shows it: a JSON dump of {name, description, parameters}."""
    return _dumps([t.openai()["function"] for t in tools])


def _obligation(request: ToolRequest | None) -> str:
    if request is None or not request.forced:
        return ""
    if request.function is not None:
        return f"You must call the tool {request.function} now.\n"
    return "You must call one or more of these tools now.\n"


def _hermes_instruction(tools: tuple[Tool, ...], request: ToolRequest | None) -> str:
    """Hermes-style tool instructions for a Hermes-family model whose template cannot take tools."""
    listed = "\n".join(_dumps(t.openai()) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to help with the user's request. "
        f"The functions are described in JSON Schema within <tools></tools> tags:\n<tools>\n{listed}\n</tools>\n\n"
        + _obligation(request)
        + "For each call, write a JSON object with the function's name and arguments within "
        '<tool_call></tool_call> tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call>"
    )


def generic_instruction(tools: tuple[Tool, ...], request: ToolRequest | None) -> str:
    """The instruction for models without a tool format of their own: each tool's name, description and
    argument schema, and the exact JSON to answer with. Written in plain words, since the models that need it
    are small and were never trained on tool markup."""
    lines = ["You can use these tools:"]
    for t in tools:
        lines.append(f"- {t.name}: {t.description}" if t.description else f"- {t.name}")
        lines.append(f"  arguments (JSON Schema): {_dumps(t.parameters)}")
    several = request is None or request.parallel
    shape = '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}'
    lines += [
        "",
        "To use tools, answer with only this JSON and nothing else:",
        shape,
        "(put several calls in the list to use several tools at once)" if several else "(one call at a time)",
    ]
    obligation = _obligation(request)
    if obligation:
        lines.append(obligation.rstrip())
    else:
        lines.append("If no tool is needed, answer the user in plain text.")
    lines.append("Tool results come back in a user message that starts with 'Result of'.")
    return "\n".join(lines)
