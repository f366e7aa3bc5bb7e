"""Sizes as people read them, one way everywhere (decimal units, as Ollama and `ls -h --si` show them)."""

from __future__ import annotations


def size_text(n: float) -> str:
    """`1234567` -> `1.2 MB`."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
