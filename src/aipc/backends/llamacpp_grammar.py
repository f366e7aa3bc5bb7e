"""JSON Schema constraints on llama.cpp, checked the way llama.cpp's own sampler checks them.

llama-cpp-python puts the grammar in its sampler chain, where it checks every token of the vocabulary at every
step (49k for SmolLM2): that costs about 40% of decode speed. llama.cpp's `common_sampler` does better: it samples
first, asks the grammar about that one token, and only when the grammar rejects it checks the whole vocabulary and
samples again from what is allowed. The same here, around aipc's sampler (`aipc.backends.sampling`), as the one
logits processor of `Llama.generate`: llama.cpp's chain then just takes the token it leaves. A rejection first
checks a shortlist, the SHORTLIST most likely tokens: every token outside it is less likely than all inside, so
when the allowed ones inside settle the draw (`Sampler.pick_known`: the best one when greedy; when sampling, the
top_k candidates, or a top_p nucleus that no mass from outside could change), it is the draw a full check would
give; otherwise the whole vocabulary is checked.
"""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np

from aipc.backends.sampling import Sampler
from aipc.errors import GenerationError

SHORTLIST = 1024
_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


def gbnf_grammar(schema: str) -> llama_cpp.LlamaGrammar:
    """llama.cpp's GBNF grammar for a JSON Schema (llama-cpp-python's converter)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(schema)
        # The converter's string characters admit raw control characters, which JSON forbids inside strings;
        # llama.cpp's own C++ converter excludes them, as here.
        gbnf = gbnf.replace('char ::= [^"\\\\] |', 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |')
        return llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise GenerationError(f"llama.cpp cannot use this JSON schema: {exc}") from None


class ConstrainedChooser:
    """aipc's sampler under a grammar, as a logits processor. One per generation (the grammar's state advances
    with each token it accepts); `close()` frees the native sampler."""

    def __init__(self, vocab, grammar: llama_cpp.LlamaGrammar, sampler: Sampler, n_vocab: int) -> None:
        self._grammar = llama_cpp.llama_sampler_init_grammar(
            vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self._grammar:
            raise GenerationError("llama.cpp could not build a grammar for this JSON schema")
        self._sampler = sampler
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self._all = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._all["id"] = np.arange(n_vocab, dtype=np.intc)
        self._short = np.zeros(min(SHORTLIST, n_vocab), dtype=_TOKEN_DATA)
        self.rejected = 0  # steps whose first draw the grammar rejected
        self.full_checks = 0  # of those, steps that checked the whole vocabulary

    def __call__(self, input_ids, scores: np.ndarray) -> np.ndarray:
        x = self._sampler.penalized(scores)
        token = self._sampler.pick(x)
        if not self._allows(token, x[token]):
            self.rejected += 1
            token = self._redraw(x)
        self._sampler.accept(token)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        scores[:] = -np.inf
        scores[token] = 0.0
        return scores

    def _apply(self, data: np.ndarray) -> None:
        array = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=data.size, selected=-1, sorted=False
        )
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))

    def _allows(self, token: int, logit: float) -> bool:
        self._one["id"] = token
        self._one["logit"] = logit if np.isfinite(logit) else 0.0
        self._apply(self._one)
        return bool(np.isfinite(self._one["logit"][0]))

    def _redraw(self, x: np.ndarray) -> int:
        """The draw again, from the tokens the grammar allows (see the module's docstring for the shortlist)."""
        short = self._short
        ids = np.argpartition(-x, short.size - 1)[: short.size] if short.size < x.size else np.arange(x.size)
        short["id"] = ids
        short["logit"] = 0.0
        self._apply(short)
        token = self._sampler.pick_known(x, ids[np.isfinite(short["logit"])], ids)
        if token is not None:
            return token
        self.full_checks += 1
        return self._sampler.pick(np.where(self._allowed(), x, -np.inf).astype(np.float32))

    def _allowed(self) -> np.ndarray:
        self._all["logit"] = 0.0
        self._apply(self._all)
        return np.isfinite(self._all["logit"])

    def close(self) -> None:
        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
