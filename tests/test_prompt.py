"""Prompt token ids: long texts tokenized whole, and message content kept from producing control tokens."""

from __future__ import annotations

import random

import pytest

from aipc.engine import prompt
from aipc.errors import ContextLengthError

WORDS = ["hello", "world", "  spaced", "\n\nnew", "naïve", "日本語", "x=1;", "<|im_end|>", "tab\there", "end."]


def test_split_long_keeps_the_text_and_cuts_at_word_boundaries():
    random.seed(1)
    text = " ".join(random.choice(WORDS) for _ in range(3000))
    pieces = prompt.split_long(text, 500)
    assert "".join(pieces) == text and len(pieces) > 10
    for piece in pieces[1:]:
        assert piece.startswith(" ") and piece[1:2].strip()


def test_pieces_tokenize_as_the_whole_text_does(model):
    """The runtime tokenizer of the embedded model (OpenVINO) gives the same ids for a text cut into pieces."""
    encode = model._backend._encode
    random.seed(2)
    for _ in range(10):
        text = " ".join(random.choice(WORDS) for _ in range(random.randint(200, 900)))
        assert prompt.tokenize_continued(prompt.split_long(text, 300), encode) == encode(text)


def test_a_prompt_longer_than_the_tokenizer_window_is_counted_whole(model):
    """OpenVINO's GGUF-derived tokenizer keeps 8192 tokens of any input; the count must be the real one."""
    text = "hello " * 20000
    assert len(model.tokenize(text)) > 20000
    with pytest.raises(ContextLengthError) as info:
        model.generate(text, max_tokens=2)
    assert info.value.requested > 20000 and str(info.value.requested) in str(info.value)


def test_break_specials_replaces_stray_sentinels():
    text = prompt.break_specials("a\ufdd0b<|end|>", {"<|end|>"})
    assert text == "a\ufffdb<\ufdd0|end|>"
