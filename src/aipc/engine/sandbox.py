"""A Jinja2 sandbox bounded in time and size, for chat templates that come from model files.

Jinja2's immutable sandbox stops templates from reaching Python internals or mutating their inputs, but not from
spending CPU or memory: `range(100000)` nested twice runs for hours, `'x' * 4000000000` allocates 4 GB. Three
guards bound a render:

- time: while a template renders, a trace function watches the template's own frames (Jinja compiles templates
  to Python code named `<template>`) and stops the render past `MAX_RENDER_SECONDS`, even in a loop with an
  empty body;
- size: operators and calls that build strings or lists (`*`, `+`, `**`, `%`, methods such as `center`, `join`,
  `replace`, and every filter) are checked before they run, from their operands' sizes, and the values a
  template reads are checked after, so nothing grows past `MAX_VALUE` items;
- output: the rendered text may not exceed `MAX_OUTPUT` characters.

Each guard fails with `TemplateLimitError`, a one-line `UsageError` naming the template as the problem.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
from typing import Any

from aipc.errors import UsageError

MAX_RENDER_SECONDS = 2.0
MAX_VALUE = 4_000_000  # characters of a string, items of a list
MAX_OUTPUT = 4_000_000  # characters of the rendered prompt
MAX_SOURCE = 1_000_000  # characters of a template's source
_WIDE_FORMAT = re.compile(r"\d{7,}")  # a format width of a million or more


class TemplateLimitError(UsageError):
    """A chat template went past a render limit (time, memory or output size)."""


def _refuse(what: str) -> None:
    raise TemplateLimitError(f"the model's chat template {what}; it is refused as unsafe (a broken or hostile file)")


class _Budget(threading.local):
    deadline: float = 0.0


_budget = _Budget()


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict, set)) else 0


def _checked(value: Any) -> Any:
    if _size(value) > MAX_VALUE:
        _refuse(f"built a value of {_size(value):,} items (the limit is {MAX_VALUE:,})")
    return value


def _check_args(args: tuple, kwargs: dict) -> None:
    """Integer arguments that would size an output (widths, counts) must stay within the value limit."""
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_VALUE:
            _refuse(f"asked for a size of {arg:,} (the limit is {MAX_VALUE:,})")
        if isinstance(arg, str) and "{" in arg and _WIDE_FORMAT.search(arg):
            _refuse("asked for a field a million characters wide")


def _estimate_call(obj: Any, args: tuple) -> int:
    """An upper bound on the size of what a string method or join returns, before it runs."""
    name = getattr(obj, "__name__", "")
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, str):
        if name == "replace" and len(args) >= 2 and isinstance(args[1], str):
            return len(owner) + (len(owner) + 1) * len(args[1])
        if name == "join" and isinstance(args[0] if args else None, (list, tuple)):
            items = args[0]
            return len(owner) * len(items) + sum(_size(i) for i in items)
    return 0


def _tick() -> None:
    if _budget.deadline and time.monotonic() > _budget.deadline:
        _refuse(f"took more than {MAX_RENDER_SECONDS:g} s to render")


def _estimate_filter(name: str, args: tuple, kwargs: dict) -> int:
    """An upper bound on what `join` and `replace` build (the filters whose output outgrows their input)."""
    if name == "do_join" and len(args) >= 2 and hasattr(args[1], "__len__"):
        sep = args[2] if len(args) > 2 else kwargs.get("d", "")
        items = args[1] if isinstance(args[1], (list, tuple)) else ()
        return _size(sep) * len(args[1]) + sum(_size(i) for i in items)
    if name == "do_replace" and len(args) >= 4 and isinstance(args[1], str) and isinstance(args[3], str):
        return len(args[1]) + (len(args[1]) + 1) * len(args[3])
    return 0


def _guard_filter(func):
    """A filter wrapped in the same checks as calls; Jinja's pass_context markers are kept."""

    @functools.wraps(func)
    def guarded(*args, **kwargs):
        _tick()
        _check_args(args[1:], kwargs)
        if _estimate_filter(func.__name__, args, kwargs) > MAX_VALUE:
            _refuse(f"would build a string of more than {MAX_VALUE:,} characters")
        return _checked(func(*args, **kwargs))

    return guarded


def bounded_environment(**options: Any):
    """An `ImmutableSandboxedEnvironment` with the guards above (trace-based time limit: see `render`)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        # Intercepting these also keeps Jinja from folding them at compile time ('x' * 4e9 while parsing).
        intercepted_binops = frozenset(["*", "**", "+", "%", "//"])

        def call_binop(self, context, operator, left, right):
            _tick()
            if operator == "*":
                n = right if isinstance(right, int) else left if isinstance(left, int) else 1
                if isinstance(n, int) and max(_size(left), _size(right), 1) * abs(n) > MAX_VALUE:
                    _refuse(f"multiplied a value to more than {MAX_VALUE:,} items")
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                if right > 0 and left.bit_length() * right > 1 << 16:
                    _refuse("raised a number to a huge power")
            elif operator == "+" and _size(left) + _size(right) > MAX_VALUE:
                _refuse(f"joined values to more than {MAX_VALUE:,} items")
            elif operator == "%" and isinstance(left, str) and _WIDE_FORMAT.search(left):
                _refuse("asked for a field a million characters wide")
            return _checked(super().call_binop(context, operator, left, right))

        def call(__self, __context, __obj, *args, **kwargs):  # Jinja's own signature
            _tick()
            _check_args(args, kwargs)
            if _estimate_call(__obj, args) > MAX_VALUE:
                _refuse(f"would build a string of more than {MAX_VALUE:,} characters")
            return _checked(super().call(__context, __obj, *args, **kwargs))

        def getattr(self, obj, attribute):
            _tick()
            if isinstance(obj, str) and attribute in ("format", "format_map") and _WIDE_FORMAT.search(obj):
                _refuse("asked for a field a million characters wide")
            return _checked(super().getattr(obj, attribute))

        def getitem(self, obj, argument):
            _tick()
            return _checked(super().getitem(obj, argument))

    env = BoundedSandbox(**options)
    env.filters = {name: _guard_filter(f) for name, f in env.filters.items()}
    return env


def compile_template(env, source: str):
    if len(source) > MAX_SOURCE:
        _refuse(f"is {len(source):,} characters long (the limit is {MAX_SOURCE:,})")
    return env.from_string(source)


def render(compiled, **variables: Any) -> str:
    """Render within the time and output limits."""
    previous = sys.gettrace()
    _budget.deadline = time.monotonic() + MAX_RENDER_SECONDS

    def watch_line(frame, event, arg):
        if event == "line":
            _tick()
        return watch_line

    def watch(frame, event, arg):
        # Only the template's own frames are traced line by line: the rest of the render runs untraced.
        return watch_line if frame.f_code.co_filename == "<template>" else None

    out: list[str] = []
    total = 0
    sys.settrace(watch)
    try:
        for chunk in compiled.generate(**variables):
            total += len(chunk)
            if total > MAX_OUTPUT:
                _refuse(f"rendered more than {MAX_OUTPUT:,} characters")
            out.append(chunk)
    except RecursionError:
        _refuse("recursed too deeply")
    except MemoryError:
        _refuse("ran out of memory")
    finally:
        sys.settrace(previous)
        _budget.deadline = 0.0
    return "".join(out)
