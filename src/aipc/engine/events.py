"""What generation yields: text deltas, then one final event.

Every backend produces this same stream, so timing (time to first token, next-token latency, tokens/s) is
computed once, here, from event timestamps, never per backend.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A token with its log-probability (natural log, the model's own distribution before any sampling
    option), and the `top` most likely tokens at its position as (id, logprob), most likely first."""

    id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of answer text, stamped with `time.perf_counter()` when the runtime produced it. `tokens`: the
    tokens whose text this is, with their log-probs, when the request asked for them (`logprobs`)."""

    text: str
    t: float
    tokens: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One complete call of a tool the request offered, read out of the model's markup (which never reaches
    `TextDelta`s). `arguments` is a JSON object as text, as OpenAI sends it; `index` counts calls in the turn."""

    index: int
    id: str
    name: str
    arguments: str
    t: float


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds, from the request's start. `next_token_s` is the mean gap between generated tokens."""

    ttft_s: float
    next_token_s: float
    tokens_per_s: float
    total_s: float


@dataclass(frozen=True, slots=True)
class Done:
    """The last event of every generation. finish_reason: "stop", "length", "cancelled", or "tool_calls" when a
    turn that offered tools ended with calls."""

    finish_reason: str
    usage: Usage
    timings: Timings
    backend: str
    device: str
    token_ids: tuple[int, ...] = ()  # the generated ids (end-of-turn token included), for parity and eval
    model: str = ""  # what ran: `name@variant` for a stored variant, else the model's name
    # With `logprobs`: the end-of-sequence token that stopped the generation, which has no text (None otherwise).
    end_logprob: TokenLogprob | None = None
    # Speculative decoding: draft tokens the model checked, and how many it accepted (0, 0 without speculation).
    drafted: int = 0
    accepted: int = 0


@dataclass(frozen=True, slots=True)
class Finished:
    """What a backend reports when its runtime returns; the engine turns it into `Done`."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    t: float
    token_ids: tuple[int, ...] = ()
    drafted: int = 0
    accepted: int = 0
    end_logprob: TokenLogprob | None = None  # see `Done.end_logprob`


Event = TextDelta | ToolCall | Done


def compute_timings(start: float, first: float | None, end: float, completion_tokens: int) -> Timings:
    """Timings from the stream: the first token at `first`, the rest spread until `end`."""
    total = end - start
    if first is None:
        return Timings(ttft_s=total, next_token_s=0.0, tokens_per_s=0.0, total_s=total)
    decode = max(end - first, 1e-9)
    later = max(completion_tokens - 1, 0)
    next_token = decode / later if later else 0.0
    return Timings(
        ttft_s=first - start,
        next_token_s=next_token,
        tokens_per_s=later / decode if later else 0.0,
        total_s=total,
    )
