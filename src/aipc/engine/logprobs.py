"""Log-probabilities of tokens, the same for every backend.

Backends that read their runtime's logits while generating (ONNX Runtime GenAI, llama.cpp) attach each token's
log-prob to the `TextDelta`s themselves (`reports_logprobs = True`). For the others (OpenVINO GenAI's pipeline
returns no per-token log-probs; PyTorch's generate streams text), the engine scores the generated tokens after the
runtime returns, teacher-forced through the backend's `Scorer` (the same one `aipc eval` uses, in fp32), and
re-splits the answer into one delta per token. Prompt log-probs (`echo`) always come from the scorer.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from aipc.engine.events import Finished, TextDelta, TokenLogprob

if TYPE_CHECKING:
    import numpy as np


def token_logprob(row: np.ndarray, chosen: int, k: int) -> TokenLogprob:
    """`chosen`'s log-prob in `row` (one position's log-softmax) and the `k` most likely tokens there."""
    import numpy as np

    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        k = min(k, row.shape[-1])
        best = np.argpartition(row, -k)[-k:]
        best = best[np.argsort(-row[best], kind="stable")]
        top = tuple((int(i), float(row[i])) for i in best)
    return TokenLogprob(int(chosen), float(row[chosen]), top)


def logprobs_from_logits(logits: np.ndarray, chosen: int, k: int) -> TokenLogprob:
    """The same from raw logits (a runtime's next-token logits), normalised here."""
    from aipc.backends.scoring import log_softmax

    return token_logprob(log_softmax(logits), chosen, k)


def prompt_logprobs(rows: np.ndarray, ids: Sequence[int], k: int) -> list[TokenLogprob | None]:
    """Each prompt token's log-prob given the tokens before it; the first has none (nothing predicts it).
    `rows` is the scorer's output for `ids`: row i is the distribution after ids[: i + 1]."""
    out: list[TokenLogprob | None] = [None]
    for i in range(1, len(ids)):
        out.append(token_logprob(rows[i - 1], int(ids[i]), k))
    return out


def scored_after(
    items: Iterator[TextDelta | Finished],
    prompt: Sequence[int],
    k: int,
    score: Callable[[list[int]], np.ndarray],
    detokenize: Callable[[Sequence[int]], str],
    stops: Sequence[str] = (),
    cancel: threading.Event | None = None,
) -> Iterator[TextDelta | Finished]:
    """A backend's stream with log-probs added once it has finished: the generated ids are scored after the
    prompt in one teacher-forced pass, and the answer is re-split into one delta per token (tokens that end
    inside a multi-byte character join the next; control tokens the runtime did not stream are left out). Each
    delta keeps the time its text was first produced, so timings stay the runtime's. Text the runtime streamed
    that no token accounts for (never expected) is passed on without log-probs. Once the text holds one of
    `stops`, `cancel` is set: the runtime stops at its next token rather than at the answer's end."""
    deltas: list[TextDelta] = []
    finished = None
    seen = ""
    longest = max((len(s) for s in stops), default=0)
    try:
        for item in items:
            if isinstance(item, Finished):
                finished = item
                break
            deltas.append(item)
            if stops and cancel is not None and not cancel.is_set():
                seen = seen[-longest:] + item.text
                if any(s in seen for s in stops):
                    cancel.set()
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
    ids = list(finished.token_ids) if finished is not None else []
    if not ids:
        yield from deltas
        if finished is not None:
            yield finished
        return
    rows = score([int(i) for i in prompt] + ids)
    n = len(prompt)
    tokens = [token_logprob(rows[n - 1 + i], ids[i], k) for i in range(len(ids))]
    text = "".join(d.text for d in deltas)
    ends, t = [], 0
    for d in deltas:
        t += len(d.text)
        ends.append((t, d.t))
    sent = 0
    last_streamed = False
    for piece, group in _pieces(ids, detokenize):
        last_streamed = bool(piece) and text.startswith(piece, sent)
        if not last_streamed:
            continue  # a control token (end of turn) whose string the runtime does not stream
        sent += len(piece)
        yield TextDelta(piece, _time_at(ends, sent, finished.t), tuple(tokens[i] for i in group))
    if sent < len(text):
        yield TextDelta(text[sent:], deltas[-1].t, ())
    if finished.finish_reason == "stop" and not last_streamed:  # it stopped at an end token
        finished = dataclasses.replace(finished, end_logprob=tokens[-1])
    yield finished


def _pieces(ids: list[int], detokenize: Callable[[Sequence[int]], str]) -> Iterator[tuple[str, list[int]]]:
    """(text, token indexes) per token: what decoding the token adds to the text before it."""
    before = ""
    group: list[int] = []
    for i in range(len(ids)):
        group.append(i)
        now = detokenize(ids[: i + 1])
        if now.endswith("\ufffd") and i + 1 < len(ids):
            continue  # an incomplete UTF-8 sequence: the next token completes it
        piece = now[len(before) :] if now.startswith(before) else ""
        if not piece and i + 1 < len(ids):
            continue  # a token that adds no text by itself goes with the next one
        yield piece, group
        before, group = now, []


def _time_at(ends: list[tuple[int, float]], offset: int, default: float) -> float:
    """When the runtime streamed the character just before `offset`."""
    for end, t in ends:
        if end >= offset:
            return t
    return default
