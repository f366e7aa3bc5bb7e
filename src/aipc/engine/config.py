"""Load-time configuration apart from per-request configuration.

`LoadConfig` is fixed when a model is opened (backend, device, pipeline shape); `GenerationConfig` travels
with each request. Both validate themselves so every front end (CLI, API, server) rejects the same inputs
with the same one-line message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from aipc.errors import InvalidConfigError

DEVICES = ("auto", "cpu", "gpu", "npu")
# KV-cache element types a load may ask for: "q8" is llama.cpp's q8_0 and OpenVINO's u8 (8-bit with a scale and
# zero point per group). None lets each runtime keep its own default.
KV_CACHE_TYPES = ("f32", "f16", "q8")
MAX_TOP_LOGPROBS = 20
# The largest count any runtime takes (a 32-bit int: llama.cpp's n_ctx, OpenVINO's max_new_tokens and top_k) and
# the largest seed (64-bit signed, as JSON clients, Ollama and OpenAI carry it).
MAX_COUNT = 2**31 - 1
MAX_SEED = 2**63 - 1
# top_p is a 32-bit float in the runtimes: a smaller positive value would become 0, which they refuse. Any
# top_p this small keeps only the most likely token, as this one does.
MIN_TOP_P = 1e-6


@dataclass(frozen=True)
class LoadConfig:
    backend: str = "auto"
    device: str = "auto"
    # The NPU runs a static-shape pipeline: prompts (and chat history) up to max_prompt_len tokens, and at
    # least min_response_len tokens of answer room. OpenVINO's defaults are 1024 and 128.
    npu_max_prompt_len: int = 1024
    npu_min_response_len: int = 128
    cache_dir: str | None = None
    # "f32" asks runtimes that compute in reduced precision by default (OpenVINO's CPU plugin uses bf16 where
    # the CPU has it) for full fp32 math and KV cache: slower, but bit-comparable with the reference.
    precision_hint: str | None = None
    # Generations the opened model runs at once. Above 1, backends that can batch (OpenVINO on CPU/GPU:
    # continuous batching) open a batching pipeline; others run one generation at a time.
    parallel: int = 1
    # Prompt + answer tokens the opened model holds (llama.cpp's n_ctx, ONNX Runtime GenAI's max_length, the
    # OpenVINO KV-cache budget). None: the model's trained context, capped so its KV cache fits in free memory.
    context_length: int | None = None
    # The KV cache's element type (KV_CACHE_TYPES); a runtime that cannot store it refuses it by name.
    kv_cache: str | None = None
    # Reuse the KV cache of earlier prompts that a new one starts with (a chat's history). None: wherever that
    # keeps answers exact (llama.cpp, ONNX Runtime, the NPU), not on OpenVINO's CPU/GPU pipeline, whose prefix
    # cache can change a greedy answer; True turns it on there too (faster chats, answers may differ).
    prefix_cache: bool | None = None
    # Speculative decoding: "auto" (prompt lookup where measurement says it pays), "off", "lookup" (always), or
    # "draft:MODEL" (a small draft model with the same tokenizer). See aipc.backends.speculate.
    speculate: str = "auto"

    def __post_init__(self) -> None:
        device = self.device.lower().replace(" ", "")
        parts = device.split(",")
        if any(p.split(".")[0] not in DEVICES for p in parts) or ("auto" in parts and len(parts) > 1):
            raise InvalidConfigError(
                f"unknown device {self.device!r}: valid devices are {', '.join(DEVICES)}, "
                "or a preference list such as npu,cpu"
            )
        object.__setattr__(self, "device", device)
        if self.precision_hint not in (None, "f32"):
            raise InvalidConfigError(f"precision_hint must be None or 'f32', got {self.precision_hint!r}")
        for name in ("npu_max_prompt_len", "npu_min_response_len", "parallel"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.context_length is not None:
            hint = f"an integer from 16 to {MAX_COUNT} (tokens)"
            _check_int("context_length", self.context_length, low=16, high=MAX_COUNT, hint=hint)
        if self.prefix_cache not in (None, True, False):
            raise InvalidConfigError(f"prefix_cache must be true, false or None, got {self.prefix_cache!r}")
        if self.kv_cache is not None and self.kv_cache not in KV_CACHE_TYPES:
            raise InvalidConfigError(f"kv_cache must be one of {', '.join(KV_CACHE_TYPES)}, got {self.kv_cache!r}")
        _check_speculate(self.speculate)


@dataclass(frozen=True)
class GenerationConfig:
    """Per-request sampling options. temperature 0 means greedy decoding.

    The defaults are Ollama's (a model's own recommendations override them: `aipc.engine.defaults`). Sampling
    is the same on every backend: the repetition penalty first, then temperature, top_k, top_p, min_p, then a
    draw. min_p keeps the tokens whose probability (after temperature) is at least min_p times the most likely
    one's, as in llama.cpp, Ollama, vLLM and transformers; 0 turns it off.
    repetition_penalty is the CTRL paper's, as transformers, OpenVINO GenAI and ONNX Runtime GenAI define it:
    the logit of every distinct token already in the sequence (the prompt and the answer so far) is divided by
    the penalty when positive and multiplied by it when negative; 1 turns it off."""

    max_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.1
    stop: tuple[str, ...] = field(default_factory=tuple)
    # Generate exactly max_tokens, past end-of-turn tokens: benchmarks need fixed-length decodes.
    ignore_eos: bool = False
    # A JSON Schema (JSON text, or a dict) the answer must conform to; the runtime constrains decoding to it,
    # within the subset `aipc.engine.schema` names.
    json_schema: str | None = None
    # Log-probabilities of the generated tokens: None leaves them out; N (0-20) adds each token's log-prob and
    # its N most likely alternatives to the `TextDelta`s.
    logprobs: int | None = None
    # OpenAI's penalties: logit[t] -= frequency_penalty * count(t) + presence_penalty * (count(t) > 0), counting
    # the tokens generated so far.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Added to the logits of the given token ids before sampling: ((id, bias), ...), bias in [-100, 100].
    logit_bias: tuple[tuple[int, float], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        _check_int("max_tokens", self.max_tokens, low=1, high=MAX_COUNT, hint=f"an integer from 1 to {MAX_COUNT}")
        _check_float("temperature", self.temperature, ok=lambda v: v >= 0, hint="a finite number >= 0 (0 is greedy)")
        _check_float("top_p", self.top_p, ok=lambda v: 0 < v <= 1, hint="a number in (0, 1]")
        object.__setattr__(self, "top_p", max(float(self.top_p), MIN_TOP_P))
        hint = f"an integer from 0 to {MAX_COUNT} (0 disables it)"
        _check_int("top_k", self.top_k, low=0, high=MAX_COUNT, hint=hint)
        _check_float("min_p", self.min_p, ok=lambda v: 0 <= v <= 1, hint="a number from 0 to 1 (0 disables it)")
        object.__setattr__(self, "min_p", float(self.min_p))
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=MAX_SEED, hint=f"an integer from 0 to {MAX_SEED}")
        _check_float("repetition_penalty", self.repetition_penalty, ok=lambda v: v > 0, hint="a finite number > 0")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InvalidConfigError(f"stop strings must be non-empty strings, got {s!r}")
        if isinstance(self.json_schema, dict):  # the Python API takes a schema as a dict too
            import json

            object.__setattr__(self, "json_schema", json.dumps(self.json_schema))
        if self.json_schema is not None:
            _check_json_schema(self.json_schema)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, low=0, hint=f"an integer from 0 to {MAX_TOP_LOGPROBS}")
            if self.logprobs > MAX_TOP_LOGPROBS:
                raise InvalidConfigError(
                    f"logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {self.logprobs!r}"
                )
        for name in ("presence_penalty", "frequency_penalty"):
            _check_float(name, getattr(self, name), ok=lambda v: -2 <= v <= 2, hint="a number from -2 to 2")
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def updated(self, **overrides: Any) -> GenerationConfig:
        """A copy with the given options replaced; None values keep the current ones."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InvalidConfigError(
                f"unknown generation option(s) {', '.join(unknown)}: valid options are {', '.join(sorted(known))}"
            )
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _check_speculate(value: Any) -> None:
    ok = isinstance(value, str) and (
        value.strip().lower() in ("auto", "off", "lookup")
        or (value.strip().startswith("draft:") and value.strip()[len("draft:") :].strip() != "")
    )
    if not ok:
        raise InvalidConfigError(f"speculate must be auto, off, lookup or draft:MODEL, got {value!r}")


