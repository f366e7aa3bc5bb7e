"""aipc's sampling, for runtimes whose built-in sampler means something else.

`GenerationConfig` defines one sampling for every backend: the repetition penalty over the distinct tokens of
the whole sequence (prompt and answer so far; CTRL's rule: positive logits divided by it, negative ones
multiplied), then temperature, top_k, top_p, min_p, then a draw; OpenAI's presence and frequency penalties and
logit_bias, where a request sets them, shape the logits before all that. transformers, OpenVINO GenAI and ONNX
Runtime GenAI sample that way themselves. llama-cpp-python's `Llama.generate` does not: its penalty sees only
the last 64 generated tokens (never the prompt) and its chain applies top_k/top_p before the temperature. The
llama.cpp backend samples here instead, from the logits llama.cpp computes: numpy over one vocabulary row per
token, a fraction of a millisecond next to a decode step.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from aipc.engine.config import GenerationConfig


class Sampler:
    """Picks each next token from a logits row, remembering every token of the sequence for the penalty."""

    def __init__(self, config: GenerationConfig, prompt: Iterable[int], vocab_size: int) -> None:
        self._greedy = config.greedy
        self._temperature = float(config.temperature)
        self._top_k = int(config.top_k)
        self._top_p = float(config.top_p)
        self._min_p = float(config.min_p)
        self._penalty = float(config.repetition_penalty)
        self._seen = np.zeros(vocab_size, dtype=bool)
        ids = np.fromiter((int(t) for t in prompt), dtype=np.int64)
        self._seen[ids[(ids >= 0) & (ids < vocab_size)]] = True
        # OpenAI's presence and frequency penalties (over the generated tokens) and logit_bias, applied first.
        self._presence = float(config.presence_penalty or 0.0)
        self._frequency = float(config.frequency_penalty or 0.0)
        self._bias = (
            np.asarray([i for i, _ in config.logit_bias], dtype=np.int64),
            np.asarray([b for _, b in config.logit_bias], dtype=np.float32),
        )
        self._shaping = bool(self._presence or self._frequency or len(self._bias[0]))
        self._produced: list[int] = []
        # A seed gives the same draws every time; without one, fresh entropy.
        self._rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> int:
        token = self.pick(self.penalized(logits))
        self.accept(token)
        return token

    def pick(self, x: np.ndarray) -> int:
        """The token drawn from penalized logits (see `penalized`), not yet counted into the sequence."""
        return int(np.argmax(x)) if self._greedy else self._draw(x)

    def penalized(self, logits: np.ndarray) -> np.ndarray:
        """The logits after OpenAI's shaping and the repetition penalty: what temperature, top_k and top_p see."""
        x = np.array(logits, dtype=np.float32, copy=True)
        if self._shaping:
            x = shaped(x, self._produced, self._presence, self._frequency, self._bias)
        return self._repeat_penalized(x)

    def prepared(self, logits: np.ndarray) -> np.ndarray:
        """For a runtime that applies the repetition penalty and temperature itself, and has no min_p: the logits
        with OpenAI's shaping applied and, when min_p is set, every token but the draw's candidates (top_k, top_p
        and min_p, judged as `pick` judges them, after the penalty) at -inf, which the penalty leaves there. The
        runtime then samples with top_k and top_p off: its own top_p would be taken over the min_p survivors,
        renormalised, where aipc's (OpenVINO's, transformers') is taken before min_p."""
        x = np.array(logits, dtype=np.float32, copy=True)
        if self._shaping:
            x = shaped(x, self._produced, self._presence, self._frequency, self._bias)
        if self._min_p > 0 and not self._greedy:
            order, _ = self._candidates(self._repeat_penalized(x.copy()))
            drop = np.ones(x.size, dtype=bool)
            drop[order] = False
            x[drop] = -np.inf
        return x

    def _repeat_penalized(self, x: np.ndarray) -> np.ndarray:
        if self._penalty != 1.0:
            seen = x[self._seen]
            x[self._seen] = np.where(seen < 0, seen * self._penalty, seen / self._penalty)
        return x

    def accept(self, token: int) -> None:
        """Counts a drawn token into the sequence."""
        if 0 <= token < self._seen.size:
            self._seen[token] = True
        self._produced.append(token)

    def pick_known(self, x: np.ndarray, known: np.ndarray, checked: np.ndarray) -> int | None:
        """The token `pick` would draw from `x` with all but the allowed tokens at -inf, knowing which of the
        `checked` tokens, the most likely ones, are allowed (`known`), and nothing of the rest; None when that does
        not settle the draw. Greedy: the best known one. Sampling: settled when the known ones hold the top_k
        candidates, or when the top_p nucleus is the same whatever mass the unchecked tokens could add (up to
        rounding in the final normalisation)."""
        if known.size == 0 or (self._min_p > 0 and not self._greedy):
            return None  # min_p's threshold needs the most likely allowed token, which may be unchecked
        if self._greedy:
            return int(known[np.argmax(x[known])])
        k = self._top_k if 0 < self._top_k < x.size else 0
        order = known[np.argsort(-(x[known] / self._temperature), kind="stable")]
        if k and order.size >= k:
            order, unknown = order[:k], 0
        elif self._top_p >= 1.0 and checked.size < x.size:
            return None  # every unknown allowed token would be a candidate
        else:
            unknown = checked.size < x.size
        z = (x[order] / self._temperature).astype(np.float64)
        probs = np.exp(z - z[0])
        total = probs.sum()
        keep = probs.size
        if self._top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs / total), self._top_p)) + 1
            if unknown:
                most = total + self._unchecked_mass(x, checked, k - order.size if k else 0, z[0])
                if keep > probs.size or int(np.searchsorted(np.cumsum(probs / most), self._top_p)) + 1 != keep:
                    return None
        probs = probs / total
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[self._rng.choice(order.size, p=probs)])

    def _unchecked_mass(self, x: np.ndarray, checked: np.ndarray, n: int, top: float) -> float:
        """An upper bound on the unnormalised probability the unchecked tokens could add (relative to `top`, the
        best known one's scaled logit): the n most likely of them when top_k limits the candidates, else all."""
        rest = np.ones(x.size, dtype=bool)
        rest[checked] = False
        z = x[rest].astype(np.float64) / self._temperature - top
        if n and n < z.size:
            z = np.partition(z, z.size - n)[z.size - n :]
        return float(np.exp(z).sum())

    def _draw(self, x: np.ndarray) -> int:
        order, probs = self._candidates(x)
        return int(order[self._rng.choice(order.size, p=probs)])

    def _candidates(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokens a draw from penalized logits may pick, most likely first, and their probabilities."""
        x = x / self._temperature
        ids = np.arange(x.size)
        if 0 < self._top_k < x.size:
            ids = np.argpartition(-x, self._top_k - 1)[: self._top_k]
        order = ids[np.argsort(-x[ids], kind="stable")]
        z = x[order].astype(np.float64)
        probs = np.exp(z - z[0])
        probs /= probs.sum()
        if self._top_p < 1.0:
            # The smallest set of most likely tokens whose probability reaches top_p (at least one).
            keep = int(np.searchsorted(np.cumsum(probs), self._top_p)) + 1
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        if self._min_p > 0:
            # The tokens at least min_p times as likely as the best; probs are sorted, so they lead.
            keep = int(np.count_nonzero(probs >= self._min_p * probs[0]))
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return order, probs


def shaped(logits: np.ndarray, produced: list[int], presence: float, frequency: float, bias) -> np.ndarray:
    """logit[t] - frequency * count(t) - presence * (count(t) > 0) + logit_bias[t], counting generated tokens."""
    out = logits.copy()
    if produced and (presence or frequency):
        ids, counts = np.unique(np.asarray(produced, dtype=np.int64), return_counts=True)
        keep = ids < out.shape[0]
        out[ids[keep]] -= frequency * counts[keep] + presence
    ids, values = bias
    if len(ids):
        keep = (ids >= 0) & (ids < out.shape[0])
        out[ids[keep]] += values[keep]
    return out
