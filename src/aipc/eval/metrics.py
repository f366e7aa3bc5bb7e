"""The measurements: teacher-forced windows over a token sequence, perplexity, KL(reference || model), agreement.

Every scored token is predicted from at least `size - stride` tokens of context (the first window's tokens from
what precedes them), each window from an empty KV cache, the way the standard sliding-window perplexity works.
Model and reference see exactly the same windows of exactly the same token ids, so their distributions compare
position by position.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aipc.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

    from aipc.backends.scoring import Scorer


@dataclass(frozen=True)
class Window:
    """Tokens [begin, end) are fed to the model; the targets first..end-1 are scored (first > begin)."""

    begin: int
    end: int
    first: int


def windows(n_tokens: int, size: int, stride: int) -> list[Window]:
    """Windows of `size` tokens every `stride` tokens, scoring each target once, until the sequence's end."""
    if size < 2:
        raise UsageError(f"the window must hold at least 2 tokens, got {size}")
    if not 1 <= stride <= size - 1:
        raise UsageError(f"the stride must be between 1 and the window size - 1 ({size - 1}), got {stride}")
    found: list[Window] = []
    scored = 0  # the last target scored; target 0 has no context and is never scored
    begin = 0
    while True:
        end = min(begin + size, n_tokens)
        first = max(scored + 1, begin + 1)
        if first < end:
            found.append(Window(begin, end, first))
            scored = end - 1
        if end >= n_tokens:
            return found
        begin += stride


@dataclass(frozen=True)
class Scores:
    """Sums over the scored targets; the properties turn them into the reported means."""

    tokens: int
    nll: float  # sum of -log p_model(target)
    vocab: int
    reference_nll: float | None = None
    kl: float | None = None  # sum over positions of KL(reference || model), nats
    kl_max: float | None = None
    agreements: int | None = None  # positions where both models' most likely next token is the same
    reference_vocab: int | None = None

    @property
    def perplexity(self) -> float:
        return _exp(self.nll / self.tokens)

    @property
    def reference_perplexity(self) -> float | None:
        return None if self.reference_nll is None else _exp(self.reference_nll / self.tokens)

    @property
    def kl_mean(self) -> float | None:
        return None if self.kl is None else self.kl / self.tokens

    @property
    def agreement(self) -> float | None:
        return None if self.agreements is None else self.agreements / self.tokens


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def score(
    ids: Sequence[int],
    scorer: Scorer,
    reference: Scorer | None = None,
    *,
    size: int = 512,
    stride: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Scores:
    """Score `ids` with `scorer` (and `reference`, on the same windows) in windows of `size` tokens.

    `stride` defaults to half the window. `progress(done, total)` is told after each window."""
    import numpy as np

    ids = [int(t) for t in ids]
    if len(ids) < 2:
        raise UsageError(f"scoring needs at least 2 tokens (one to predict from, one to predict), got {len(ids)}")
    plan = windows(len(ids), size, stride or max(1, size // 2))
    tokens = 0
    nll = ref_nll = kl = 0.0
    kl_max = 0.0
    agree = 0
    vocab = ref_vocab = 0
    for i, w in enumerate(plan):
        rows = slice(w.first - 1 - w.begin, w.end - 1 - w.begin)  # row r predicts token begin + r + 1
        targets = np.asarray(ids[w.first : w.end])
        window_ids = ids[w.begin : w.end]
        lp = _rows(scorer.next_token_logprobs(window_ids), len(window_ids), rows, "the model")
        vocab = lp.shape[1]
        nll += _nll(lp, targets, "the model")
        if reference is not None:
            lr = _rows(reference.next_token_logprobs(window_ids), len(window_ids), rows, "the reference")
            ref_vocab = lr.shape[1]
            ref_nll += _nll(lr, targets, "the reference")
            per_position = kl_divergence(lr, lp)
            kl += float(per_position.sum(dtype=np.float64))
            kl_max = max(kl_max, float(per_position.max()))
            agree += int((lr[:, : min(vocab, ref_vocab)].argmax(1) == lp[:, : min(vocab, ref_vocab)].argmax(1)).sum())
        tokens += len(targets)
        if progress is not None:
            progress(i + 1, len(plan))
    if reference is None:
        return Scores(tokens, nll, vocab)
    return Scores(tokens, nll, vocab, ref_nll, kl, kl_max, agree, ref_vocab)


def _rows(logprobs: np.ndarray, n: int, rows: slice, who: str) -> np.ndarray:
    if logprobs.ndim != 2 or logprobs.shape[0] != n:
        raise UsageError(f"{who} returned log-probs of shape {logprobs.shape} for {n} tokens; expected ({n}, vocab)")
    return logprobs[rows]


def _nll(logprobs: np.ndarray, targets: np.ndarray, who: str) -> float:
    import numpy as np

    if int(targets.max()) >= logprobs.shape[1]:
        raise UsageError(
            f"token id {int(targets.max())} is outside {who}'s vocabulary of {logprobs.shape[1]}: "
            "the two models do not share a tokenizer"
        )
    return -float(logprobs[np.arange(len(targets)), targets].sum(dtype=np.float64))


def kl_divergence(reference: np.ndarray, model: np.ndarray) -> np.ndarray:
    """KL(reference || model) per row, in nats, over the vocabulary both share.

    Vocabularies can differ by padding (a runtime rounds the embedding up to a multiple of 64, say); the shared
    leading ids are the real tokens, and each side is renormalized over them so both are distributions."""
    import numpy as np

    common = min(reference.shape[1], model.shape[1])
    a = _renormalized(reference, common)
    b = _renormalized(model, common)
    p = np.exp(a)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (a - b), 0.0)  # 0 * log(0 / q) is 0; p > 0 with q = 0 is inf, as it should be
    return np.maximum(terms.sum(axis=1, dtype=np.float64), 0.0)  # rounding can leave -1e-9 where they agree


def _renormalized(logprobs: np.ndarray, common: int) -> np.ndarray:
    import numpy as np

    if logprobs.shape[1] == common:
        return logprobs
    head = logprobs[:, :common]
    top = head.max(axis=1, keepdims=True)
    return head - (top + np.log(np.exp(head - top).sum(axis=1, keepdims=True)))
