"""Speculative decoding on llama.cpp, through llama-cpp-python's draft-model hook.

`Llama.generate` asks its `draft_model` for tokens before every step, checks them in one batch and keeps the
prefix its sampler agrees with (it samples each position from the model and stops at the first disagreement:
the runtime's rule, exact for greedy and sampling alike). aipc plugs in one drafter per mode:

- lookup: llama-cpp-python's own `LlamaPromptLookupDecoding`, at a fixed width;
- auto: prompt lookup whose width the measured rule (`speculate.Stepper`) sets at every step, 0 when drafting
  does not pay;
- draft:MODEL: a second `Llama` on the draft model's file, drafting greedily from its own KV cache.

`SpeculativeLlama` asks llama.cpp for every position's logits only in batches that carry drafts. (Given a
`draft_model`, llama-cpp-python sets `logits_all`, which also computes and copies logits for every prompt
position, slowing the prefill by a third here, and breaks on prompts over `n_batch` tokens because its logits
array is sized without it.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter as _now

import llama_cpp
import numpy as np
from llama_cpp.llama_speculative import LlamaDraftModel, LlamaPromptLookupDecoding

from aipc.backends import speculate
from aipc.errors import UsageError


class SpeculativeLlama(llama_cpp.Llama):
    """A `Llama` whose batches request all positions' logits only when they carry drafts to check."""

    checking = False  # set by the drafter: the next eval holds drafted tokens

    def eval(self, tokens: Sequence[int]) -> None:
        all_logits = self.checking
        self.checking = False
        self._ctx.kv_cache_seq_rm(-1, self.n_tokens, -1)
        for i in range(0, len(tokens), self.n_batch):
            batch = tokens[i : i + self.n_batch]
            self._batch.set_batch(batch=batch, n_past=self.n_tokens, logits_all=all_logits)
            self._ctx.decode(self._batch)
            self.input_ids[self.n_tokens : self.n_tokens + len(batch)] = batch
            self.n_tokens += len(batch)
        self._requires_eval = False


class Drafter(LlamaDraftModel):
    """The hook `Llama.generate` calls before each step: drafts by the chosen mode, and measures each step."""

    def __init__(self, mode: speculate.Speculation, gpu_layers: int, n_ctx: int) -> None:
        self.governor = speculate.Governor(pads_misses=False, widths=speculate.WIDE_WIDTHS)
        self.mode = mode
        self._lookup = LlamaPromptLookupDecoding(speculate.MAX_NGRAM, speculate.DEFAULT_WIDTH)
        self._draft_model: DraftLlama | None = None
        if mode.mode == "draft":
            source = speculate.draft_source(mode.draft, ("gguf",))
            path = source.path if source.path.is_file() else next(source.path.glob("*.gguf"))
            self._draft_model = DraftLlama(path, n_ctx, gpu_layers)
        self.llm: SpeculativeLlama | None = None
        self.stepper: speculate.Stepper | None = None
        self.paused = False
        self._last: tuple[float, int] | None = None  # (when the previous step was asked for, tokens it checked)
        self._ends: Callable[[int], bool] | None = None

    def attach(self, llm: SpeculativeLlama) -> None:
        """The model this drafter drafts for; a draft model must share its tokenizer."""
        self.llm = llm
        if self._draft_model is not None:
            try:
                check_draft_tokenizer(llm, self._draft_model.llm, self.mode.draft)
            except UsageError:
                self.close()
                llm.close()
                raise

    def close(self) -> None:
        if self._draft_model is not None:
            self._draft_model.close()
            self._draft_model = None

    def start(
        self,
        prompt: Sequence[int],
        seeded: bool = False,
        paused: bool = False,
        ends: Callable[[int], bool] | None = None,
    ) -> speculate.Stepper:
        """A new generation: its own stepper; the first step after the prompt's prefill is not timed. A paused
        generation drafts nothing (one token per step, as without a drafter). `ends`: the tokens the answer
        stops at, after which `auto` drafts nothing."""
        self.paused = paused
        self._ends = ends
        if self.mode.mode == "auto":
            self.stepper = self.governor.stepper(prompt, seeded=seeded)
        else:
            self.stepper = speculate.Stepper(self.governor, "fixed", prompt, speculate.DEFAULT_WIDTH, fixed=True)
        self._last = None
        self.llm.checking = False  # a draft asked for as the last generation stopped was never checked
        return self.stepper

    def __call__(self, input_ids: np.ndarray, /, **kwargs) -> np.ndarray:
        if self.paused:
            self.llm.checking = False
            self._last = None
            return np.asarray([], dtype=np.intc)
        now = _now()
        if self._last is not None:
            self.governor.costs.observe(self._last[1], now - self._last[0])
        stepper = self.stepper
        if self.mode.mode == "lookup":
            draft = [int(t) for t in self._lookup(input_ids)]
        elif self.mode.mode == "draft":
            draft = self._draft_model.propose(input_ids, speculate.DEFAULT_WIDTH)
        else:
            draft = stepper.propose(stepper.width(), self._ends)
        stepper.drafted(draft)
        self.llm.checking = bool(draft)
        self._last = (_now(), 1 + len(draft))
        return np.asarray(draft, dtype=np.intc)


class DraftLlama:
    """A draft model on llama.cpp: its own context, kept in step with the text by prefix reuse, drafting greedily."""

    def __init__(self, path: Path, n_ctx: int, gpu_layers: int) -> None:
        from aipc.backends.llamacpp import templates_left_alone

        try:
            with templates_left_alone():
                self.llm = llama_cpp.Llama(
                    str(path), n_ctx=n_ctx, n_threads=os.cpu_count(), n_gpu_layers=gpu_layers, verbose=False
                )
        except (ValueError, RuntimeError) as exc:
            raise UsageError(f"llama.cpp could not load the draft model {path.name}: {exc}") from None

    def propose(self, input_ids: np.ndarray, k: int) -> list[int]:
        ids = [int(t) for t in input_ids]
        out: list[int] = []
        tokens = self.llm.generate(ids, temp=0.0, top_k=1, reset=True)
        try:
            for token in tokens:
                out.append(int(token))
                if len(out) >= k:
                    break
        finally:
            tokens.close()
        return out

    def close(self) -> None:
        self.llm.close()


def check_draft_tokenizer(main: llama_cpp.Llama, draft: llama_cpp.Llama, name: str) -> None:
    """Refuse a draft model whose tokenizer differs from the model's (its drafts would be other tokens)."""

    def decode(llm: llama_cpp.Llama):
        return lambda ids: llm.detokenize(ids, special=True)

    speculate.check_same_tokenizer(
        name,
        (main.n_vocab(), lambda t: main.tokenize(t.encode(), add_bos=False, special=True), decode(main)),
        (draft.n_vocab(), lambda t: draft.tokenize(t.encode(), add_bos=False, special=True), decode(draft)),
    )
