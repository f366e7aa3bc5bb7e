"""What the engine constrains when a call must come (or has begun): the text around the call's JSON, and the
JSON Schema the JSON must match.

With `tool_choice` "required" or a named function, the engine prefills `begin` after the generation prompt,
constrains what follows to `schema`, and ends with `end`, so the output is always a well-formed call whose
arguments match the function's parameters. With "auto", the same grammar applies lazily: once the model
writes `begin` (the parser's `in_call` turns true), the rest is constrained the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aipc.engine import schema as json_schema
from aipc.engine.tools.formats import ToolFormat
from aipc.engine.tools.request import Tool, ToolRequest


@dataclass(frozen=True)
class CallGrammar:
    """`begin` + a JSON value matching `schema` + `end`: one call (or a list of calls) in the model's format.

    forced: prefill `begin` and constrain from the first generated token (`required`, a named function);
    otherwise constrain lazily, from where the model writes `begin` itself. An empty `begin` (a template
    whose call markup is unknown) can only be forced: there is nothing to trigger on."""

    begin: str
    schema: dict[str, Any]
    end: str
    forced: bool

    @property
    def lazy(self) -> bool:
        return not self.forced and bool(self.begin)


def call_schema(tools: tuple[Tool, ...]) -> dict[str, Any]:
    """One call to any of `tools`: {"name": that tool's name, "arguments": its parameters}."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "const": t.name},
                "arguments": {"type": "object", **json_schema.loosened(json_schema.inlined(t.parameters))},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def call_grammar(request: ToolRequest | None, fmt: ToolFormat) -> CallGrammar | None:
    """The grammar of a call for this request and format; None when no call may be made.

    Formats that write calls as a JSON list (Phi-4-mini, generic) constrain the whole list, with at most one
    item when parallel calls are off. Hermes writes each call in its own tags, so its grammar is one call:
    later calls are constrained lazily, each from its own `<tool_call>`."""
    if request is None or not request.calls_allowed:
        return None
    markup = fmt.markup
    one = call_schema(request.allowed)
    if markup.listed or (not markup.begin and request.parallel):
        schema: dict[str, Any] = {"type": "array", "items": one, "minItems": 1}
        if not request.parallel or request.function is not None:  # a named function is called once, as OpenAI does
            schema["maxItems"] = 1
    else:
        schema = one
    return CallGrammar(markup.begin, schema, markup.end, forced=request.forced)
