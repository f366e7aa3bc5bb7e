"""OpenVINO GenAI: CPU, GPU and NPU through `openvino_genai.LLMPipeline`.

Options follow the seed's OpenVINO recipe (a latency hint, one stream, a compiled-model cache in the store)
and, on the NPU, OpenVINO's static pipeline (MAX_PROMPT_LEN, MIN_RESPONSE_LEN). With no NPU present,
`AIPC_EMULATE_NPU=1` runs that same NPU pipeline with its partitions compiled for the CPU (NPUW_DEVICES=CPU),
so the NPU path is exercised on any machine.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from time import perf_counter as _now
from typing import Any

import openvino_genai as ov_genai

from aipc.backends.base import (
    DeviceInfo,
    ModelInfo,
    TokenBytes,
    end_of_turn_ids,
    folder_special_tokens,
    piece_bytes,
    refuse_options,
    stream_from_callback,
    vocab_special_tokens,
)
from aipc.backends.mapped import MappedWeights
from aipc.backends.openvino_scoring import last_line as _last_line
from aipc.backends.openvino_speculate import text_streamer
from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.engine.events import Finished, TextDelta
from aipc.errors import ContextLengthError, GenerationError, UsageError
from aipc.store import paths
from aipc.store.resolve import ModelSource

log = logging.getLogger("aipc")

EMULATE_NPU_ENV = "AIPC_EMULATE_NPU"
NPU_PREFILL_CHUNK = 256
# Texts up to this many characters are tokenized whole: fewer than the 8192 tokens the tokenizer keeps, even at
# four tokens per character (byte-level tokens of characters outside the vocabulary).
_TOKENIZE_CHARS = 2000
# aipc's KV-cache types -> OpenVINO's KV_CACHE_PRECISION. The CPU plugin's default is u8 (an 8-bit cache with a scale
# and zero point per group), the GPU's f16.
_KV_PRECISION = {"f32": "f32", "f16": "f16", "q8": "u8"}
# Tokens per paged-attention block: the CPU plugin's block size (the GPU's is smaller), used to size the cache.
KV_BLOCK = 32
# The largest float32 under 1 (OpenVINO refuses a min_p of 1)
_FLOAT32_BELOW_1 = 0.99999994
_FINISH = {
    ov_genai.GenerationFinishReason.STOP: "stop",
    ov_genai.GenerationFinishReason.LENGTH: "length",
}


def npu_emulation_enabled() -> bool:
    return os.environ.get(EMULATE_NPU_ENV, "").lower() in ("1", "true", "yes", "on")


def npu_limits(config: LoadConfig) -> tuple[int, int]:
    """The NPU pipeline's (MAX_PROMPT_LEN, MIN_RESPONSE_LEN): a context length, when given, is split between the
    prompt and the answer room it keeps (npu_min_response_len, or a quarter of a smaller context)."""
    if config.context_length is None:
        return config.npu_max_prompt_len, config.npu_min_response_len
    response = min(config.npu_min_response_len, config.context_length // 4)
    return config.context_length - response, response


def pipeline_properties(config: LoadConfig, device: DeviceInfo, ir: Path | None = None) -> dict[str, object]:
    """The `LLMPipeline` properties aipc uses on `device` (the benchmark reuses them for its raw baseline).

    Compiled blobs go to a folder of their own per IR (`aipc.store.caches.compiled_dir`), so `aipc list` can
    attribute them to their model and `aipc rm` / `aipc prune` can remove them."""
    from aipc.store import caches

    if config.cache_dir:
        cache = Path(config.cache_dir)
    else:
        cache = caches.compiled_dir(ir) if ir is not None else paths.cache_dir("openvino")
    props: dict[str, object] = {"CACHE_DIR": str(cache)}
    if device.name.startswith("npu"):
        max_prompt, min_response = npu_limits(config)
        props |= {
            "MAX_PROMPT_LEN": max_prompt,
            "MIN_RESPONSE_LEN": min_response,
            # Prefill in chunks of 256 tokens, and keep the KV of chunks a later prompt starts with, so a chat's
            # next turn prefills only its new tokens. (The default 1024-token chunk spans a whole prompt, which
            # leaves nothing to reuse and pads short prompts to 1024.)
            "NPUW_LLM_ENABLE_PREFIX_CACHING": "NO" if config.prefix_cache is False else "YES",
            "NPUW_LLM_PREFILL_CHUNK_SIZE": NPU_PREFILL_CHUNK,
        }
        if device.emulated:
            props["NPUW_DEVICES"] = "CPU"
    else:
        props |= {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if config.precision_hint == "f32":
        props |= {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
        if device.name == "cpu":
            # The CPU plugin otherwise quantizes activations to int8 in multi-token matmuls over compressed
            # weights (prefill, speculative checks), so they disagree with one-token steps even at f32.
            props["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
    if config.kv_cache is not None:
        if device.name.startswith("npu"):
            raise UsageError(
                f"kv_cache {config.kv_cache} is not supported on the NPU, whose pipeline fixes its KV cache's type; "
                "use --device cpu or gpu"
            )
        props["KV_CACHE_PRECISION"] = _KV_PRECISION[config.kv_cache]
        if config.kv_cache == "f32":
            # The CPU plugin stores an f32 KV cache only with f32 math (with bf16 math it asks for a bf16 cache).
            props["INFERENCE_PRECISION_HINT"] = "f32"
    return props


def scheduler_config(context: int | None, prefix_cache: bool) -> ov_genai.SchedulerConfig:
    """The paged-attention scheduler `LLMPipeline` runs on the CPU and GPU: OpenVINO's latency-oriented settings
    (no limit on the tokens a step prefills) with the KV cache sized from the context.

    Prefix caching is off unless asked for (`LoadConfig.prefix_cache`). With it, a prompt that starts like an
    earlier one restores that one's KV blocks, partly filled ones included, and blocks that decoding wrote; the
    rest is prefilled around them. Measured here (benchmarks/determinism.py), that changes greedy answers to a
    chat's second turn over a long history, at every precision (bf16 or f32 math; u8, f16 or f32 KV cache)
    and however the prefill is chunked: it is not exact. Without it, a chat's next turn prefills its history
    again, which OpenVINO does fastest of the runtimes here."""
    sc = ov_genai.SchedulerConfig()
    sc.enable_prefix_caching = prefix_cache
    sc.max_num_batched_tokens = 2**31 - 1
    if context:
        sc.num_kv_blocks = -(-context // KV_BLOCK) + 1
    return sc


class OpenVINOBackend:
    """The runtime type: devices OpenVINO sees here, and opening models on one of them."""

    name = "openvino"
    formats = ("openvino-ir", "gguf")

    def devices(self) -> list[DeviceInfo]:
        import openvino as ov

        core = ov.Core()
        found = []
        for dev in core.available_devices:
            try:
                full = str(core.get_property(dev, "FULL_DEVICE_NAME"))
            except RuntimeError:
                full = dev
            found.append(DeviceInfo(dev.lower(), dev, full))
        if npu_emulation_enabled() and not any(d.name == "npu" for d in found):
            found.append(DeviceInfo("npu", "NPU", "NPU pipeline emulated on the CPU (NPUW_DEVICES=CPU)", True))
        return found

    def load(self, source: ModelSource, config: LoadConfig, device: DeviceInfo) -> OpenVINOModel:
        return OpenVINOModel(source, config, device)


class OpenVINOModel:
    """One `LLMPipeline` on one device."""

    def __init__(self, source: ModelSource, config: LoadConfig, device: DeviceInfo) -> None:
        is_npu = device.name.startswith("npu")
        path = ir_path(source, device)
        if is_npu and config.context_length is not None:
            from aipc.engine import context as ctx_policy

            dims, kv_type = _dims(source, path), _kv_type(config, device)
            ctx_policy.check_asked(config.context_length, dims, kv_type, name=source.name)
        self._context = sum(npu_limits(config)) if is_npu else self._choose_context(source, path, config, device)
        self._ir = path
        self._weights = MappedWeights(path)
        self._speculator = self._speculation(config, device, source)
        try:
            self._pipe = self._open_settled(path, config, device)
        except RuntimeError as exc:
            raise UsageError(f"OpenVINO could not load {source.name} on {device.name}: {_last_line(exc)}") from None
        self._tok = self._pipe.get_tokenizer()
        self._stop_ids = self._end_of_turn_ids()
        context = self._context
        max_prompt = npu_limits(config)[0] if is_npu else context - 1
        self.vocab_size = len(self._tok.get_vocab()) or None
        self.info = ModelInfo(
            name=source.name,
            backend="openvino",
            device=device.name + (" (emulated)" if device.emulated else ""),
            path=str(path),
            chat_template=self._tok.chat_template or None,
            bos_token=self._tok.get_bos_token(),
            eos_token=self._tok.get_eos_token(),
            max_prompt_tokens=max_prompt,
            context_length=context,
            special_tokens=self._special_tokens(path),
            ref=source.ref,
        )
        self._is_npu = is_npu
        if is_npu:  # the NPU's static pipeline generates one sequence per request
            self.generate_choices = None
        # XGrammar constrains decoding on every device, the NPU's static pipeline included.
        self.structured_output = True
        # The text of the end-of-turn tokens: the streamer keeps control tokens, so the one that ends a turn is
        # cut from the stream's end here (the other backends stop before decoding it).
        self._stop_texts = tuple({self.detokenize([i]) for i in self._stop_ids} - {""})
        self._device = device
        self._load_config = config
        self.token_bytes = TokenBytes(self.detokenize, self._vocabulary_bytes)

    @staticmethod
    def _choose_context(source: ModelSource, ir: Path, config: LoadConfig, device: DeviceInfo) -> int:
        """The context length: as asked, else the trained one capped to fit free memory (`aipc.engine.context`)."""
        from aipc.engine import context as ctx_policy

        dims = _dims(source, ir)
        trained = model_context_length(source, ir)
        dims = ctx_policy.ModelDims(trained or dims.trained, dims.kv)
        weights = sum(f.stat().st_size for f in ir.glob("*.bin"))
        kv_type = _kv_type(config, device)
        return ctx_policy.choose(config.context_length, dims, kv_type, name=source.name, reserve_bytes=weights)

    def _second_pipeline_fits(self, source: ModelSource, config: LoadConfig, device: DeviceInfo) -> bool:
        """Whether a second pipeline of this model (compiled weights and a KV cache for the context) takes at
        most `speculate.AUTO_MEMORY_SHARE` of the machine's memory; True where that cannot be read."""
        from aipc.backends import speculate
        from aipc.engine import context as ctx_policy

        total = ctx_policy.total_memory_bytes()
        if total is None:
            return True
        kv = _dims(source, self._ir).kv
        cost = sum(f.stat().st_size for f in self._ir.glob("*.bin"))
        cost += kv.bytes_per_token(_kv_type(config, device)) * self._context if kv is not None else 0
        if cost <= speculate.AUTO_MEMORY_SHARE * total:
            return True
        log.info(
            "speculate auto decodes %s plainly: OpenVINO's prompt lookup needs a second pipeline of %.1f GiB, more "
            "than %d%% of this machine's %.1f GiB (--speculate lookup uses it anyway)",
            source.name,
            cost / 2**30,
            round(speculate.AUTO_MEMORY_SHARE * 100),
            total / 2**30,
        )
        return False

    def _open(self, path: Path, config: LoadConfig, device: DeviceInfo, **extra):
        props = pipeline_properties(config, device, path)
        if self._speculator is not None and not extra:
            from aipc.backends.openvino_speculate import pipeline_kwargs

            extra = pipeline_kwargs(self._speculator.spec, device, props, path)
        if device.name.startswith("npu"):
            return ov_genai.LLMPipeline(str(path), device.runtime_name, **props, **extra)
        return ov_genai.LLMPipeline(
            str(path),
            device.runtime_name,
            scheduler_config=scheduler_config(self._context, config.prefix_cache is True),
            **props,
            **extra,
        )

    def _open_settled(self, path: Path, config: LoadConfig, device: DeviceInfo, **extra):
        """`_open`, releasing the pages of the weights file it maps while it compiles, and arming the release for
        its first inference, when the CPU plugin repacks the weights and the mapped ones stop being read
        (`aipc.backends.mapped`)."""
        self._weights.opened()
        with self._weights.settling():
            pipe = self._open(path, config, device, **extra)
        self._weights.opened()
        return pipe

    def _speculation(self, config: LoadConfig, device: DeviceInfo, source: ModelSource):
        """The speculator for `config.speculate` (see `openvino_speculate`), or None for plain decoding. auto on
        the NPU is plain decoding (its static pipeline has no prompt lookup), and so is auto for a model whose
        second pipeline would take too much memory (`_second_pipeline_fits`)."""
        from aipc.backends import speculate

        spec = speculate.parse(config.speculate)
        if not spec.active or (spec.mode == "auto" and device.name.startswith("npu")):
            return None
        if spec.mode == "auto" and not self._second_pipeline_fits(source, config, device):
            return None
        from aipc.backends.openvino_speculate import Speculator, refuse_on

        refuse_on(spec, device)

        def open_lookup():
            return self._open_settled(self._ir, config, device, prompt_lookup=True)

        return Speculator(spec, open_lookup)

    def _default_generation_config(self) -> ov_genai.GenerationConfig:
        return self._pipe.get_generation_config()

    def _end_of_turn_ids(self) -> set[int]:
        ids = set(self._default_generation_config().stop_token_ids)
        eos = self._tok.get_eos_token_id()
        if eos >= 0:
            ids.add(eos)
        return ids | end_of_turn_ids(self.tokenize, lambda enc: self._tok.decode(enc, skip_special_tokens=False))

    def _special_tokens(self, folder: Path) -> frozenset[str]:
        found = folder_special_tokens(folder)
        if found is not None:
            return found
        return vocab_special_tokens(
            self._tok.get_vocab(), self.tokenize, lambda ids: self._tok.decode(ids, skip_special_tokens=True)
        )

    def tokenize(self, text: str) -> list[int]:
        if len(text) <= _TOKENIZE_CHARS:
            return self._encode(text)
        # The tokenizer graph truncates its output (8192 tokens for GGUF-derived tokenizers, whatever
        # `truncation` says), so long texts are tokenized in pieces cut at word boundaries.
        from aipc.engine.prompt import split_long, tokenize_continued

        return tokenize_continued(split_long(text, _TOKENIZE_CHARS), self._encode)

    def _encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).input_ids.data[0].tolist()

    def detokenize(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def _vocabulary_bytes(self):
        """Token id -> bytes from the tokenizer's vocabulary (OpenVINO gives byte-level BPE pieces decoded)."""
        pieces = {i: p for p, i in self._tok.get_vocab().items()}
        return lambda ident: piece_bytes(pieces[ident]) if ident in pieces else None

    def _config(self, cfg: GenerationConfig) -> ov_genai.GenerationConfig:
        gc = ov_genai.GenerationConfig()
        gc.max_new_tokens = cfg.max_tokens
        gc.apply_chat_template = False
        gc.stop_token_ids = set() if cfg.ignore_eos else self._stop_ids
        gc.ignore_eos = cfg.ignore_eos
        gc.eos_token_id = self._tok.get_eos_token_id()
        gc.repetition_penalty = cfg.repetition_penalty
        refuse_options(cfg, "openvino", penalties=True, logit_bias=False)
        # OpenVINO moves a penalised logit toward zero (subtracting when it is >= 0, adding when negative), where
        # OpenAI, llama.cpp and aipc's ONNX Runtime path always subtract: the same for the likely tokens.
        gc.presence_penalty = cfg.presence_penalty
        gc.frequency_penalty = cfg.frequency_penalty
        if not cfg.greedy:
            gc.do_sample = True
            gc.temperature = cfg.temperature
            gc.top_p = cfg.top_p
            if cfg.top_k:
                gc.top_k = cfg.top_k
            # OpenVINO takes min_p below 1; the float32 just under it keeps the same tokens (ties with the best)
            gc.min_p = min(cfg.min_p, _FLOAT32_BELOW_1)
            # OpenVINO's own default seed is 0, which would draw the same answer for every unseeded request.
            gc.rng_seed = _seed32(cfg.seed) if cfg.seed is not None else secrets.randbits(32)
        if cfg.json_schema is not None:
            gc.structured_output_config = ov_genai.StructuredOutputConfig(json_schema=cfg.json_schema)
        return gc

    def generate(
        self, prompt: Sequence[int], config: GenerationConfig, cancel: threading.Event
    ) -> Iterator[TextDelta | Finished]:
        inputs = token_inputs(prompt)
        n_prompt = len(prompt)
        gc = self._fitted(n_prompt, config)

        stops = () if config.ignore_eos else self._stop_texts

        def run(on_text) -> Finished:
            def keep(text: str) -> bool:
                text = _cut_stop(text, stops)
                return on_text(text) if text else cancel.is_set()

            # A plain callable would stream through a detokenizer that drops control tokens; tool-call markup
            # (`<|tool_call|>`) is made of them, and the engine decides what reaches the answer.
            spec = self._speculator
            try:
                with self._weights.settling():
                    if spec is None:
                        result = self._pipe.generate(inputs, gc, text_streamer(self._tok, keep))
                        tokens, finish = result.tokens[0], result.finish_reasons[0]
                    else:
                        seeded = config.seed is not None and not config.greedy
                        tokens, finish = spec.generate(self._pipe, self._tok, prompt, gc, keep, seeded)
            except RuntimeError as exc:
                raise GenerationError(f"OpenVINO generation failed: {_last_line(exc)}") from None
            end = _now()
            reason = "cancelled" if cancel.is_set() else _FINISH.get(finish, "stop")
            counts = spec.settle() if spec is not None else None
            drafted, accepted = (counts.drafted, counts.accepted) if counts else (0, 0)
            return Finished(reason, n_prompt, len(tokens), end, tuple(int(t) for t in tokens), drafted, accepted)

        return stream_from_callback(run, cancel)

    def _fitted(self, n_prompt: int, config: GenerationConfig) -> ov_genai.GenerationConfig:
        """The runtime's config for a prompt of `n_prompt` tokens, which must fit: the answer fills the rest."""
        limit = self.info.max_prompt_tokens
        if limit is not None and n_prompt > limit:
            where = (
                f"the NPU pipeline's limit of {limit} (MAX_PROMPT_LEN); shorten it, or use another device"
                if self._is_npu
                else f"this model's context of {self.info.context_length} tokens"
            )
            raise ContextLengthError(f"the prompt has {n_prompt} tokens, over {where}", limit=limit, requested=n_prompt)
        gc = self._config(config)
        if not self._is_npu:
            gc.max_new_tokens = max(1, min(config.max_tokens, self.info.context_length - n_prompt))
        return gc

    def generate_choices(
        self, prompt: Sequence[int], config: GenerationConfig, n: int, cancel: threading.Event
    ) -> list[Iterator[TextDelta | Finished]]:
        """n sampled answers to one prompt from one generation (`num_return_sequences`: the prompt is prefilled
        once and the n sequences decode as one batch), each given as a finished generation's items. OpenVINO
        streams single sequences only, so this returns once all n have ended, and a cancel is not seen before.
        Speculation is not used (neither of OpenVINO's speculative pipelines returns several sequences)."""
        n_prompt = len(prompt)
        gc = self._fitted(n_prompt, config)
        gc.num_return_sequences = n
        if config.stop and not config.ignore_eos:
            # Each sequence ends at the token that completes a stop string (aipc's matcher sees the answers only
            # once all have ended); the ids keep that token, and the engine cuts their text as on every backend.
            gc.stop_strings = set(config.stop)
            gc.include_stop_str_in_output = True
        began = _now()
        try:
            with self._weights.settling():
                result = self._pipe.generate(token_inputs(prompt), gc)
        except RuntimeError as exc:
            raise GenerationError(f"OpenVINO generation failed: {_last_line(exc)}") from None
        end = _now()
        # every answer's text is stamped with the batch's first token (the runtime's own TTFT), so that the
        # timings spread the decode over the time it took
        first = min(end, began + max(result.perf_metrics.get_ttft().mean, 0.0) / 1000)
        stops = () if config.ignore_eos else self._stop_texts
        choices = []
        for tokens, finish in zip(result.tokens, result.finish_reasons, strict=True):
            ids = tuple(int(t) for t in tokens)
            text = _cut_stop(self.detokenize(ids), stops)
            reason = "cancelled" if cancel.is_set() else _FINISH.get(finish, "stop")
            choices.append(iter((TextDelta(text, first), Finished(reason, n_prompt, len(ids), end, ids))))
        return choices

    def reset_cache(self) -> None:
        """Forget the KV cache of earlier prompts. With prefix caching on (`LoadConfig.prefix_cache`), the KV
        blocks of recent prompts stay, and a prompt that starts with one of them (a chat's next turn) prefills only
        what follows. The pipeline has no call that drops those blocks, so this reopens it (from the compiled-model
        cache), then runs one token through it so that its first-inference setup is not counted against the next
        prompt. Without prefix caching nothing is kept, and nothing is done."""
        if not (self._is_npu or self._load_config.prefix_cache):
            return
        self._pipe = None
        if self._speculator is not None:
            self._speculator.forget()
        self._pipe = self._open_settled(self._ir, self._load_config, self._device)
        self._tok = self._pipe.get_tokenizer()
        cancel = threading.Event()
        for _ in self.generate(self.tokenize(self._tok.get_bos_token() or " "), GenerationConfig(max_tokens=1), cancel):
            pass

    def scorer(self) -> Any:
        """Teacher-forced next-token log-probs (see `aipc.backends.scoring`), from the IR this pipeline runs."""
        if self._is_npu:
            raise UsageError(
                "scoring (aipc eval) is not supported on the NPU, whose pipeline has static shapes and returns the "
                "last position's logits only: use --device cpu or gpu"
            )
        from aipc.backends.openvino_scoring import OpenVINOScorer

        return OpenVINOScorer(self._ir, self._device)

    def embedder(self) -> Any:
        """Text embeddings (see `aipc.backends.embedding`) from the IR this pipeline runs; not on the NPU."""
        from aipc.backends.embedding import OpenVINOEmbedder

        if self._is_npu:
            raise UsageError("embeddings are not supported on the NPU (static shapes): use --device cpu or gpu")
        return OpenVINOEmbedder(self._ir, self._device.runtime_name)

    def close(self) -> None:
        self._pipe = None
        if self._speculator is not None:
            self._speculator.forget()


def _cut_stop(text: str, stops: Sequence[str]) -> str:
    """`text` without the end-of-turn token's text at its end (the streamer keeps control tokens)."""
    for stop in stops:
        if text.endswith(stop):
            return text[: -len(stop)]
    return text


def token_inputs(ids: Sequence[int]) -> ov_genai.TokenizedInputs:
    """A prompt's token ids as the pipelines take them."""
    import numpy as np
    import openvino as ov

    array = np.asarray([list(ids)], dtype=np.int64)
    return ov_genai.TokenizedInputs(ov.Tensor(array), ov.Tensor(np.ones_like(array)))


def model_context_length(source: ModelSource, ir: Path) -> int | None:
    """Prompt + answer tokens the model was trained for: from the GGUF header, the store manifest, or the
    exported config.json."""
    import json

    if source.format == "gguf":
        from aipc.store.gguf_header import context_length, read_metadata

        return context_length(read_metadata(source.path))
    for name, key in (("aipc-manifest.json", "context_length"), ("config.json", "max_position_embeddings")):
        try:
            value = json.loads((ir / name).read_text()).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, int) and value > 0:
            return value
    return None


