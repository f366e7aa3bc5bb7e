"""Text embeddings from an opened model (`Model.embed`): what Ollama's /api/embed and OpenAI's /v1/embeddings
return. Each text is tokenized as the model tokenizes prompts, cut to the context (or refused, with
`truncate=False`), embedded by the backend's `Embedder` (aipc.backends.embedding: the mean of the last hidden
state) and scaled to unit length, so that a dot product is the cosine similarity."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aipc.errors import AipcError, ContextLengthError, UsageError

# An embedding context needs no room for an answer; llama.cpp's is sized to the model's context, at most this.
MAX_EMBED_TOKENS = 8192


class CancelledError(AipcError):
    """The embedding's client left."""


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int  # every text's tokens, after any truncation
    truncated: int  # how many texts were cut to the context


class EmbedderCache:
    """The embedders of a model's backends, opened on first need and kept; one text at a time."""

    def __init__(self) -> None:
        self._open: dict[int, Any] = {}
        self.lock = threading.Lock()

    def of(self, backend: Any) -> Any:
        embedder = self._open.get(id(backend))
        if embedder is None:
            make = getattr(backend, "embedder", None)
            if make is None:
                from aipc.backends.registry import EMBEDDING

                raise UsageError(
                    f"the {backend.info.backend} backend cannot compute embeddings: load the model with one of "
                    f"{', '.join(EMBEDDING)} (--backend)"
                )
            embedder = self._open[id(backend)] = make()
        return embedder

    def close(self) -> None:
        with self.lock:  # after the text being embedded, if any
            self._close()

    def _close(self) -> None:
        for embedder in self._open.values():
            close = getattr(embedder, "close", None)
            if close is not None:
                close()
        self._open.clear()


def embed(
    backend: Any,
    cache: EmbedderCache,
    texts: Sequence[str | Sequence[int]],
    context: int | None,
    truncate: bool,
    check_ids: Any,
    cancel: threading.Event | None = None,
) -> Embeddings:
    """`texts`: strings, or token ids (checked by `check_ids` against the vocabulary); `cancel` stops between
    texts (a client that left)."""
    from aipc.backends.embedding import unit

    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise UsageError("input must be a list of strings or of token id lists")
    with cache.lock:
        embedder = cache.of(backend)
        limit = min(context or MAX_EMBED_TOKENS, getattr(embedder, "limit", MAX_EMBED_TOKENS), MAX_EMBED_TOKENS)
        vectors, total, cut = [], 0, 0
        for i, text in enumerate(texts):
            if cancel is not None and cancel.is_set():
                raise CancelledError("the embedding was cancelled")
            if isinstance(text, str):
                ids = backend.tokenize(text) if text else []
            elif isinstance(text, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in text):
                ids = check_ids(text)
            else:
                raise UsageError(f"input[{i}] must be a string or a list of token ids")
            if not ids:
                raise UsageError(f"input[{i}] is empty: there is nothing to embed")
            if len(ids) > limit:
                if not truncate:
                    raise ContextLengthError(
                        f"input[{i}] has {len(ids)} tokens, over the {limit} this model embeds at once "
                        "(send truncate: true to embed the start of it)",
                        limit=limit,
                        requested=len(ids),
                    )
                ids, cut = ids[:limit], cut + 1
            vectors.append(unit(embedder.embed(ids)))
            total += len(ids)
    return Embeddings(vectors, total, cut)
