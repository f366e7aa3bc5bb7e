"""ONNX Runtime GenAI: models built by its model builder (model.onnx + genai_config.json), on the CPU, CUDA
or DirectML, with a pull loop (`generate_next_token`) that needs no thread.

The generator is kept between requests, and a prompt that starts like the last one rewinds it instead of
starting over (a chat's next turn prefills only what is new). So that the same request gives the same tokens
whether or not its prefix was cached, prompts are appended in chunks of PREFILL_CHUNK tokens that start at
multiples of PREFILL_CHUNK, and only whole chunks of an earlier prompt are reused: each position is then
computed by the same operations on the same shapes either way (see `aipc.backends.llamacpp`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from time import perf_counter as _now

import numpy as np
import onnxruntime_genai as og

from aipc.backends import speculate
from aipc.backends.base import (
    DeviceInfo,
    ModelInfo,
    TokenBytes,
    end_of_turn_ids,
    fit_to_context,
    folder_chat_template,
    folder_special_tokens,
    tokenizer_json_bytes,
)
from aipc.backends.sampling import Sampler
from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.engine.events import Finished, TextDelta
from aipc.engine.logprobs import logprobs_from_logits
from aipc.errors import ContextLengthError, GenerationError, UsageError
from aipc.store.resolve import ModelSource

# Tokens per prompt-append step, and the granularity of KV-cache reuse.
PREFILL_CHUNK = 128
# aipc device -> ONNX Runtime GenAI provider name, in the order tried for "gpu".
_GPU_PROVIDERS = (("cuda", og.is_cuda_available), ("dml", og.is_dml_available))


class OnnxRuntimeBackend:
    name = "onnxruntime"
    formats = ("onnx-genai",)

    def devices(self) -> list[DeviceInfo]:
        found = [DeviceInfo("cpu", "cpu", "CPU (ONNX Runtime CPU execution provider)")]
        for provider, available in _GPU_PROVIDERS:
            if available():
                found.append(DeviceInfo("gpu", provider, f"GPU ({provider.upper()} execution provider)"))
                break
        return found

    def load(self, source: ModelSource, config: LoadConfig, device: DeviceInfo) -> OnnxRuntimeModel:
        return OnnxRuntimeModel(source, config, device)


def _kv_type(source: ModelSource, device: DeviceInfo) -> str:
    """The KV cache's element type, which the model builder fixes in the graph: 16-bit for fp16 builds and for
    GPU builds, 32-bit for the CPU's int4/int8/fp32 builds."""
    return "f16" if source.precision == "fp16" or device.name != "cpu" else "f32"


