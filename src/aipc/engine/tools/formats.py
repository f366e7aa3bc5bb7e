"""Tool formats: how a model family is told about tools, and what its calls look like.

- `phi4`: Phi-4-mini. Tools are a JSON list in the system turn between `<|tool|>` and `<|/tool|>` (its
  official template reads them from the system message's `tools` field); calls come back as
  `<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>` (the closing tag is often missing), as
  `functools[...]` (the form vLLM's Phi-4-mini template asks for), or as a bare list when a detokenizer drops
  the special tokens.
- `hermes`: Hermes 2 Pro, Qwen2.5 and kin. The template takes `tools`; each call is
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`; results go back in `<tool_response>` blocks.
- `template`: a template that takes a `tools` variable but whose call markup is unknown. Calls are parsed in
  any of the forms above or as bare JSON.
- `generic`: every other model. aipc describes the tools in the system message and asks for
  `{"tool_calls": [{"name": ..., "arguments": {...}}]}` (llama.cpp's "generic" handler is the precedent).

What a template can render is found by rendering probe messages in the sandbox (as llama.cpp's minja does),
not by reading its source, so templates written in any style are understood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from aipc.errors import UsageError

FORMATS = ("phi4", "hermes", "template", "generic")


@dataclass(frozen=True)
class Opener:
    """Where call markup starts. `pieces` match literally, with optional whitespace between them.

    `json_at` None: a tagged body that runs to `closer` (or to the end of the output, since models forget
    closing tags). Otherwise the body is the JSON value starting at `pieces[json_at]`, and `closer`, when set,
    is optional text consumed right after it (a code fence's closing backticks)."""

    pieces: tuple[str, ...]
    json_at: int | None = None
    closer: str = ""

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def regex(self) -> str:
        """A regular expression for the opener, for runtimes whose lazy grammars trigger on patterns."""
        return r"\s*".join(re.escape(p) for p in self.pieces)


_TAG_PHI4 = Opener(("<|tool_call|>",), None, "<|/tool_call|>")
_TAG_HERMES = Opener(("<tool_call>",), None, "</tool_call>")
_JSON_CORES = (("{", '"tool_calls"', ":"), ("{", '"tool_call"', ":"), ("{", '"name"', ":"), ("[", "{", '"name"', ":"))
_JSON = tuple(
    opener
    for core in _JSON_CORES
    for opener in (
        Opener(core, 0),
        Opener(("```json", *core), 1, "```"),
        Opener(("```", *core), 1, "```"),
    )
)

OPENERS: dict[str, tuple[Opener, ...]] = {
    "phi4": (_TAG_PHI4, Opener(("functools", "["), 1), Opener(("[", "{", '"name"', ":"), 0)),
    "hermes": (_TAG_HERMES,),
    "template": (_TAG_HERMES, _TAG_PHI4, *_JSON),
    "generic": _JSON,
}


@dataclass(frozen=True)
class CallMarkup:
    """The canonical spelling of a call in a format: `begin`, then a JSON value, then `end`.

    `listed`: the JSON value is a list of calls (else one call object). These are what the engine prefills
    and constrains; the parser accepts more spellings than these."""

    begin: str
    end: str
    listed: bool


MARKUP = {
    "phi4": CallMarkup("<|tool_call|>", "<|/tool_call|>", listed=True),
    "hermes": CallMarkup("<tool_call>\n", "\n</tool_call>", listed=False),
    "template": CallMarkup("", "", listed=False),
    "generic": CallMarkup('{"tool_calls": ', "}", listed=True),
}


@dataclass(frozen=True)
class TemplateCaps:
    """What a chat template renders, found by rendering probe messages."""

    tools: bool = False  # a `tools` variable
    system_tools: bool = False  # a system message's `tools` field (Phi-4-mini's official template)
    system_role: bool = True
    tool_calls: bool = False  # assistant `tool_calls`
    object_arguments: bool = False  # ...only when their arguments are objects, not JSON strings
    tool_responses: bool = False  # `tool` messages
    any_role: bool = False  # renders a role it does not know as `<|role|>` (Phi-style), so `tool_response` works
    hermes_markup: bool = False  # its text mentions `<tool_call>`
    phi4_markup: bool = False  # its text mentions `<|tool_call|>`


@dataclass(frozen=True)
class ToolFormat:
    """A resolved format: the family (`name`), how tools reach the model (`prompting`), and the template's
    capabilities that decide how past calls and results are rendered.

    prompting: "native" (the template takes `tools`), "system-field" (the system message's `tools` field),
    "inline" (aipc writes the family's own tool block into the system message) or "instruction" (aipc's
    generic description of the tools and of the JSON to answer with)."""

    name: str
    prompting: str
    caps: TemplateCaps

    @property
    def openers(self) -> tuple[Opener, ...]:
        return OPENERS[self.name]

    @property
    def markup(self) -> CallMarkup:
        return MARKUP[self.name]


_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "aipc_probe_tool",
        "description": "Probe.",
        "parameters": {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]},
    },
}
_USER = {"role": "user", "content": "<aipc user needle>"}


