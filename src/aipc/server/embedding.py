"""Embeddings for the dialects' routes (/v1/embeddings, /api/embed): the model from the pool, one of its slots,
`Model.embed` in a worker thread, and the shortening that `dimensions` asks for."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from starlette.concurrency import run_in_threadpool

from aipc.errors import AipcError
from aipc.server import core
from aipc.server.errors import APIError, to_api_error
from aipc.server.pool import _UNSET

MAX_EMBED_INPUTS = 2048  # texts per request, as OpenAI allows


async def embed(
    state: core.ServerState,
    request: Any,
    name: str | None,
    texts: list[Any],
    *,
    keep_alive: Any = _UNSET,
    truncate: bool,
) -> tuple[Any, str] | None:
    """`texts` embedded by the named model (`Model.embed`, in a worker thread): the `Embeddings` and the served
    model's name, or None when the client left. An embedding takes one of the model's slots, as a generation
    does (so --parallel and --max-queue bound it); a client that leaves stops it at its next text."""
    if len(texts) > MAX_EMBED_INPUTS:
        raise APIError(400, f"input has {len(texts)} items: at most {MAX_EMBED_INPUTS} are allowed", param="input")
    entry = await state.acquire(request, name, keep_alive)
    if entry is None:
        return None
    slot = await core.take_slot(state, request, entry)
    if slot is None:
        return None
    cancel = threading.Event()
    work = asyncio.ensure_future(run_in_threadpool(entry.model.embed, texts, truncate=truncate, cancel=cancel))
    try:
        result = await core.or_gone(request, asyncio.shield(work), on_gone=cancel.set)
    except AipcError as exc:
        raise to_api_error(exc, param="input") from None
    finally:
        if not work.done():
            cancel.set()
            await asyncio.wait([work])  # the thread lets go of the model before its slot is given back
        if work.done() and not work.cancelled():
            work.exception()  # retrieved: a client that left has no answer to take it
        slot.release()
        state.pool.release(entry)
    return None if result is None else (result, entry.name)


def shortened(vectors: list[list[float]], dimensions: int | None) -> list[list[float]]:
    """The first `dimensions` of each unit vector, scaled to unit length again (as OpenAI and Ollama shorten)."""
    if dimensions is None or not vectors or dimensions == len(vectors[0]):
        return vectors
    if dimensions > len(vectors[0]):
        message = f"dimensions is {dimensions}: this model's embeddings have {len(vectors[0])}"
        raise APIError(400, message, param="dimensions", code="invalid_value")
    from aipc.backends.embedding import unit

    return [unit(v[:dimensions]) for v in vectors]
