"""Tool calling, the same for every backend and API dialect.

A request's tools are checked (`parse_request`, `validate_messages`), presented to the model in its family's
format (`format_for`, `render_prompt`), and its calls are read back out of the generated text as it streams
(`ToolCallParser`), as OpenAI `tool_calls`. For `tool_choice` "required" or a named function, `call_grammar`
gives the text to prefill and the JSON Schema the engine constrains the call with.

    request = tools.parse_request(body["tools"], body.get("tool_choice"), body.get("parallel_tool_calls"))
    messages = tools.validate_messages(body["messages"])
    fmt = tools.format_for(info.chat_template, info.ref)
    prompt = tools.render_prompt(info.chat_template, messages, request, fmt, bos_token=..., eos_token=...,
                                 specials=info.special_tokens)
    grammar = tools.call_grammar(request, fmt)
    parser = tools.ToolCallParser.for_request(request, fmt, grammar)
    for delta in generated_text: events = parser.feed(delta)  # ContentDelta | ToolCallDelta
    events = parser.finish(truncated=reason == "length"); finish = tools.finish_reason(reason, bool(parser.calls))
"""

from __future__ import annotations

from aipc.engine.tools.constraints import CallGrammar, call_grammar, call_schema
from aipc.engine.tools.formats import FORMATS, ToolFormat, declared_format, detect, probe, resolve
from aipc.engine.tools.parser import (
    ContentDelta,
    ParsedOutput,
    ToolCall,
    ToolCallDelta,
    ToolCallParser,
    finish_reason,
    parse,
)
from aipc.engine.tools.prompting import RenderedPrompt, generic_instruction, render_prompt
from aipc.engine.tools.request import Tool, ToolRequest, new_call_id, parse_request, validate_messages


def format_for(chat_template: str | None, model: str | None = None) -> ToolFormat:
    """The tool format for a model: its catalog family when `model` (a name or `name@variant`) is in the
    catalog, else what its chat template implies."""
    return resolve(chat_template, declared_format(model))


__all__ = [
    "FORMATS",
    "CallGrammar",
    "ContentDelta",
    "ParsedOutput",
    "RenderedPrompt",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParser",
    "ToolFormat",
    "ToolRequest",
    "call_grammar",
    "call_schema",
    "declared_format",
    "detect",
    "finish_reason",
    "format_for",
    "generic_instruction",
    "new_call_id",
    "parse",
    "parse_request",
    "probe",
    "render_prompt",
    "resolve",
    "validate_messages",
]
