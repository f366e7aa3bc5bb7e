"""Speculative decoding on OpenVINO GenAI, decided per request.

OpenVINO GenAI speculates inside its own pipelines: `LLMPipeline(..., prompt_lookup=True)` drafts by prompt
lookup, `LLMPipeline(..., draft_model=openvino_genai.draft_model(...))` with a draft model; its sampler checks the
drafts (the runtime's acceptance rule). A prompt-lookup pipeline refuses requests without drafts
(`num_assistant_tokens` must be >= 1) and checks that many tokens at every step even when lookup finds none (it
pads the candidates), so speculation cannot be switched off inside it: measured on the 135M model, such a step
costs 1.2x (1 draft) to 1.6x (8 drafts) a plain one. `auto` therefore keeps the plain pipeline and sends each
request to one or the other as `speculate.Governor` plans, opening the prompt-lookup pipeline the first time
it is needed. The step streamer measures what each step checked and took, which feeds the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from time import perf_counter as _now
from typing import Any

import openvino_genai as ov_genai

from aipc.backends import speculate
from aipc.backends.base import DeviceInfo


class StepStreamer(ov_genai.StreamerBase):
    """Streams text through OpenVINO's `TextStreamer`, noting when each step's tokens arrived and how many."""

    def __init__(self, tokenizer: ov_genai.Tokenizer, on_text: Callable[[str], bool]) -> None:
        super().__init__()
        self._text = ov_genai.TextStreamer(tokenizer, on_text)
        self.steps: list[tuple[float, int]] = []

    def write(self, token) -> ov_genai.StreamingStatus:
        tokens = token if isinstance(token, list) else [token]
        self.steps.append((_now(), len(tokens)))
        return self._text.write(tokens)

    def end(self) -> None:
        self._text.end()


class TimedText:
    """A text callback that notes when each piece arrived (plain steps: one token each)."""

    def __init__(self, on_text: Callable[[str], bool]) -> None:
        self._on_text = on_text
        self.times: list[float] = []

    def __call__(self, text: str) -> bool:
        self.times.append(_now())
        return self._on_text(text)


def pipeline_kwargs(spec: speculate.Speculation, device: DeviceInfo, props: dict[str, Any], ir) -> dict:
    """What `LLMPipeline` needs beyond its properties to open the main pipeline (from `ir`) for `spec`."""
    if spec.mode == "lookup":
        return {"prompt_lookup": True}
    if spec.mode == "draft":
        return {"draft_model": _draft(spec.draft, device, props, ir)}
    return {}


def refuse_on(spec: speculate.Speculation, device: DeviceInfo) -> None:
    """Speculation OpenVINO GenAI cannot run on `device`: prompt lookup on the NPU's static pipeline."""
    if spec.mode == "lookup" and device.name.startswith("npu"):
        raise speculate.refuse(
            "OpenVINO on the NPU",
            "lookup",
            "its static NPU pipeline has no prompt-lookup mode (given prompt_lookup=True it drafts nothing; "
            "OpenVINO GenAI runs prompt lookup on CPU and GPU); a draft model (speculate=draft:MODEL) works there",
        )


def _draft(name: str, device: DeviceInfo, props: dict[str, Any], ir):
    from aipc.backends.openvino import ir_path
    from aipc.store import caches

    tokenizer = ov_genai.Tokenizer(str(ir))
    source = speculate.draft_source(name, ("openvino-ir", "gguf"))
    path = ir_path(source, device)
    draft_tok = ov_genai.Tokenizer(str(path))
    speculate.check_same_tokenizer(name, _tokenizer_side(tokenizer), _tokenizer_side(draft_tok))
    if props.get("CACHE_DIR") == str(caches.compiled_dir(ir)):  # the draft's blobs go with the draft's IR
        props = {**props, "CACHE_DIR": str(caches.compiled_dir(path))}
    return ov_genai.draft_model(str(path), device.runtime_name, **props)


def _tokenizer_side(tok: ov_genai.Tokenizer) -> tuple:
    return (
        len(tok.get_vocab()),
        lambda text: tok.encode(text, add_special_tokens=False).input_ids.data[0].tolist(),
        lambda ids: tok.decode(list(ids), skip_special_tokens=False),
    )


