"""Prompt token ids in which only the chat template's own markup can be a control token.

Tokenizers turn control-token strings (`<|im_end|>`, `<|end|>`, `<|user|>`) into control tokens wherever they
appear in the text they are given. Rendering a chat and tokenizing the result would therefore let a user type
`<|im_end|>` and close their own turn, then open a fake system or assistant turn. Here message content never
produces one: every control-token string inside content is broken with a sentinel character before the
template renders, and the rendered prompt is tokenized piece by piece between sentinels, so the text on both
sides of a break is tokenized as plain text while the template's markup is tokenized as usual.

Content without such strings (nearly all of it) is rendered and tokenized in one piece, exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

# A Unicode noncharacter: it never occurs in interchanged text, and a template has no reason to write it.
SENTINEL = "\ufdd0"


def break_specials(text: str, specials: Iterable[str]) -> str:
    """`text` with a sentinel after the first character of every control-token string in it (and any sentinel
    it already held replaced, so only ours split the prompt)."""
    text = text.replace(SENTINEL, "\ufffd")
    for special in sorted(specials, key=len, reverse=True):
        if special in text:
            text = text.replace(special, special[0] + SENTINEL + special[1:])
    return text


def has_specials(text: str, specials: Iterable[str]) -> bool:
    return SENTINEL in text or any(s in text for s in specials)


def escape_messages(messages: Sequence[dict[str, Any]], specials: frozenset[str]) -> tuple[list[dict], bool]:
    """Messages whose content can no longer produce control tokens, and whether any needed it."""
    if not specials:
        return list(messages), False
    out, changed = [], False
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and has_specials(content, specials):
            message = {**message, "content": break_specials(content, specials)}
            changed = True
        out.append(message)
    return out, changed


def tokenize_pieces(text: str, tokenize: Callable[[str], list[int]]) -> list[int]:
    """Token ids of a rendered prompt, tokenized separately on each side of every sentinel."""
    return tokenize_continued(text.split(SENTINEL), tokenize)


def tokenize_continued(pieces: Sequence[str], tokenize: Callable[[str], list[int]]) -> list[int]:
    """Token ids of consecutive pieces of one text, each tokenized on its own.

    A piece that continues the text is tokenized behind a newline whose tokens are then dropped: SentencePiece
    tokenizers would otherwise prefix it with a word boundary (`▁`), as if it started a new text."""
    first, *rest = pieces
    ids = tokenize(first) if first else []
    lead = tokenize("\n") if rest else []
    for piece in rest:
        if not piece:
            continue
        led = tokenize("\n" + piece)
        ids.extend(led[len(lead) :] if led[: len(lead)] == lead else tokenize(piece))
    return ids


def split_long(text: str, size: int) -> list[str]:
    """`text` cut into pieces of about `size` characters, each cut just before a space that follows a non-space
    character and precedes one (a word boundary every tokenizer keeps), so pieces tokenize as the whole does."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = text.rfind(" ", start + size // 2, start + size)
        while cut > start and not (text[cut - 1].strip() and cut + 1 < len(text) and text[cut + 1].strip()):
            cut = text.rfind(" ", start + size // 2, cut)
        if cut <= start:
            break  # no word boundary in reach: leave the rest whole
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces
