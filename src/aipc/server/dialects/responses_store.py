"""Stored responses, for the Responses API's `previous_response_id`, retrieval and deletion.

As OpenAI does by default (`store` true), each response is kept with the conversation that led to it, as input
items: the earlier responses' conversation, this request's input, and its output. A request that names a
`previous_response_id` continues that conversation (its own `instructions` and `tools` apply, not the earlier
ones', as OpenAI defines it). The store lives in the server's memory, bounded by count and size: the least
recently used responses are dropped first, and a dropped or unknown id is a 400 naming it, as OpenAI answers.
Requests are untrusted: ids are the server's own (a `resp_` prefix and 32 hex digits), never paths.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aipc.server.errors import APIError, json_bytes

MAX_RESPONSES = 512
MAX_BYTES = 64 << 20  # the stored JSON, all responses together


@dataclass
class Stored:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]  # this request's input, each with an id (GET .../input_items)
    conversation: list[dict[str, Any]]  # what a response that follows this one starts from
    size: int


class ResponseStore:
    def __init__(self, max_responses: int = MAX_RESPONSES, max_bytes: int = MAX_BYTES) -> None:
        self._kept: OrderedDict[str, Stored] = OrderedDict()
        self._max_responses = max_responses
        self._max_bytes = max_bytes
        self._bytes = 0

    def conversation(self, response_id: str) -> list[dict[str, Any]]:
        """The input items a request that continues `response_id` starts with."""
        stored = self._kept.get(response_id)
        if stored is None:
            raise APIError(
                400,
                f"Previous response with id {_shown(response_id)} not found: this server keeps the last "
                f"{self._max_responses} responses stored with store true, in memory, until it restarts",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        self._kept.move_to_end(response_id)
        return stored.conversation

    def keep(self, response: dict[str, Any], earlier: list[dict[str, Any]], input_items: list[dict[str, Any]]) -> None:
        """Keep a finished response: `earlier` is the conversation it continued, `input_items` its own input."""
        items = [_with_id(item) for item in input_items]
        conversation = [*earlier, *items, *response["output"]]
        size = len(json_bytes([response, items])) + len(json_bytes(conversation))
        if size > self._max_bytes:
            return
        self._kept[response["id"]] = Stored(response, items, conversation, size)
        self._bytes += size
        while len(self._kept) > self._max_responses or self._bytes > self._max_bytes:
            _, dropped = self._kept.popitem(last=False)
            self._bytes -= dropped.size

    def get(self, response_id: str) -> Stored:
        stored = self._kept.get(response_id)
        if stored is None:
            raise APIError(
                404, f"No response found with id {_shown(response_id)} (responses are kept in memory)", param=None
            )
        return stored

    def delete(self, response_id: str) -> None:
        stored = self.get(response_id)
        del self._kept[response_id]
        self._bytes -= stored.size


def _shown(response_id: str) -> str:
    """An id as an error names it: a request's, so at most 80 characters of it."""
    return repr(response_id if len(response_id) <= 80 else response_id[:80] + "...")


def input_items(text_or_items: str | list[Any]) -> list[dict[str, Any]]:
    """A request's `input` as a list of items (a string is one user message)."""
    if isinstance(text_or_items, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text_or_items}]}]
    return [dict(item) for item in text_or_items]


def _with_id(item: dict[str, Any]) -> dict[str, Any]:
    """An input item as GET .../input_items lists it: typed, with an id."""
    out = dict(item)
    if "type" not in out and "role" in out:
        out["type"] = "message"
    if isinstance(out.get("content"), str) and out.get("type") == "message":
        kind = "output_text" if out.get("role") == "assistant" else "input_text"
        out["content"] = [{"type": kind, "text": out["content"]}]
    out.setdefault("id", f"{_PREFIX.get(out.get('type'), 'item')}_{uuid.uuid4().hex}")
    return out


_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


def listing(items: list[dict[str, Any]], order: str, limit: int, after: str | None) -> dict[str, Any]:
    """GET .../input_items: a page of items, OpenAI's list shape (newest first unless order is asc)."""
    if order not in ("asc", "desc"):
        raise APIError(400, f"order must be 'asc' or 'desc', got {order!r}", param="order")
    if not 1 <= limit <= 100:
        raise APIError(400, f"limit must be an integer from 1 to 100, got {limit}", param="limit")
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise APIError(400, f"after: no item {after!r} in this response's input", param="after")
        start = ids.index(after) + 1
    page = ordered[start : start + limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": start + limit < len(ordered),
    }
