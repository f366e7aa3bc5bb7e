"""Tool calls out of generated text, as it streams.

`ToolCallParser` is fed text deltas and yields `ContentDelta`s as soon as text cannot be the start of call
markup (it holds back only a possible prefix of an opener, as a stop-string matcher does, and whitespace
that may turn out to sit next to a call), and `ToolCallDelta`s in OpenAI's streaming shape.

A call is reported once its markup is complete and valid: first a delta with index, id, type and name (and
empty arguments, as OpenAI sends it), then one delta with the whole arguments string. Waiting costs only the
call's own length, and buys two things: arguments are re-serialised compactly from the parsed value, and a
call that turns out malformed (or names an unknown tool) can still fall back to content, which it could not
once its name had been sent. `in_call` says when an opener has been seen, for the engine's lazy constraint.

Markup never reaches content, whitespace around calls is dropped, and a text without calls comes out exactly
as it went in.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aipc.engine.tools.constraints import CallGrammar
from aipc.engine.tools.formats import Opener, ToolFormat
from aipc.engine.tools.request import ToolRequest, new_call_id

_NO, _PARTIAL, _FULL = 0, 1, 2
_LITERAL_LIMIT = 20_000  # characters of a Python-literal call body worth trying (ast is slow on huge input)


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a call in OpenAI's streaming shape (`choices[].delta.tool_calls[]`)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        function: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
        if self.name is not None:
            function["name"] = self.name
        function["arguments"] = self.arguments
        out["function"] = function
        return out


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as a string

    def openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ParsedOutput:
    content: str
    calls: tuple[ToolCall, ...]

    def finish_reason(self, reason: str) -> str:
        return finish_reason(reason, bool(self.calls))


def finish_reason(reason: str, called: bool) -> str:
    """OpenAI's finish reason: "tool_calls" when a turn that ended normally made calls; "length" and
    "cancelled" stay what they are (the turn did not end as the model meant)."""
    return "tool_calls" if called and reason == "stop" else reason


def _match(opener: Opener, text: str, i: int) -> tuple[int, int, list[int]]:
    """Whether `opener` starts at `text[i]`: (_FULL, end, piece starts), (_PARTIAL, ...) when the text ends
    inside it, or (_NO, ...)."""
    j, starts = i, []
    for k, piece in enumerate(opener.pieces):
        if k:
            while j < len(text) and text[j].isspace():
                j += 1
        if j >= len(text):
            return _PARTIAL, j, starts
        starts.append(j)
        n = min(len(piece), len(text) - j)
        if text[j : j + n] != piece[:n]:
            return _NO, j, starts
        if n < len(piece):
            return _PARTIAL, j + n, starts
        j += len(piece)
    return _FULL, j, starts


class _JsonEnd:
    """Finds where a JSON object or array that starts at a given index ends, fed incrementally."""

    def __init__(self, start: int) -> None:
        self.pos = start
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def scan(self, text: str) -> int | None:
        for j in range(self.pos, len(text)):
            ch = text[j]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    self.pos = j + 1
                    return j + 1
        self.pos = len(text)
        return None


class _OpenCall:
    def __init__(self, opener: Opener, raw: str, body_start: int, ws_before: str, at: int) -> None:
        self.opener = opener
        self.raw = raw  # the markup so far, from the opener's first character
        self.body_start = body_start
        self.ws_before = ws_before  # whitespace before the opener: dropped with a call, kept with content
        self.at = at
        self.json = _JsonEnd(body_start) if opener.json_at is not None else None
        self.json_end: int | None = None  # where the JSON value ended, while looking for an optional closer
        self.searched = body_start


class ToolCallParser:
    """A streaming parser of one assistant turn in format `fmt`.

    names: the tool names a call may use (None: any); parallel: False keeps only the first call; invalid:
    what happens to markup that does not parse or names an unknown tool: "content" (its text is left as
    content, so nothing the model wrote is lost) or "drop"; prefilled: the text the engine wrote after the
    generation prompt (a call's opener, for `required` and named calls), which the parser reads first;
    closing: the text that closes that call (`CallGrammar.end`), added at the end when the output stopped
    inside the call, as a constrained generation does when its grammar ends with the JSON."""

    def __init__(
        self,
        fmt: ToolFormat,
        *,
        names: Iterable[str] | None = None,
        parallel: bool = True,
        invalid: str = "content",
        prefilled: str = "",
        closing: str = "",
    ) -> None:
        if invalid not in ("content", "drop"):
            raise ValueError(f"invalid must be 'content' or 'drop', not {invalid!r}")
        self.openers = fmt.openers
        self._firsts = frozenset(o.pieces[0][0] for o in self.openers)
        self.names = frozenset(names) if names is not None else None
        self.parallel = parallel
        self.invalid = invalid
        self.calls: list[ToolCall] = []
        self.dropped = 0  # calls beyond the first when parallel calls are off
        self.rejected: list[str] = []  # the text of markup that did not become calls
        self._content: list[str] = []
        self._text = ""  # text outside calls not yet emitted
        self._base = -len(prefilled)  # offset of `_text[0]` in the generated text
        self._ws = ""  # whitespace held back at the end of emitted content
        self._after_call = False  # drop whitespace that follows a call
        self._call: _OpenCall | None = None
        self._done = False
        self._closing = closing
        if prefilled:
            self.feed(prefilled)  # an opener: it yields nothing, and leaves the parser inside the call

    @classmethod
    def for_request(
        cls, request: ToolRequest, fmt: ToolFormat, grammar: CallGrammar | None = None, **options: Any
    ) -> ToolCallParser:
        """A parser for one request: its allowed names and parallel setting, and the prefilled opener when
        `grammar` forces the call."""
        forced = grammar is not None and grammar.forced
        return cls(
            fmt,
            names=request.names,
            parallel=request.parallel,
            prefilled=grammar.begin if forced else "",
            closing=grammar.end if forced else "",
            **options,
        )

    # --- what the engine reads ----------------------------------------------------------------------------
    @property
    def in_call(self) -> bool:
        """An opener has been seen and its call is not complete: from here the engine may constrain."""
        return self._call is not None

    @property
    def opened_at(self) -> int | None:
        """Offset in the generated text where the open call's markup starts (negative when it starts in the
        prefilled text, which comes before the generated text)."""
        return self._call.at if self._call is not None else None

    @property
    def content(self) -> str:
        return "".join(self._content)

    def result(self) -> ParsedOutput:
        return ParsedOutput(self.content, tuple(self.calls))

    # --- feeding ------------------------------------------------------------------------------------------
    def feed(self, text: str) -> list[ContentDelta | ToolCallDelta]:
        if self._done:
            raise RuntimeError("the parser has finished")
        out: list[ContentDelta | ToolCallDelta] = []
        if self._call is not None:
            self._call.raw += text
        else:
            self._text += text
        self._run(out, final=False)
        return out

    def finish(self, truncated: bool = False) -> list[ContentDelta | ToolCallDelta]:
        """The rest, once generation has ended: an unclosed call is parsed as far as it goes. `truncated`: the
        generation was cut short (a token limit, a cancel), so an unclosed call is unfinished: the calls complete
        within it are kept and the rest of its markup is dropped (never content)."""
        out: list[ContentDelta | ToolCallDelta] = []
        if self._call is not None and truncated:
            self._salvage(out)
        elif self._call is not None and self._closing:
            self._call.raw += self._closing
            self._run(out, final=False)
        self._run(out, final=True)
        if self._ws and not self.calls:
            self._emit_raw(out, self._ws)
        self._ws = ""
        self._done = True
        return out

    def _run(self, out: list, final: bool) -> None:
        while True:
            if self._call is not None:
                if not self._advance_call(out, final):
                    return
            elif not self._scan(out, final):
                return

    def _scan(self, out: list, final: bool) -> bool:
        """Content up to the next opener; True when a call was opened (there may be more to do)."""
        text = self._text
        for i, ch in enumerate(text):
            if ch not in self._firsts:
                continue
            best = None
            partial = False
            for opener in self.openers:
                status, end, starts = _match(opener, text, i)
                if status == _FULL and best is None:
                    best = (opener, end, starts)
                elif status == _PARTIAL and not final:
                    partial = True
            if best is not None:
                opener, end, starts = best
                self._emit_content(out, text[:i])
                ws_before, self._ws = self._ws, ""
                body = starts[opener.json_at] - i if opener.json_at is not None else end - i
                self._call = _OpenCall(opener, text[i:], body, ws_before, self._base + i)
                self._text = ""
                self._base += len(text)
                return True
            if partial:
                self._emit_content(out, text[:i])
                self._text = text[i:]
                self._base += i
                return False
        self._emit_content(out, text)
        self._base += len(text)
        self._text = ""
        return False

    def _advance_call(self, out: list, final: bool) -> bool:
        """Progress on the open call; True when it closed (and the text after it is pending)."""
        call = self._call
        assert call is not None
        raw = call.raw
        if call.json is not None:
            if call.json_end is None:
                call.json_end = call.json.scan(raw)
                if call.json_end is None:
                    if final:
                        self._reject(out, call, raw)
                        return True
                    return False
            end = call.json_end
            closer = call.opener.closer
            if closer:
                rest = raw[end:]
                stripped = rest.lstrip()
                if stripped.startswith(closer):
                    end = len(raw) - len(stripped) + len(closer)
                elif not final and closer.startswith(stripped):
                    return False  # the closer may still come
            self._close(out, call, raw[call.body_start : call.json_end], raw[:end], raw[end:], tagged=False)
            return True
        closer = call.opener.closer
        found = raw.find(closer, max(call.body_start, call.searched - len(closer) + 1))
        if found >= 0:
            self._close(out, call, raw[call.body_start : found], raw[: found + len(closer)], raw[found + len(closer) :])
            return True
        call.searched = len(raw)
        if not final:
            return False
        # No closing tag before the end: keep what parses, the rest is text again.
        values, used = _decode_prefix(raw[call.body_start :])
        if values is None:
            self._reject(out, call, raw)
            return True
        cut = call.body_start + used
        self._close(out, call, raw[call.body_start : cut], raw[:cut], raw[cut:])
        return True

    def _close(self, out: list, call: _OpenCall, body: str, consumed: str, rest: str, tagged: bool = True) -> None:
        self._call = None
        self._text = rest
        self._base = call.at + len(consumed)
        parsed = _calls_in(body, tagged)
        if parsed is None or not self._accept(out, parsed):
            self._reject(out, call, consumed, rest)
            return
        # The whitespace before the call separates the text around it, if text follows (and preceded).
        self._ws = call.ws_before if self._content else ""
        self._after_call = True

    def _salvage(self, out: list) -> None:
        """The open call was cut off: keep the calls complete in it, drop the rest."""
        call = self._call
        assert call is not None
        self._call, self._text = None, ""
        complete, used = _complete_calls(call.raw[call.body_start :])
        if complete is None or not self._accept(out, complete):
            used = 0
        self.rejected.append(call.raw[call.body_start + used :])
        self._ws = ""

    def _accept(self, out: list, parsed: list[tuple[str, str]]) -> bool:
        """Report `parsed` calls; False (nothing reported) when one names a tool the request does not have."""
        if self.names is not None and any(name not in self.names for name, _ in parsed):
            return False
        for name, arguments in parsed:
            if not self.parallel and self.calls:
                self.dropped += 1
                continue
            index = len(self.calls)
            self.calls.append(ToolCall(new_call_id(), name, arguments))
            out.append(ToolCallDelta(index, self.calls[-1].id, name, ""))
            out.append(ToolCallDelta(index, arguments=arguments))
        return True

    def _reject(self, out: list, call: _OpenCall, consumed: str, rest: str = "") -> None:
        self._call = None
        self._text = rest
        self._base = call.at + len(consumed)
        self.rejected.append(consumed)
        if self.invalid == "content":
            self._emit_content(out, call.ws_before + consumed)

    # --- content ------------------------------------------------------------------------------------------
    def _emit_content(self, out: list, text: str) -> None:
        """Emit `text`, holding back trailing whitespace (it may precede a call) and dropping whitespace
        right after a call."""
        if not text:
            return
        if self._after_call:
            text = text.lstrip()
            if not text:
                return
            self._after_call = False
        body = text.rstrip()
        if body:
            self._emit_raw(out, self._ws + body)
            self._ws = text[len(body) :]
        else:
            self._ws += text

    def _emit_raw(self, out: list, text: str) -> None:
        self._content.append(text)
        out.append(ContentDelta(text))


def _decode_prefix(body: str) -> tuple[list[Any] | None, int]:
    """JSON values at the start of `body` (separated by whitespace or commas), and how far they reach."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    j = used = 0
    while True:
        while j < len(body) and (body[j].isspace() or (body[j] == "," and values)):
            j += 1
        if j >= len(body):
            break
        try:
            value, j = decoder.raw_decode(body, j)
        except (ValueError, RecursionError):
            break
        values.append(value)
        used = j
    return (values or None), used


