"""llama.cpp through llama-cpp-python: GGUF files on the CPU, with GPU offload where the build supports it.

Generation is `Llama.generate`'s pull loop (no thread is needed), which also runs speculative decoding through
its draft-model hook (`aipc.backends.llamacpp_speculate`). aipc takes over two of its parts:

- Sampling means what `GenerationConfig` says on every backend (`aipc.backends.sampling`), which
  `Llama.generate`'s built-in sampler does not (its penalty sees only the last 64 generated tokens). aipc's
  sampler runs as the first stage of llama.cpp's chain (a logits processor), picks the token and leaves it the
  only candidate; llama.cpp's own stages then just take it. Drafted tokens are checked the same way, position
  by position, so speculation changes neither the tokens nor, with a seed, the draws.
- The same request gives the same tokens whatever the KV cache holds. A prompt is always evaluated in
  chunks of PREFILL_CHUNK tokens that start at multiples of PREFILL_CHUNK, and a later prompt reuses only
  whole chunks that an earlier prompt evaluated. Every position's keys and values are then computed by the
  very same operations, on the same shapes, whether they come from the cache or not. (A chunk of a different
  size, or a token evaluated alone, takes other matrix kernels, which round differently: enough to flip a
  near-tie and change a greedy answer.) A chat's next turn re-evaluates at most the last PREFILL_CHUNK - 1
  tokens of its history plus the previous answer, and reuses the rest. (`Llama.generate` reuses the longest
  prefix its KV cache holds; aipc first cuts what it holds back to those whole chunks.)
"""

from __future__ import annotations

import codecs
import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from time import perf_counter as _now
from typing import Any

import llama_cpp
import numpy as np

from aipc.backends import speculate
from aipc.backends.base import (
    DeviceInfo,
    ModelInfo,
    end_of_turn_ids,
    fit_to_context,
    markup_tokens,
)
from aipc.backends.sampling import Sampler
from aipc.engine import context as ctx_policy
from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.engine.events import Finished, TextDelta
from aipc.engine.logprobs import logprobs_from_logits
from aipc.errors import ModelNotFoundError, UsageError
from aipc.store.resolve import ModelSource

# Tokens per prompt-evaluation step (llama.cpp's n_batch and n_ubatch), and the granularity of KV-cache reuse.
PREFILL_CHUNK = 128
# aipc's KV-cache types -> ggml types.
_KV_TYPES = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16, "q8": llama_cpp.GGML_TYPE_Q8_0}
# llama.cpp's own default is f16. aipc keeps an 8-bit cache, as OpenVINO's CPU plugin does by default: for the
# real-scale Phi-3-mini at 4096 tokens that is 816 MiB instead of 1536, decoding as fast (benchmarks/memory.py).
DEFAULT_KV = "q8"
Q8_BLOCK = 32  # values per q8_0 block: the head size must be a multiple of it


class LlamaCppBackend:
    name = "llamacpp"
    formats = ("gguf",)

    def devices(self) -> list[DeviceInfo]:
        found = [DeviceInfo("cpu", "cpu", f"CPU ({os.cpu_count()} threads)")]
        if llama_cpp.llama_supports_gpu_offload():
            found.append(DeviceInfo("gpu", "gpu", "GPU (llama.cpp offload)"))
        return found

    def load(self, source: ModelSource, config: LoadConfig, device: DeviceInfo) -> LlamaCppModel:
        return LlamaCppModel(source, config, device)


_TEMPLATE_LOCK = threading.Lock()


class _TemplateLeftAlone:
    """Stands in for llama-cpp-python's `Jinja2ChatFormatter` while a model opens (`templates_left_alone`)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def to_chat_handler(self):
        def handler(*args, **kwargs):
            raise UsageError("aipc renders chat templates itself; llama-cpp-python's chat handlers are not used")

        return handler


@contextlib.contextmanager
def templates_left_alone() -> Iterator[None]:
    """Open a `Llama` without compiling the GGUF's chat templates. llama-cpp-python compiles every template in
    the file's metadata with an unsandboxed Jinja environment as it opens the model, and Jinja folds constant
    expressions while compiling: a file whose template holds {{ 'a' * 10**10 }} took all the memory there, and
    a malformed one raised from inside the constructor. aipc renders templates itself, sandboxed and bounded
    (`aipc.engine.template`), and never calls llama-cpp-python's chat handlers, so none is compiled."""
    from llama_cpp import llama_chat_format

    with _TEMPLATE_LOCK:
        original = llama_chat_format.Jinja2ChatFormatter
        llama_chat_format.Jinja2ChatFormatter = _TemplateLeftAlone
        try:
            yield
        finally:
            llama_chat_format.Jinja2ChatFormatter = original


