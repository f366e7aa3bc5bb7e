"""llama.cpp through llama-cpp-python: GGUF files on the CPU, with GPU offload where the build supports it.

Generation is llama.cpp's own pull loop, so it needs no thread. `Llama.generate` keeps the KV cache of the
longest prefix shared with the previous call, so a chat's next turn only evaluates the new tokens.
"""

from __future__ import annotations

import codecs
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from time import perf_counter as _now

import llama_cpp
import numpy as np

from aipc.backends import speculate
from aipc.backends.base import (
    DeviceInfo,
    ModelInfo,
    end_of_turn_ids,
    fit_to_context,
    markup_tokens,
    refuse_unsupported,
)
from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.engine.events import Finished, TextDelta
from aipc.engine.logprobs import logprobs_from_logits
from aipc.errors import UsageError
from aipc.store.resolve import ModelSource

DEFAULT_CONTEXT = 4096


class LlamaCppBackend:
    name = "llamacpp"
    formats = ("gguf",)

    def devices(self) -> list[DeviceInfo]:
        found = [DeviceInfo("cpu", "cpu", f"CPU ({os.cpu_count()} threads)")]
        if llama_cpp.llama_supports_gpu_offload():
            found.append(DeviceInfo("gpu", "gpu", "GPU (llama.cpp offload)"))
        return found

    def load(self, source: ModelSource, config: LoadConfig, device: DeviceInfo) -> LlamaCppModel:
        return LlamaCppModel(source, device, config)


class LlamaCppModel:
    # Log-probs come from the context's logits as each token is sampled (see `generate`).
    reports_logprobs = True

    def __init__(self, source: ModelSource, device: DeviceInfo, config: LoadConfig | None = None) -> None:
        path = source.path if source.path.is_file() else next(source.path.glob("*.gguf"))
        self._gpu_layers = -1 if device.name == "gpu" else 0
        self._drafter = None
        spec = speculate.parse(config.speculate if config else "off")
        if spec.active:
            from aipc.backends.llamacpp_speculate import Drafter, SpeculativeLlama

            self._drafter = Drafter(spec, self._gpu_layers, DEFAULT_CONTEXT)
            self._llm = self._open(path, device, SpeculativeLlama, draft_model=self._drafter)
            self._drafter.attach(self._llm)
        else:
            self._llm = self._open(path, device)
        trained = int(self._llm.metadata.get(f"{self._llm.metadata.get('general.architecture')}.context_length", 0))
        self._ctx = min(trained or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        vocab = self._llm._model.vocab
        self._is_eog = lambda tok: bool(llama_cpp.llama_vocab_is_eog(vocab, tok))
        self._stop_ids = end_of_turn_ids(self.tokenize, self._decode_special)
        meta = self._llm.metadata
        kinds = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        specials = markup_tokens(
            self._decode_special([i])
            for i in range(self._llm.n_vocab())
            if llama_cpp.llama_vocab_get_attr(vocab, i) & kinds
        )
        self.vocab_size = self._llm.n_vocab()
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
    def _open(path: Path, device: DeviceInfo, cls=llama_cpp.Llama, **extra) -> llama_cpp.Llama:
        try:
            return cls(
                str(path),
                n_ctx=DEFAULT_CONTEXT,
                n_threads=os.cpu_count(),
                n_gpu_layers=-1 if device.name == "gpu" else 0,
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

    def generate(
        self, prompt: Sequence[int], config: GenerationConfig, cancel: threading.Event
    ) -> Iterator[TextDelta | Finished]:
        refuse_unsupported(config, "llamacpp")
        ids = [int(i) for i in prompt]
        n_prompt = len(ids)
        max_tokens = fit_to_context(n_prompt, self._ctx, config.max_tokens)
        if config.seed is not None:
            self._llm.set_seed(config.seed)
        sampling = (
            {"temp": 0.0, "top_k": 1}
            if config.greedy
            else {
                "temp": config.temperature,
                "top_p": config.top_p,
                "top_k": config.top_k,
                "min_p": 0.0,
            }
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        generated = 0
        produced: list[int] = []
        reason = "length"
        seeded = config.seed is not None and not config.greedy
        k = config.logprobs
        # Log-probs read the context's last logits row, which is the sampled token's only when one token is
        # checked per step: a request that asks for them is decoded without drafts.
        stepper = self._drafter.start(ids, seeded, paused=k is not None) if self._drafter is not None else None
        if config.logit_bias:
            sampling["logits_processor"] = llama_cpp.LogitsProcessorList([_bias(config.logit_bias)])
        tokens = self._llm.generate(
            ids,
            repeat_penalty=config.repetition_penalty,
            # llama.cpp subtracts them from the logits, counting the last 64 generated tokens (last_n_tokens_size)
            presence_penalty=config.presence_penalty,
            frequency_penalty=config.frequency_penalty,
            reset=True,
            **sampling,
        )
        n_vocab = self._llm.n_vocab()
        try:
            for token in tokens:
                generated += 1
                produced.append(token)
                if stepper is not None:
                    stepper.push(token)
                if not config.ignore_eos and (token in self._stop_ids or self._is_eog(token)):
                    reason = "stop"
                    break
                logprob = ()
                if k is not None:  # the logits this token was sampled from: the context's last row, before eval
                    raw = llama_cpp.llama_get_logits_ith(self._llm._ctx.ctx, -1)
                    logprob = (logprobs_from_logits(np.ctypeslib.as_array(raw, shape=(n_vocab,)), token, k),)
                # One token at a time; the incremental UTF-8 decoder joins multi-byte characters split across
                # tokens (llama-cpp-python's tokenizer ignores prev_tokens, so none are kept).
                text = decoder.decode(self._llm.detokenize([token]))
                if text or logprob:
                    yield TextDelta(text, _now(), logprob)
                if cancel.is_set():
                    reason = "cancelled"
                    break
                if generated >= max_tokens:
                    break
        finally:
            tokens.close()
        end = _now()
        counts = speculate.Counts()
        if stepper is not None:
            stepper.finish()
            counts = stepper.counts
        yield Finished(reason, n_prompt, generated, end, tuple(produced), counts.drafted, counts.accepted)

    def scorer(self) -> LlamaCppScorer:
        """Teacher-forced next-token log-probs (see `aipc.backends.scoring`), from a second context on the same
        file that keeps every position's logits (`logits_all`), which the generating context does not."""
        return LlamaCppScorer(Path(self.info.path), self._gpu_layers)

    def reset_cache(self) -> None:
        """Forget the KV cache `Llama.generate` keeps for a shared prompt prefix."""
        self._llm.reset()

    def close(self) -> None:
        if self._drafter is not None:
            self._drafter.close()
            self._drafter = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None


def _bias(bias: tuple[tuple[int, float], ...]):
    """logit_bias as llama-cpp-python's logits processor: its first sampler stage, whose logits are in id
    order."""
    ids = np.asarray([i for i, _ in bias], dtype=np.int64)
    values = np.asarray([b for _, b in bias], dtype=np.float32)

    def apply(input_ids, scores):
        keep = ids < scores.shape[0]
        scores[ids[keep]] += values[keep]
        return scores

    return apply


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
