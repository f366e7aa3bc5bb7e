"""Reading a request body as JSON, refusing what would break later layers: one function any API dialect calls.

JSON allows what Python and the runtimes cannot take, and both reached the code behind it as a 500:
- a lone surrogate (`"\\ud800"`) decodes to a Python str that no UTF-8 encoder (tokenizers, logs, the
  response) can encode;
- deep nesting: 5,000 levels fit in a few KB, and every recursive walker (the JSON decoder, pydantic, a
  schema compiler) overflows on it.
Both become a 400 naming the field, found by one iterative walk (no recursion) before pydantic sees the body.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aipc.server.errors import APIError

# Deeper than any OpenAI request needs (a JSON schema in response_format nests a few dozen at most), and far
# below the recursion limits of the decoder and of pydantic.
MAX_DEPTH = 64
_INLINE_BYTES = 64 << 10  # bodies this small are checked on the event loop (well under a millisecond)
_SURROGATE = re.compile("[\ud800-\udfff]")
# A surrogate can reach a decoded str only through a \uD800-\uDFFF escape (raw UTF-8 cannot encode one): a
# body without such an escape needs no string-by-string check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_json_body(request: Any) -> Any:
    """The request's body decoded as JSON, or an `APIError` 400 (not JSON, too deeply nested, a string that
    is not Unicode text)."""
    raw = await request.body()
    if len(raw) < _INLINE_BYTES:
        return parse_json_body(raw)
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(parse_json_body, raw)  # up to --max-body-bytes: off the event loop


def parse_json_body(raw: bytes) -> Any:
    """`read_json_body` for bytes already read."""
    _check_depth(raw)
    try:
        data = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:
        where = f": {exc}" if raw.strip() else ": the body is empty"
        raise APIError(400, f"the request body is not valid JSON{where}", code="invalid_json") from None
    strings = _SURROGATE_ESCAPE.search(raw) is not None
    if strings or raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:  # else `_check_depth` proved the depth
        check_json(data, strings=strings)
    return data


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _check_depth(raw: bytes) -> None:
    """Refuse nesting deeper than `MAX_DEPTH` before the (recursive) decoder runs, in C-speed passes: strings
    dropped, brackets kept, then the innermost pairs removed once per level."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(MAX_DEPTH):
        if not brackets:
            return
        inner = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if inner == brackets:  # "[}", "[[[": nested brackets always pair up, so this is not JSON
            raise APIError(
                400,
                "the request body is not valid JSON: its brackets do not pair up (or a string is not closed)",
                code="invalid_json",
            )
        brackets = inner
    if brackets:
        raise _too_deep()


def check_json(data: Any, *, strings: bool = True) -> None:
    """Refuse nesting deeper than `MAX_DEPTH` and (with `strings`) lone surrogates in any string, keys too,
    naming the field. An explicit stack, never recursion: the depth is what is being checked."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if strings:
                _check_text(value, path)
            continue
        if not isinstance(value, (dict, list)):
            continue
        if len(path) >= MAX_DEPTH:
            raise _too_deep(path)
        if isinstance(value, dict):
            for key, item in value.items():
                if strings:
                    _check_text(key, (*path, key))
                stack.append((item, (*path, key)))
        else:
            stack.extend((item, (*path, i)) for i, item in enumerate(value))


def _check_text(text: str, path: tuple[Any, ...]) -> None:
    found = _SURROGATE.search(text)
    if found is None:
        return
    param = field_name(path)
    code = f"\\u{ord(found.group()):04x}"
    raise APIError(
        400,
        f"Invalid value for '{param}': it holds a lone surrogate ({code}), which is not Unicode text; "
        "send UTF-8 text (in JSON, a surrogate escape must be one half of a pair)",
        param=param,
        code="invalid_value",
    )


def _too_deep(path: tuple[Any, ...] = ()) -> APIError:
    where = f" (at '{field_name(path)}')" if path else ""
    return APIError(
        400,
        f"the request body nests JSON more than {MAX_DEPTH} levels deep{where}; no request needs that many",
        code="invalid_json",
    )


def field_name(path: tuple[Any, ...]) -> str:
    """`("messages", 0, "content")` -> "messages[0].content", as OpenAI names a `param`. Keys are shown
    safely (a key that is itself the bad text appears escaped)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if part.isidentifier() else json.dumps(part)
            out += f".{name}" if out else name
    return out or "(the body)"