def _try(template: str, messages: list[dict], tools: list | None = None) -> str:
    from aipc.engine import template as chat_template

    try:
        return chat_template.render(template, messages, tools=tools, add_generation_prompt=False)
    except Exception:  # a template that cannot render a probe lacks what it probes
        return ""


@lru_cache(maxsize=16)
def probe(template: str | None) -> TemplateCaps:
    """What `template` renders (None is aipc's ChatML fallback, which renders system, user and assistant)."""
    if template is None:
        return TemplateCaps()
    has_tools = "aipc_probe_tool" in _try(template, [_USER], [_PROBE_TOOL])
    system_tools = "<aipc tools needle>" in _try(
        template, [{"role": "system", "content": "s", "tools": "<aipc tools needle>"}, _USER]
    )
    system_role = "<aipc system needle>" in _try(
        template, [{"role": "system", "content": "<aipc system needle>"}, _USER]
    )
    arguments = {"argument_needle": "x"}

    def calls(args: object) -> list[dict]:
        call = {"id": "call_probe", "type": "function", "function": {"name": "aipc_probe_tool", "arguments": args}}
        return [_USER, {"role": "assistant", "content": "", "tool_calls": [call]}]

    needle = ('"argument_needle":', "'argument_needle':")
    as_string = any(n in _try(template, calls('{"argument_needle": "x"}')) for n in needle)
    as_object = any(n in _try(template, calls(arguments)) for n in needle)
    response = "<aipc response needle>"
    tool_message = {"role": "tool", "tool_call_id": "call_probe", "name": "aipc_probe_tool", "content": response}
    responses = response in _try(template, [*calls(arguments if as_object else "{}"), tool_message])
    any_role = "<|tool_response|><aipc response needle>" in _try(
        template, [_USER, {"role": "tool_response", "content": response}]
    )
    return TemplateCaps(
        tools=has_tools,
        system_tools=system_tools,
        system_role=system_role,
        tool_calls=as_string or as_object,
        object_arguments=as_object and not as_string,
        tool_responses=responses,
        any_role=any_role,
        hermes_markup="<tool_call>" in template,
        phi4_markup="<|tool_call|>" in template,
    )


def detect(template: str | None) -> str:
    """The format a template implies, for models the catalog does not describe."""
    caps = probe(template)
    if caps.system_tools or (caps.tools and caps.phi4_markup):
        return "phi4"
    if caps.tools:
        return "hermes" if caps.hermes_markup else "template"
    return "generic"


def resolve(template: str | None, declared: str | None = None) -> ToolFormat:
    """The format to use with this template: the catalog's `declared` family when given, else detected.

    A template that takes a `tools` variable is always used to present tools (the model was trained on
    what it writes); otherwise the family's own block or aipc's generic instruction is written."""
    if declared is not None and declared not in FORMATS:
        raise UsageError(f"tool format {declared!r} is unknown: valid formats are {', '.join(FORMATS)}")
    caps = probe(template)
    name = declared or detect(template)
    if name == "template" and not caps.tools:
        name = "generic"  # nothing to render the tools with
    if caps.tools and name != "generic":
        prompting = "native"
    elif name == "phi4":
        prompting = "system-field" if caps.system_tools else "inline"
    elif name == "hermes":
        prompting = "inline"
    else:
        prompting = "instruction"
    return ToolFormat(name, prompting, caps)


def declared_format(model: str | None) -> str | None:
    """The catalog's tool format for a model name or stored reference (`phi4:mini@openvino-int4`)."""
    from aipc.store import catalog

    if not model:
        return None
    entry = catalog.CATALOG.get(model.partition("@")[0])
    return entry.tool_format if entry is not None else None
