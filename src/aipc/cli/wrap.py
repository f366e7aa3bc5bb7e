"""Word-wrapping a streamed answer for the terminal: lines break between words, never inside one.

Text arrives in pieces (tokens); a word is held until the space or newline after it shows where it ends, then
written on the current line if it fits, else on the next. A word wider than the terminal is cut at the width.
Inside a fenced code block (```), text is written as it comes: code is not reflowed. Only for a terminal: a
pipe gets the raw stream.
"""

from __future__ import annotations

import shutil
import unicodedata
from typing import TextIO


def terminal_width(default: int = 80) -> int:
    """Columns usable for text (re-read for each answer: the window may have been resized)."""
    return max(shutil.get_terminal_size((default, 24)).columns - 1, 20)


def display_width(text: str) -> int:
    """Columns `text` takes: wide East Asian characters take two, combining marks none."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


class WordWrap:
    """A writer that wraps at `width` columns; `flush()` writes the word still held at the end."""

    def __init__(self, out: TextIO, width: int) -> None:
        self.out = out
        self.width = width
        self.column = 0
        self.word = ""
        self.line = ""  # the current line's start, to spot code fences
        self.code = False

    def write(self, text: str) -> None:
        for ch in text:
            self._put(ch)
        self.out.flush()

    def flush(self) -> None:
        self._emit_word()
        self.out.flush()

    def _put(self, ch: str) -> None:
        if ch == "\n":
            self._emit_word()
            self.out.write("\n")
            self.column = 0
            if self.line.lstrip().startswith("```"):
                self.code = not self.code
            self.line = ""
            return
        if len(self.line) < 8:
            self.line += ch
        if self.code:
            self.out.write(ch)
            self.column += display_width(ch)
            return
        if ch in " \t":
            self._emit_word()
            if self.column + 1 > self.width:
                self.out.write("\n")  # the space becomes the line break
                self.column = 0
            elif self.column > 0 or not self.line.strip():
                self.out.write(ch)
                self.column += 1
            return
        self.word += ch

    def _emit_word(self) -> None:
        word, self.word = self.word, ""
        if not word:
            return
        width = display_width(word)
        if self.column > 0 and self.column + width > self.width:
            self.out.write("\n")
            self.column = 0
        while display_width(word) > self.width - self.column:  # a word longer than a line: cut it
            cut = _fit(word, self.width - self.column)
            self.out.write(word[:cut] + "\n")
            word = word[cut:]
            self.column = 0
        self.out.write(word)
        self.column += display_width(word)


def _fit(word: str, columns: int) -> int:
    """How many characters of `word` fit in `columns` (at least one, so a cut always advances)."""
    used = 0
    for i, ch in enumerate(word):
        used += display_width(ch)
        if used > columns:
            return max(i, 1)
    return len(word)