class LlamaCppModel:
    # Log-probs come from the context's logits as each token is sampled (see `generate`).
    reports_logprobs = True

    def __init__(self, source: ModelSource, config: LoadConfig, device: DeviceInfo) -> None:
        from aipc.store.gguf_header import read_metadata

        path = source.path if source.path.is_file() else next(source.path.glob("*.gguf"), None)
        if path is None or not path.is_file():  # removed since it was resolved (`aipc rm` while loading)
            raise ModelNotFoundError(f"{source.name}'s GGUF file is gone from {source.path}")
        self._gpu_layers = -1 if device.name == "gpu" else 0
        dims = ctx_policy.dims_from_gguf(read_metadata(path))
        kv_type = config.kv_cache or DEFAULT_KV
        if kv_type == "q8" and dims.kv is not None and dims.kv.head_dim % Q8_BLOCK:
            # q8_0 packs 32 values per block along a head; llama.cpp refuses other head sizes.
            if config.kv_cache == "q8":
                raise UsageError(
                    f"kv_cache q8 needs a head size that is a multiple of {Q8_BLOCK} on llama.cpp; {source.name}'s "
                    f"is {dims.kv.head_dim}: use f16 or f32"
                )
            kv_type = "f16"
        self._ctx = ctx_policy.choose(
            config.context_length, dims, kv_type, name=source.name, reserve_bytes=path.stat().st_size
        )
        self._drafter = None
        spec = speculate.parse(config.speculate)
        if spec.active:
            from aipc.backends.llamacpp_speculate import Drafter, SpeculativeLlama

            self._drafter = Drafter(spec, self._gpu_layers, self._ctx)
            self._llm = self._open(path, device, self._ctx, kv_type, SpeculativeLlama, draft_model=self._drafter)
            self._drafter.attach(self._llm)
        else:
            self._llm = self._open(path, device, self._ctx, kv_type)
        self._canonical: list[int] = []  # the prompt tokens whose KV was computed in whole, aligned chunks
        self._reuse = config.prefix_cache is not False
        self._n_vocab = self._llm.n_vocab()
        self.vocab_size = self._n_vocab
        vocab = self._llm._model.vocab
        self._is_eog = lambda tok: bool(llama_cpp.llama_vocab_is_eog(vocab, tok))
        self._stop_ids = end_of_turn_ids(self.tokenize, self._decode_special)
        meta = self._llm.metadata
        kinds = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        specials = markup_tokens(
            self._decode_special([i]) for i in range(self._n_vocab) if llama_cpp.llama_vocab_get_attr(vocab, i) & kinds
        )
        self.vocab_size = self._n_vocab
        self.structured_output = True  # GBNF grammars from JSON Schema
        self.info = ModelInfo(
            name=source.name,
            backend="llamacpp",
            device=device.name,
            path=str(path),
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=self._decode_special([self._llm.token_bos()]),
            eos_token=self._decode_special([self._llm.token_eos()]),
            max_prompt_tokens=self._ctx - 1,
            context_length=self._ctx,
            special_tokens=specials,
            ref=source.ref,
        )

    @staticmethod
    def _open(
        path: Path, device: DeviceInfo, n_ctx: int, kv_type: str, cls=llama_cpp.Llama, **extra
    ) -> llama_cpp.Llama:
        on_cpu = device.name != "gpu"
        try:
            with templates_left_alone():
                return cls(
                    str(path),
                    n_ctx=n_ctx,
                    n_batch=PREFILL_CHUNK,
                    n_ubatch=PREFILL_CHUNK,
                    n_threads=os.cpu_count(),
                    n_gpu_layers=0 if on_cpu else -1,
                    type_k=_KV_TYPES[kv_type],
                    type_v=_KV_TYPES[kv_type],
                    # A quantized V cache needs flash attention in llama.cpp (with an f16 cache it decodes slower here).
                    flash_attn=kv_type == "q8",
                    # On the CPU llama.cpp repacks the weights of common quantizations (q4_0, q4_K, ...) into its
                    # own layout; with the file mapped as well, the weights were resident twice (5.6 GB of peak
                    # memory for Phi-3-mini's 2.15 GB q4_0). Reading the file instead keeps one copy.
                    use_mmap=not on_cpu,
                    verbose=False,
                    **extra,
                )
        except (ValueError, RuntimeError) as exc:
            raise UsageError(f"llama.cpp could not load {path.name}: {exc}") from None

    def _decode_special(self, ids: list[int]) -> str:
        return self._llm.detokenize(ids, special=True).decode("utf-8", errors="replace")

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, ids) -> str:
        return self._decode_special([int(i) for i in ids])

    def token_bytes(self, ident: int) -> bytes:
        """A token's own bytes (byte-level tokens may hold part of a UTF-8 character)."""
        return self._llm.detokenize([int(ident)], special=True)

    def _keep_chunks(self, ids: list[int]) -> None:
        """Cut the KV cache back to the whole chunks `ids` starts with, so that `Llama.generate`, which reuses
        the longest prefix it holds, evaluates the rest in aligned chunks; see the module's docstring."""
        shared = 0
        for a, b in zip(self._canonical if self._reuse else (), ids, strict=False):
            if a != b:
                break
            shared += 1
        keep = min(shared, len(ids) - 1) // PREFILL_CHUNK * PREFILL_CHUNK
        self._llm.n_tokens = keep  # generate() then drops the KV cache past it
        self._canonical = []  # unknown until the prompt's evaluation completes

    def _ends_turn(self, token: int) -> bool:
        """Whether the answer stops at `token`: an end-of-turn token of the template, or one the vocabulary marks
        as ending generation."""
        return token in self._stop_ids or self._is_eog(token)

    def generate(
        self, prompt: Sequence[int], config: GenerationConfig, cancel: threading.Event
    ) -> Iterator[TextDelta | Finished]:
        ids = [int(i) for i in prompt]
        n_prompt = len(ids)
        max_tokens = fit_to_context(n_prompt, self._ctx, config.max_tokens)
        sampler = Sampler(config, ids, self._n_vocab)
        chooser = self._choose_with(sampler, config.json_schema)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        produced: list[int] = []
        reason = "length"
        end_logprob = None
        seeded = config.seed is not None and not config.greedy
        k = config.logprobs
        # Log-probs read the context's last logits row, which is the sampled token's only when one token is
        # checked per step: a request that asks for them (or constrains with a grammar) is decoded without drafts.
        paused = k is not None or config.json_schema is not None
        ends = None if config.ignore_eos else self._ends_turn
        stepper = self._drafter.start(ids, seeded, paused=paused, ends=ends) if self._drafter is not None else None
        self._keep_chunks(ids)
        tokens = self._llm.generate(
            ids,
            temp=0.0,
            top_k=1,
            repeat_penalty=1.0,
            logits_processor=llama_cpp.LogitsProcessorList([chooser]),
            reset=True,
        )
        n_vocab = self._n_vocab
        try:
            for token in tokens:
                token = int(token)
                if not produced:  # the prompt is in: its whole chunks can serve the next prompt
                    self._canonical = ids[: n_prompt // PREFILL_CHUNK * PREFILL_CHUNK]
                produced.append(token)
                if stepper is not None:
                    stepper.push(token)
                logprob = ()
                if k is not None:  # the logits this token was sampled from: the context's last row, before eval
                    raw = llama_cpp.llama_get_logits_ith(self._llm._ctx.ctx, -1)
                    logprob = (logprobs_from_logits(np.ctypeslib.as_array(raw, shape=(n_vocab,)), token, k),)
                if ends is not None and ends(token):
                    reason = "stop"
                    end_logprob = logprob[0] if logprob else None
                    break
                # One token at a time; the incremental UTF-8 decoder joins multi-byte characters split across
                # tokens (llama-cpp-python's tokenizer ignores prev_tokens, so none are kept).
                text = decoder.decode(self._llm.detokenize([token]))
                if text or logprob:
                    yield TextDelta(text, _now(), logprob)
                if cancel.is_set():
                    reason = "cancelled"
                    break
                if len(produced) >= max_tokens:
                    break
        finally:
            tokens.close()
            close = getattr(chooser, "close", None)
            if close is not None:
                close()
        end = _now()
        counts = speculate.Counts()
        if stepper is not None:
            stepper.finish()
            counts = stepper.counts
        yield Finished(
            reason, n_prompt, len(produced), end, tuple(produced), counts.drafted, counts.accepted, end_logprob
        )

    def _choose_with(self, sampler: Sampler, schema: str | None):
        """`Llama.generate`'s one logits processor: aipc's sampler picks the token (see the module's docstring),
        under the request's JSON Schema when it has one; llama.cpp's own stages are neutral."""
        if schema is None:
            return _chooser(sampler)
        from aipc.backends.llamacpp_grammar import ConstrainedChooser, gbnf_grammar

        return ConstrainedChooser(self._llm._model.vocab, gbnf_grammar(schema), sampler, self._n_vocab)

    def scorer(self) -> LlamaCppScorer:
        """Teacher-forced next-token log-probs (see `aipc.backends.scoring`), from a second context on the same
        file that keeps every position's logits (`logits_all`), which the generating context does not."""
        return LlamaCppScorer(Path(self.info.path), self._gpu_layers)

    def embedder(self) -> Any:
        """Text embeddings (see `aipc.backends.embedding`) from a second context on the same file."""
        from aipc.backends.embedding import LlamaCppEmbedder

        return LlamaCppEmbedder(Path(self.info.path), self._gpu_layers, self._ctx)

    def reset_cache(self) -> None:
        """Forget the KV cache kept for a shared prompt prefix."""
        self._llm.reset()
        self._canonical = []

    def close(self) -> None:
        if self._drafter is not None:
            self._drafter.close()
            self._drafter = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None


def _chooser(sampler: Sampler):
    """aipc's sampler as llama-cpp-python's logits processor, the first stage of its chain (logits in id order):
    the token it picks is left the only candidate."""

    def choose(input_ids, scores):
        token = sampler(scores)
        scores[:] = -np.inf
        scores[token] = 0.0
        return scores

    return choose


class LlamaCppScorer:
    """llama.cpp's logits for every position (`Llama(logits_all=True)`, then `eval`), each call from an empty
    KV cache. The context is sized to the longest sequence seen, since `logits_all` keeps an n_ctx x vocab
    float32 array: 512 positions of a 49k vocabulary are 100 MB, its 4096-token default would be 800 MB."""

    def __init__(self, path: Path, gpu_layers: int) -> None:
        self._path = path
        self._gpu_layers = gpu_layers
        self._llm: llama_cpp.Llama | None = None

    def _context_for(self, n: int) -> llama_cpp.Llama:
        if self._llm is None or self._llm.n_ctx() < n:
            if self._llm is not None:
                self._llm.close()
            size = max(512, -(-n // 256) * 256)
            try:
                with templates_left_alone():
                    self._llm = llama_cpp.Llama(
                        str(self._path),
                        n_ctx=size,
                        n_batch=size,
                        n_ubatch=min(size, 512),
                        n_threads=os.cpu_count(),
                        n_gpu_layers=self._gpu_layers,
                        logits_all=True,
                        verbose=False,
                    )
            except (ValueError, RuntimeError) as exc:
                raise UsageError(f"llama.cpp could not open {self._path.name} for scoring: {exc}") from None
        return self._llm

    def next_token_logprobs(self, token_ids) -> np.ndarray:
        from aipc.backends.scoring import check_ids, log_softmax

        ids = check_ids(token_ids)
        llm = self._context_for(len(ids))
        llm.reset()  # n_tokens = 0: eval() then clears the KV cache past it
        llm.eval(ids)
        return log_softmax(llm.scores[: len(ids)])
