"""OpenAI's log-probability objects, from the engine's `TokenLogprob`s.

Chat completions: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], "refusal": null}`.
Text completions (the legacy shape lm-evaluation-harness reads): `{"tokens", "token_logprobs", "top_logprobs",
"text_offset"}`, where `top_logprobs` maps token strings to log-probs and, as vLLM does, always holds the chosen
token too; with `echo` the prompt's tokens come first, the very first without a log-prob (null).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aipc.engine.events import TokenLogprob


class TokenNames:
    """Token ids -> their text and bytes, through the model (each id decoded once, by the model's cache)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def text(self, ident: int) -> str:
        return self.model.token_text(ident)

    def name(self, ident: int) -> str:
        """The token as `token` fields and `top_logprobs` keys name it: its text, or, for a token that holds part
        of a UTF-8 character (no text of its own), "bytes:" and its bytes escaped, as OpenAI names such tokens
        (two different partial tokens are then two different names)."""
        text = self.model.token_text(ident)
        if text and "\ufffd" not in text:
            return text
        raw = self.model.token_bytes(ident)
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw) if raw else text

    def bytes(self, ident: int) -> list[int]:
        return list(self.model.token_bytes(ident))


def chat_content(tokens: Sequence[TokenLogprob], names: TokenNames) -> list[dict[str, Any]]:
    """`choices[].logprobs.content` entries for `tokens`."""
    out = []
    for tok in tokens:
        entry = _chat_token(tok.id, tok.logprob, names)
        entry["top_logprobs"] = [_chat_token(i, lp, names) for i, lp in tok.top]
        out.append(entry)
    return out


def _chat_token(ident: int, logprob: float, names: TokenNames) -> dict[str, Any]:
    return {"token": names.name(ident), "logprob": logprob, "bytes": names.bytes(ident)}


class CompletionLogprobs:
    """The legacy `logprobs` object of one choice, built as tokens arrive; `offset` is where the next token's
    text starts in the choice's text."""

    def __init__(self, names: TokenNames) -> None:
        self.names = names
        self.offset = 0

    def prompt(self, tokens: Sequence[TokenLogprob | None], ids: Sequence[int]) -> dict[str, list]:
        """The echoed prompt's entries: `tokens[0]` is None (nothing predicts the first token)."""
        out = _empty()
        for ident, tok in zip(ids, tokens, strict=True):
            if tok is None:
                self._add(out, int(ident), None, None)
            else:
                self._add(out, tok.id, tok.logprob, self._top(tok))
        return out

    def generated(self, tokens: Sequence[TokenLogprob], text: str) -> dict[str, list]:
        """Entries for a delta's tokens, whose text is `text` (offsets then continue after it)."""
        start = self.offset
        out = _empty()
        for tok in tokens:
            self._add(out, tok.id, tok.logprob, self._top(tok))
        self.offset = start + len(text)
        return out

    def _top(self, tok: TokenLogprob) -> dict[str, float]:
        top = {}
        for i, lp in tok.top:
            top.setdefault(self.names.name(i), lp)
        top.setdefault(self.names.name(tok.id), tok.logprob)
        return top

    def _add(self, out: dict[str, list], ident: int, logprob: float | None, top: dict | None) -> None:
        text = self.names.text(ident)
        out["tokens"].append(self.names.name(ident))
        out["token_logprobs"].append(logprob)
        out["top_logprobs"].append(top)
        out["text_offset"].append(self.offset)
        self.offset += len(text)


def _empty() -> dict[str, list]:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def merge(parts: Sequence[dict[str, list]]) -> dict[str, list]:
    """One legacy `logprobs` object from the parts of one choice, in order."""
    out = _empty()
    for part in parts:
        for key, values in part.items():
            out[key].extend(values)
    return out