class OnnxRuntimeModel:
    # Log-probs come from the generator's logits at each step (see `generate`).
    reports_logprobs = True

    def __init__(self, source: ModelSource, config: LoadConfig, device: DeviceInfo) -> None:
        from aipc.engine import context as ctx_policy

        genai = json.loads((source.path / "genai_config.json").read_text())
        kv_type = _kv_type(source, device)
        if config.kv_cache is not None and config.kv_cache != kv_type:
            raise UsageError(
                f"kv_cache {config.kv_cache} is not supported by the onnxruntime backend: its model graph fixes the "
                f"KV cache's type ({kv_type} for {source.name}); use llamacpp or openvino for another"
            )
        dims = ctx_policy.dims_from_genai(genai)
        asked = config.context_length
        if asked is not None and dims.trained is not None and asked > dims.trained:
            raise UsageError(
                f"context_length {asked} is over {source.name}'s {dims.trained} tokens, the most ONNX Runtime GenAI "
                "allows for it (genai_config.json's context_length)"
            )
        if dims.trained is None:
            dims = ctx_policy.ModelDims(genai.get("search", {}).get("max_length"), dims.kv)
        weights = sum(f.stat().st_size for f in source.path.glob("*.onnx*"))
        # ONNX Runtime GenAI allocates the KV cache for max_length tokens up front.
        self._context = ctx_policy.choose(config.context_length, dims, kv_type, name=source.name, reserve_bytes=weights)
        self._spec = speculate.parse(config.speculate)
        self._governor = speculate.Governor(pads_misses=False) if self._spec.mode == "auto" else None
        folder = source.path
        self.token_bytes = TokenBytes(self.detokenize, lambda: tokenizer_json_bytes(source.path))
        if self._spec.mode == "draft":
            from aipc.backends.onnxruntime_speculate import check_draft, composite_folder

            self._draft = speculate.draft_source(self._spec.draft, ("onnx-genai",))
            check_draft(source, None, self._draft, self._spec.draft)  # vocabulary sizes, before the runtime
            folder = composite_folder(source, self._draft)
        try:
            cfg = og.Config(str(folder))
            cfg.clear_providers()
            if device.runtime_name != "cpu":
                cfg.append_provider(device.runtime_name)
            self._model = og.Model(cfg)
        except RuntimeError as exc:
            raise UsageError(f"ONNX Runtime GenAI could not load {source.name} on {device.name}: {exc}") from None
        self._tok = og.Tokenizer(self._model)
        if self._spec.mode == "draft":
            from aipc.backends.onnxruntime_speculate import check_draft

            check_draft(source, self._tok, self._draft, self._spec.draft)
        self.structured_output = True  # llguidance, through GeneratorParams.set_guidance
        self._generator: og.Generator | None = None
        self._special_ids: dict[int, str] | None = None
        self._cached: tuple[tuple, list[int]] | None = None  # (search options, token ids in the KV cache)
        self._reuse = config.prefix_cache is not False
        eos = genai["model"].get("eos_token_id", [])
        self._stop_ids = set(eos if isinstance(eos, list) else [eos]) | end_of_turn_ids(
            self.tokenize, lambda ids: self._tok.decode(ids)
        )
        self.vocab_size = int(genai["model"].get("vocab_size") or 0) or None
        bos_id = genai["model"].get("bos_token_id")
        self.info = ModelInfo(
            name=source.name,
            backend="onnxruntime",
            device=device.name,
            path=str(source.path),
            chat_template=folder_chat_template(source.path),
            bos_token=self._tok.decode([bos_id]) if isinstance(bos_id, int) else "",
            eos_token=self._tok.decode([eos[0] if isinstance(eos, list) else eos]) if eos else "",
            max_prompt_tokens=self._context - 1,
            context_length=self._context,
            special_tokens=folder_special_tokens(source.path) or frozenset(),
            ref=source.ref,
        )

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self._tok.encode(text)]

    def detokenize(self, ids) -> str:
        """Text with control tokens as their strings: the tokenizer's decode drops them (whatever its options
        say, for SentencePiece vocabularies), so they are written here and the text between is decoded."""
        if self._special_ids is None:
            self._special_ids = {self._tok.to_token_id(s): s for s in self.info.special_tokens}
        out, run = [], []
        for token in (int(i) for i in ids):
            if token in self._special_ids:
                if run:
                    out.append(self._tok.decode(np.asarray(run, dtype=np.int32)))
                    run = []
                out.append(self._special_ids[token])
            else:
                run.append(token)
        if run:
            out.append(self._tok.decode(np.asarray(run, dtype=np.int32)))
        return "".join(out)

    def generate(
        self, prompt: Sequence[int], config: GenerationConfig, cancel: threading.Event
    ) -> Iterator[TextDelta | Finished]:
        ids = [int(t) for t in prompt]
        n_prompt = len(ids)
        max_tokens = fit_to_context(n_prompt, self._context, config.max_tokens)
        k = config.logprobs
        # OpenAI's penalties, logit_bias and min_p are applied here, to logits read between steps (`Sampler.prepared`)
        shaping = bool(config.presence_penalty or config.frequency_penalty or config.logit_bias) or (
            config.min_p > 0 and not config.greedy
        )
        seeded = config.seed is not None and not config.greedy
        # llguidance, like logits read or shaped between steps, wants one token per step
        kind, speculative = self._speculation(ids, seeded, k is not None or shaping or config.json_schema is not None)
        generator, keep = self._generator_for(ids, config, speculative)
        key, self._cached = self._cached[0], None  # unknown until the prompt is in
        before = generator.get_speculative_stats() if speculative is not None else None
        for start in range(keep, n_prompt, PREFILL_CHUNK):  # aligned chunks: see the module's docstring
            generator.append_tokens(np.asarray(ids[start : start + PREFILL_CHUNK], dtype=np.int32))
        self._cached = (key, ids[: n_prompt // PREFILL_CHUNK * PREFILL_CHUNK])
        stream = self._tok.create_stream()
        generated = 0
        produced: list[int] = []
        times: list[float] = []
        reason = "length"
        end_logprob = None
        sampler = None
        while not generator.is_done():
            if cancel.is_set():
                reason = "cancelled"
                break
            logits = None
            if k is not None or shaping:  # the logits the next token is chosen from
                logits = np.array(generator.get_logits(), dtype=np.float32).reshape(-1)
            if shaping:  # applied to those logits before the search, which then does the rest
                sampler = sampler or Sampler(config, ids, logits.size)
                generator.set_logits(sampler.prepared(logits)[None, :])
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            times.append(_now())
            generated += 1
            produced.append(token)
            if sampler is not None:
                sampler.accept(token)
            logprob = (logprobs_from_logits(logits, token, k),) if k is not None else ()
            if token in self._stop_ids and not config.ignore_eos:
                reason = "stop"
                end_logprob = logprob[0] if logprob else None
                break
            text = stream.decode(token)
            if text or logprob:
                yield TextDelta(text, times[-1], logprob)
            if generated >= max_tokens:
                break
        else:
            reason = "stop" if generated < max_tokens else "length"
        end = _now()
        counts = self._settle(kind, ids, produced, times, before, generator)
        yield Finished(reason, n_prompt, generated, end, tuple(produced), counts.drafted, counts.accepted, end_logprob)

    def _speculation(self, ids, seeded: bool = False, reads_logits: bool = False) -> tuple[str, dict | None]:
        """(kind of request, the speculative options for it, or None for plain decoding). A request that reads or
        shapes the logits between steps decodes one token per step: prompt lookup would check several at once."""
        from aipc.backends.onnxruntime_speculate import lookup_options

        if reads_logits and self._spec.mode != "draft":
            return "", None

        if self._spec.mode == "lookup":
            return "", lookup_options(speculate.DEFAULT_WIDTH)
        if self._spec.mode == "draft":
            return "", {"max_draft_tokens": speculate.DEFAULT_WIDTH}
        if self._governor is None:
            return "", None
        kind, width = self._governor.plan([int(t) for t in ids], seeded=seeded)
        return kind, (lookup_options(width) if width else None)

    def _settle(self, kind, ids, produced, times, before, generator) -> speculate.Counts:
        """What was drafted and accepted; for auto, what the governor learns from this generation."""
        from aipc.backends.onnxruntime_speculate import Costs

        counts = speculate.Counts()
        costs = Costs(self._governor) if self._governor is not None else None
        if before is not None:
            after = generator.get_speculative_stats()
            counts = (costs or Costs(speculate.Governor(pads_misses=False))).speculative(before, after)
        elif costs is not None:
            costs.plain(times)
        if self._governor is not None:
            self._governor.record(kind, [int(t) for t in ids], produced)
        return counts

    def _generator_for(
        self, ids: list[int], config: GenerationConfig, speculative: dict | None = None
    ) -> tuple[og.Generator, int]:
        """A generator and how many leading prompt tokens it already holds in its KV cache.

        The last generator is kept; a prompt that starts with the whole chunks it holds (a chat's next turn, the
        same prompt again) rewinds it to them. Seeded sampling always starts afresh, so a seed gives the same
        text every time."""
        options: dict[str, object] = {
            "max_length": self._context,
            "do_sample": not config.greedy,
            "repetition_penalty": config.repetition_penalty,
        }
        if config.ignore_eos:
            options["min_length"] = self._context
        if not config.greedy:
            # top_k "off" is the whole vocabulary here: ONNX Runtime GenAI's top_k 0 turns top_p off too, a top_k
            # left out is genai_config.json's (the model builder writes 50), and one over the vocabulary is refused.
            # With min_p, the logits set before each step hold only the draw's candidates (`Sampler.prepared`):
            # its own top_k and top_p have nothing left to cut.
            narrowed = config.min_p > 0
            top_k = 0 if narrowed else config.top_k or self.vocab_size or 0
            if self.vocab_size:
                top_k = min(top_k, self.vocab_size)
            options |= {"temperature": config.temperature, "top_p": 1.0 if narrowed else config.top_p, "top_k": top_k}
            if config.seed is not None:
                options["random_seed"] = config.seed
        key = (tuple(sorted(options.items())), tuple(sorted((speculative or {}).items())), config.json_schema)
        reusable = self._reuse and config.seed is None and config.json_schema is None
        if reusable and self._cached and self._cached[0] == key:
            shared = 0
            for a, b in zip(self._cached[1], ids, strict=False):
                if a != b:
                    break
                shared += 1
            keep = min(shared, len(ids) - 1) // PREFILL_CHUNK * PREFILL_CHUNK
            if keep:
                self._generator.rewind_to(keep)
                return self._generator, keep
        params = og.GeneratorParams(self._model)
        params.set_search_options(**options)
        if speculative is not None:
            params.set_speculative_options(**speculative)
        if config.json_schema is not None:
            # llguidance constrains each token to the schema; a grammar state cannot be rewound, so a constrained
            # generation always starts afresh.
            try:
                params.set_guidance("json_schema", config.json_schema)
            except RuntimeError as exc:
                raise GenerationError(f"ONNX Runtime GenAI cannot use this JSON schema: {exc}") from None
        try:
            self._generator = og.Generator(self._model, params)
        except RuntimeError as exc:
            if config.json_schema is None:
                raise
            raise GenerationError(f"ONNX Runtime GenAI cannot use this JSON schema: {exc}") from None
        self._cached = (key, [])
        return self._generator, 0

    def scorer(self) -> OnnxRuntimeScorer:
        """Teacher-forced next-token log-probs (see `aipc.backends.scoring`), on this model's own session."""
        return OnnxRuntimeScorer(self._model, self._context)

    def reset_cache(self) -> None:
        """Forget the kept KV cache (benchmarks use it to measure a turn without reuse)."""
        self._generator = None
        self._cached = None

    def close(self) -> None:
        self._generator = None
        self._model = None


class OnnxRuntimeScorer:
    """The model's logits for a whole sequence: a fresh generator, one `append_tokens` (the prompt pass), and
    its `logits` output, which holds every appended position."""

    def __init__(self, model: og.Model, context: int) -> None:
        self._model = model
        self._context = context

    def next_token_logprobs(self, token_ids) -> np.ndarray:
        from aipc.backends.scoring import check_ids, log_softmax

        ids = check_ids(token_ids)
        if len(ids) > self._context:
            raise ContextLengthError(
                f"cannot score {len(ids)} tokens at once; this model's context is {self._context} tokens",
                limit=self._context,
                requested=len(ids),
            )
        params = og.GeneratorParams(self._model)
        params.set_search_options(max_length=min(self._context, len(ids) + 1))
        generator = og.Generator(self._model, params)
        try:
            generator.append_tokens(np.asarray(ids, dtype=np.int32))
            logits = np.asarray(generator.get_output("logits"))
        except RuntimeError as exc:
            raise GenerationError(f"ONNX Runtime GenAI could not score the sequence: {exc}") from None
        finally:
            del generator
        if logits.ndim != 3 or logits.shape[1] != len(ids):
            raise GenerationError(
                f"ONNX Runtime GenAI returned logits of shape {logits.shape} for {len(ids)} tokens; "
                "scoring needs every position's logits"
            )
        return log_softmax(logits[0])