class Speculator:
    """Runs one request with the speculation its mode (and, for auto, the governor) chooses. What was drafted
    and accepted, and what the governor learns from the answer, is worked out by `settle` once the generation's
    end is timed, so that the bookkeeping never counts as generation time."""

    def __init__(self, spec: speculate.Speculation, open_lookup: Callable[[], Any]) -> None:
        self.spec = spec
        self.governor = speculate.Governor(pads_misses=True)
        self._open_lookup = open_lookup
        self._lookup_pipe = None
        self._pending: Callable[[], speculate.Counts] | None = None

    def forget(self) -> None:
        """Drop the prompt-lookup pipeline (and its prefix cache); it reopens when next needed."""
        self._lookup_pipe = None

    def generate(self, pipe, tokenizer, prompt: Sequence[int], inputs, gc, on_text, seeded: bool = False):
        """The pipeline's result for this request, speculating as the mode and the governor say."""
        mode = self.spec.mode
        if mode == "draft":
            gc.num_assistant_tokens = speculate.DEFAULT_WIDTH
            result = pipe.generate(inputs, gc, on_text)
            metrics = result.extended_perf_metrics
            self._pending = lambda: (
                speculate.Counts(int(metrics.get_num_draft_tokens()), int(metrics.get_num_accepted_tokens()))
                if metrics is not None
                else speculate.Counts()
            )
            return result
        if mode == "lookup":
            width = speculate.DEFAULT_WIDTH
            result, streamer = self._lookup(pipe, tokenizer, inputs, gc, on_text, width)
            self._pending = lambda: lookup_counts(prompt, result.tokens[0], streamer.steps, width)
            return result
        kind, width = self.governor.plan(prompt, seeded=seeded)
        if width == 0:
            timed = TimedText(on_text)
            result = pipe.generate(inputs, gc, timed)

            def settle() -> speculate.Counts:
                times = timed.times
                if len(times) > 2:
                    self.governor.costs.observe(1, (times[-1] - times[0]) / (len(times) - 1))
                self.governor.record(kind, prompt, result.tokens[0])
                return speculate.Counts()

            self._pending = settle
            return result
        if self._lookup_pipe is None:
            self._lookup_pipe = self._open_lookup()
        result, streamer = self._lookup(self._lookup_pipe, tokenizer, inputs, gc, on_text, width)

        def settle() -> speculate.Counts:
            steps = streamer.steps
            for (t0, _), (t1, _) in pairwise(steps[1:]):  # the first step is the prefill
                self.governor.costs.observe(1 + width, t1 - t0)
            self.governor.record(kind, prompt, result.tokens[0])
            return lookup_counts(prompt, result.tokens[0], steps, width)

        self._pending = settle
        return result

    def settle(self) -> speculate.Counts:
        """Drafted and accepted tokens of the last generation; the governor learns from it."""
        pending, self._pending = self._pending, None
        return pending() if pending is not None else speculate.Counts()

    @staticmethod
    def _lookup(pipe, tokenizer, inputs, gc, on_text, width: int):
        gc.num_assistant_tokens = width
        gc.max_ngram_size = speculate.MAX_NGRAM
        streamer = StepStreamer(tokenizer, on_text)
        return pipe.generate(inputs, gc, streamer), streamer


def lookup_counts(prompt: Sequence[int], tokens: Sequence[int], steps: Sequence[tuple[float, int]], width: int):
    """Drafted and accepted tokens of a prompt-lookup generation, from the tokens each step produced: a step
    that produced n tokens accepted n - 1 drafts; what it drafted is prompt lookup's proposal at its start
    (the runtime does not report it)."""
    lookup = speculate.Lookup(prompt)
    counts = speculate.Counts()
    position = 0
    tokens = [int(t) for t in tokens]
    for index, (_, produced) in enumerate(steps):
        if index > 0:  # the first step is the prompt's prefill, which drafts nothing
            drafted = len(lookup.propose(min(width, len(tokens) - position)))
            counts.drafted += drafted
            counts.accepted += min(produced - 1, drafted)
        lookup.extend(tokens[position : position + produced])
        position += produced
    return counts
