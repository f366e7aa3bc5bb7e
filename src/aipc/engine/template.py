"""Chat formatting with the model's own template, rendered in a sandbox.

Templates come from model files, so they are untrusted: they render in Jinja2's immutable sandbox, which
refuses attribute access to internals and mutation of passed-in objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from aipc.engine import sandbox
from aipc.errors import UsageError

ROLES = ("system", "user", "assistant")

# Token strings that end an assistant turn in the model families aipc serves (Phi-3 `<|end|>`, ChatML
# `<|im_end|>`, Llama 3 `<|eot_id|>`, Gemma `<end_of_turn>`), plus end-of-text markers. A backend keeps those
# that are single tokens of the model's vocabulary and adds the tokenizer's own EOS.
END_OF_TURN_STRINGS = (
    "<|end|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
)

# Used when a model ships no template: ChatML, which most small instruct models understand.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TemplateError(UsageError):
    """The chat template failed to render these messages."""


def _raise(message: str) -> None:
    raise TemplateError(f"chat template refused the messages: {message}")


@lru_cache(maxsize=8)
def _compile(source: str):
    # The same settings as transformers' apply_chat_template, so prompts match the reference byte for byte, in a
    # sandbox bounded in time and size (templates come from model files).
    env = sandbox.bounded_environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = sandbox._guard_filter(_tojson)
    return sandbox.compile_template(env, source)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' signature: templates call `tojson(indent=4)`, `tojson(ensure_ascii=False)` and the like.
    import json

    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def validate_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """OpenAI-style messages, checked: a list of {role, content} with known roles and string content."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise UsageError("messages must be a non-empty list of {'role', 'content'} objects")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UsageError(f"messages[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise UsageError(f"messages[{i}].role is {m['role']!r}: valid roles are {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise UsageError(f"messages[{i}].content must be a string")
        clean.append({"role": m["role"], "content": m["content"]})
    return clean


def render(
    template: str | None,
    messages: Sequence[dict[str, str]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    tools: Sequence[dict[str, Any]] | None = None,
) -> str:
    """The prompt text for `messages`, ending with the assistant's turn opener.

    `tools` (OpenAI's `{"type": "function", "function": {...}}` objects) is passed to the template as
    transformers' `apply_chat_template(messages, tools=...)` passes it: None when there are none, so templates
    that test `tools is defined` or `if tools` see what they see there. `aipc.engine.tools` decides what to pass.
    """
    from jinja2 import TemplateError as JinjaError

    given = sum(len(m.get("content") or "") for m in messages if isinstance(m.get("content"), str))
    if given > sandbox.MAX_OUTPUT:  # the user's text, not the template, is too long: say so
        raise UsageError(
            f"the messages hold {given:,} characters, more than the {sandbox.MAX_OUTPUT:,} a prompt may have "
            "(and far more than any model's context): shorten them"
        )
    try:
        return sandbox.render(
            _compile(template or FALLBACK_TEMPLATE),
            messages=list(messages),
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
            tools=list(tools) if tools is not None else None,
        )
    except (TemplateError, sandbox.TemplateLimitError):
        raise
    except JinjaError as exc:
        raise TemplateError(f"chat template failed to render: {exc}") from None
    except Exception as exc:
        # A template's own Python-level failure (`'text' + none`, `1 / 0`): everything in this render is the
        # template's doing, and a template that cannot render these messages refuses them (a 400, not a crash).
        raise TemplateError(f"chat template failed to render: {type(exc).__name__}: {exc}") from None
