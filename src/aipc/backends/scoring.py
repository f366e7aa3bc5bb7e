"""An optional backend capability: teacher-forced scoring, for measuring quality (`aipc eval`).

Kept apart from the core `Backend` Protocol: a backend that can score gives its opened model a `scorer()` method
returning a `Scorer`; one that cannot (a batching pipeline, the NPU's static pipeline) simply has none, and the
engine says which backends can. Each scorer runs the runtime's own graph and weights, so the numbers describe
what that runtime computes, not a re-implementation of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np


class Scorer(Protocol):
    """Next-token log-probabilities for every prefix of a token sequence, each call from an empty state."""

    def next_token_logprobs(self, token_ids: Sequence[int]) -> np.ndarray:
        """float32 [len(token_ids), vocab]: row i is the log-softmax of the logits after token_ids[: i + 1]."""
        ...


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, as float32 (runtimes return fp16 or fp32 logits)."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float32)
    x = x - x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


def check_ids(token_ids: Sequence[int]) -> list[int]:
    """Scoring needs at least one token; ids arrive from tokenizers as numpy ints, lists or tuples."""
    ids = [int(t) for t in token_ids]
    if not ids:
        from aipc.errors import UsageError

        raise UsageError("nothing to score: the token sequence is empty")
    return ids