def _check_json_schema(value: Any) -> None:
    import json

    try:
        schema = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        raise InvalidConfigError(f"json_schema must be a JSON Schema object as JSON text, got {value!r:.80}")
    from aipc.engine.schema import check

    check(schema)


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """`{id: bias}` or `((id, bias), ...)` as sorted pairs; ids are token ids, biases in [-100, 100]."""
    items = value.items() if isinstance(value, dict) else value
    out = {}
    try:
        pairs = [(k, v) for k, v in items]
    except (TypeError, ValueError):
        raise InvalidConfigError(f"logit_bias must map token ids to numbers, got {value!r:.80}") from None
    for key, bias in pairs:
        try:
            ident = int(key)
        except (TypeError, ValueError):
            ident = -1
        if isinstance(key, bool) or ident < 0:
            raise InvalidConfigError(f"logit_bias keys must be token ids (integers >= 0), got {key!r}")
        _check_float("logit_bias", bias, ok=lambda v: -100 <= v <= 100, hint="a map to numbers from -100 to 100")
        out[ident] = float(bias)
    return tuple(sorted(out.items()))


def _check_int(name: str, value: Any, *, low: int, hint: str, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise InvalidConfigError(f"{name} must be {hint}, got {value!r}")


def _check_float(name: str, value: Any, *, ok, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise InvalidConfigError(f"{name} must be {hint}, got {value!r}")