def _dims(source: ModelSource, ir: Path):
    """The model's context facts (`aipc.engine.context.ModelDims`): from the GGUF file it came from, else its IR."""
    from aipc.engine import context as ctx_policy

    if source.format == "gguf":
        from aipc.store.gguf_header import read_metadata

        return ctx_policy.dims_from_gguf(read_metadata(source.path))
    return ctx_policy.dims_of_folder(ir)


def _kv_type(config: LoadConfig, device: DeviceInfo) -> str:
    return config.kv_cache or ("q8" if device.name == "cpu" else "f16")


def ir_path(source: ModelSource, device: DeviceInfo) -> Path:
    """The OpenVINO IR folder for `source` on `device`: a GGUF file becomes IR once (cached in the store), which
    loads faster, and the NPU compiles only mended IR."""
    if source.format != "gguf":
        return source.path
    from aipc.convert.gguf_exact import check_readable
    from aipc.convert.gguf_openvino import ir_for_gguf

    check_readable(source.path)  # a type the reader cannot read exactly: refused here, so `load` falls back
    return ir_for_gguf(source.path, "npu" if device.name.startswith("npu") else "compressed")


def _seed32(seed: int) -> int:
    """A seed for OpenVINO's 32-bit generator: seeds up to 2**32 - 1 as they are, larger ones with their high
    bits folded in (the runtime would drop them: 5 and 5 + 2**32 drew the same answer)."""
    return (seed ^ (seed >> 32) ^ (seed >> 64)) & 0xFFFFFFFF