def _complete_calls(body: str) -> tuple[list[tuple[str, str]] | None, int]:
    """The calls complete in a call body cut off mid-way, and where the last of them ends: the longest prefix
    that ends with a whole call (a top-level value, or an object in a top-level array or in the array of a
    top-level object such as {"tool_calls": [...]}) and parses as calls once its open brackets are closed. A
    cut inside a call's arguments never counts: its call object is not yet closed."""
    stack: list[str] = []
    in_string = escaped = False
    best: tuple[list[tuple[str, str]] | None, int] = (None, 0)
    for j, ch in enumerate(body):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]":
            if not stack or stack.pop() != ("{" if ch == "}" else "["):
                break
            if ch == "}" and stack in ([], ["["], ["{", "["]):
                candidate = body[: j + 1] + "".join("}" if c == "{" else "]" for c in reversed(stack))
                calls = _calls_in(candidate, tagged=False)
                if calls:
                    best = (calls, j + 1)
    return best


def _calls_in(body: str, tagged: bool) -> list[tuple[str, str]] | None:
    """(name, arguments JSON) of each call in a markup body, or None when it is not entirely calls."""
    stripped = body.strip()
    values, used = _decode_prefix(stripped)
    if values is None or used != len(stripped):
        values = None
        if tagged and stripped[:1] in "{[" and len(stripped) <= _LITERAL_LIMIT:
            # Hermes-Function-Calling's README shows calls written as Python dicts ({'name': ...}).
            try:
                literal = ast.literal_eval(stripped)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                return None
            values = list(literal) if isinstance(literal, tuple) else [literal]
    if values is None:
        return None
    calls = []
    for value in values:
        items = _items(value)
        if not items:
            return None
        for item in items:
            call = _call(item)
            if call is None:
                return None
            calls.append(call)
    return calls


def _items(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        if set(value) == {"tool_calls"}:
            return value["tool_calls"] if isinstance(value["tool_calls"], list) else None
        if set(value) == {"tool_call"}:
            return [value["tool_call"]]
        return [value]
    return None


def _call(item: Any) -> tuple[str, str] | None:
    """A call object in any of the spellings models use: {name, arguments}, {name, parameters} (Llama 3,
    vLLM's Phi-4-mini parser), or OpenAI's {type, function: {name, arguments}} echoed back."""
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str) or not name or "description" in item:
        return None  # a tool's definition echoed back is not a call
    if set(item) - {"name", "arguments", "parameters", "id", "type"}:
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except (ValueError, RecursionError):
            return None
        return (name, arguments) if isinstance(decoded, dict) else None
    if not isinstance(arguments, dict):
        return None
    return name, json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def parse(text: str, fmt: ToolFormat, **options: Any) -> ParsedOutput:
    """A whole assistant turn's content and calls (the streaming parser run over it at once, so both agree)."""
    parser = ToolCallParser(fmt, **options)
    parser.feed(text)
    parser.finish()
    return parser.result()
