"""Speculative decoding on OpenVINO GenAI, decided per request.

OpenVINO GenAI speculates inside its own pipelines: `LLMPipeline(..., prompt_lookup=True)` drafts by prompt
lookup, `LLMPipeline(..., draft_model=openvino_genai.draft_model(...))` with a draft model; its sampler checks the
drafts (the runtime's acceptance rule). A prompt-lookup pipeline refuses requests without drafts
(`num_assistant_tokens` must be >= 1) and checks that many tokens at every step even when lookup finds none (it
pads the candidates), so speculation cannot be switched off inside it: measured on the 135M model, such a step
costs 1.2x (1 draft) to 1.6x (8 drafts) a plain one. `auto` therefore keeps the plain pipeline and sends each
request to one or the other as `speculate.Governor` plans, opening the prompt-lookup pipeline the first time
it is needed, and moves an answer to the other pipeline midway where its own tokens say that pays
(`Speculator`). The step streamer measures what each step checked and took, which feeds the plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from itertools import pairwise
from time import perf_counter as _now
from typing import Any

import openvino_genai as ov_genai

from aipc.backends import speculate
from aipc.backends.base import DeviceInfo

log = logging.getLogger("aipc")

# Control tokens reach the engine (tool-call markup is made of them); the backend trims end-of-turn text itself.
KEEP_SPECIAL_TOKENS = {"skip_special_tokens": False}


def text_streamer(tokenizer: ov_genai.Tokenizer, on_text: Callable[[str], bool]) -> ov_genai.TextStreamer:
    """OpenVINO's detokenizing streamer, keeping control tokens."""
    return ov_genai.TextStreamer(tokenizer, on_text, KEEP_SPECIAL_TOKENS)


class StepStreamer(ov_genai.StreamerBase):
    """One pipeline's part of a generation: passes the tokens on to a text streamer (shared by all the parts
    of one generation), notes when each step's tokens arrived and how many, and, when `decide` names another
    draft width, stops the pipeline so that the generation continues with that width (`Speculator`)."""

    def __init__(self, text: ov_genai.TextStreamer, decide: Callable[[StepStreamer], int | None] | None = None):
        super().__init__()
        self._text = text
        self._decide = decide
        self.began = _now()
        self.steps: list[tuple[float, int]] = []
        self.tokens: list[int] = []
        self.switch_to: int | None = None

    def write(self, token) -> ov_genai.StreamingStatus:
        tokens = token if isinstance(token, list) else [token]
        self.steps.append((_now(), len(tokens)))
        self.tokens.extend(int(t) for t in tokens)
        status = self._text.write(tokens)
        if status == ov_genai.StreamingStatus.RUNNING and self._decide is not None:
            self.switch_to = self._decide(self)
            if self.switch_to is not None:
                return ov_genai.StreamingStatus.STOP
        return status

    def end(self) -> None:
        """The text streamer is ended by whoever ran the whole generation, after its last part."""


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
    end is timed, so that the bookkeeping never counts as generation time.

    Under auto the governor plans each request from earlier answers of its kind; the answer's own positions then
    correct that plan while it generates. When they predict that switching between the plain pipeline and the
    prompt-lookup pipeline saves at least `speculate.SWITCH_PAYBACK` times what the switch costs (the other
    pipeline prefills the prompt and the answer so far), the part so far stops and the other pipeline continues
    from its tokens, through the same text streamer. A copy among long prompts that do not copy is thus sped up,
    and an answer that copies nothing leaves the prompt-lookup pipeline. A generation switches at most
    `MAX_SWITCHES` times, and never where that could change what is sampled: seeded sampling (planned from the
    prompt alone, see `speculate.Governor.plan`), structured output (its grammar's state), presence and frequency
    penalties (OpenVINO counts them over the answer only)."""

    MAX_SWITCHES = 2

    def __init__(self, spec: speculate.Speculation, open_lookup: Callable[[], Any]) -> None:
        self.spec = spec
        self.governor = speculate.Governor(pads_misses=True)
        self._open_lookup = open_lookup
        self._lookup_pipe = None
        self._open_seconds: float | None = None  # what opening the prompt-lookup pipeline took
        self._pending: Callable[[], speculate.Counts] | None = None

    def forget(self) -> None:
        """Drop the prompt-lookup pipeline (and its prefix cache); it reopens when next needed."""
        self._lookup_pipe = None

    def generate(self, pipe, tokenizer, prompt: Sequence[int], gc, on_text, seeded: bool = False):
        """This request's (answer tokens, the runtime's finish reason), speculating as the mode and the governor
        say."""
        mode = self.spec.mode
        text = text_streamer(tokenizer, on_text)
        if mode == "draft":
            gc.num_assistant_tokens = speculate.DEFAULT_WIDTH
            result = pipe.generate(token_inputs(prompt), gc, text)
            metrics = result.extended_perf_metrics
            self._pending = lambda: (
                speculate.Counts(int(metrics.get_num_draft_tokens()), int(metrics.get_num_accepted_tokens()))
                if metrics is not None
                else speculate.Counts()
            )
            return [int(t) for t in result.tokens[0]], result.finish_reasons[0]
        if mode == "lookup":
            width = speculate.DEFAULT_WIDTH
            _configure(gc, width)
            part = StepStreamer(text)
            result = pipe.generate(token_inputs(prompt), gc, part)
            text.end()
            self._pending = lambda: lookup_counts(prompt, part.tokens, part.steps, width)
            return part.tokens, result.finish_reasons[0]
        return self._auto(pipe, text, prompt, gc, seeded)

    def _auto(self, pipe, text, prompt: Sequence[int], gc, seeded: bool):
        governor = self.governor
        kind, width = governor.plan(prompt, seeded=seeded)
        shadow = speculate.Shadow(speculate.Lookup(prompt))
        switchable = not (
            seeded or gc.structured_output_config is not None or gc.presence_penalty or gc.frequency_penalty
        )
        stops = set(gc.stop_token_ids) | {gc.eos_token_id}
        budget = gc.max_new_tokens
        ids = list(prompt)
        answer: list[int] = []
        parts: list[tuple[int, int, StepStreamer]] = []  # (width, prompt length, part)
        # Whether the answer may move at all (a closed prompt-lookup pipeline whose opening was never timed cannot
        # be costed): only then are its positions measured while it is generated, rather than once at the end.
        movable = switchable and (self._lookup_pipe is not None or width or self._open_seconds is not None)

        def decide(part: StepStreamer) -> int | None:
            for token in part.tokens[len(part.tokens) - part.steps[-1][1] :]:
                shadow.push(token)
            done = len(answer) + len(part.tokens)
            if done >= budget or stops.intersection(part.tokens[-part.steps[-1][1] :]):
                return None
            if len(part.steps) % speculate.RECONSIDER:
                return None
            opening = 0.0 if self._lookup_pipe is not None or width else self._open_seconds or 0.0
            known = shadow.known()
            (began, _), n = part.steps[0], len(ids)
            prefill = (began - part.began) * (n + len(part.tokens)) / n  # the other pipeline's prefill, scaled
            return speculate.switch(
                shadow.runs[max(0, known - speculate.WINDOW) : known],
                governor.costs,
                width,
                pads_misses=True,
                remaining=min(budget - done, max(done, shadow.lookup.ahead() - done)),
                switch_seconds=opening + prefill,
            )

        while True:
            if width and self._lookup_pipe is None:
                opened = _now()
                self._lookup_pipe = self._open_lookup()
                self._open_seconds = _now() - opened
            _configure(gc, width)
            gc.max_new_tokens = budget - len(answer)
            part = StepStreamer(text, decide if movable and len(parts) < self.MAX_SWITCHES else None)
            result = (self._lookup_pipe if width else pipe).generate(token_inputs(ids), gc, part)
            parts.append((width, len(ids), part))
            answer += part.tokens
            ids += part.tokens
            if part.switch_to is None:
                break
            width = part.switch_to
            log.debug("speculate auto: %d tokens in, continuing with %d drafts a step", len(answer), width)
        text.end()
        governor.continue_with(width)

        def settle() -> speculate.Counts:
            counts = speculate.Counts()
            for drafts, start, part in parts:
                for (t0, _), (t1, _) in pairwise(part.steps[1:]):  # the first step is the prefill
                    governor.costs.observe(1 + drafts, t1 - t0)
                if drafts:
                    part_counts = lookup_counts(ids[:start], part.tokens, part.steps, drafts)
                    counts.drafted += part_counts.drafted
                    counts.accepted += part_counts.accepted
            if len(shadow.runs) == len(answer):  # measured while generating: not replayed again
                governor.remember(kind, prompt, shadow)
            else:
                governor.record(kind, prompt, answer)
            return counts

        self._pending = settle
        return answer, result.finish_reasons[0]

    def settle(self) -> speculate.Counts:
        """Drafted and accepted tokens of the last generation; the governor learns from it."""
        pending, self._pending = self._pending, None
        return pending() if pending is not None else speculate.Counts()


def token_inputs(ids: Sequence[int]) -> ov_genai.TokenizedInputs:
    from aipc.backends.openvino import token_inputs as inputs

    return inputs(ids)


def _configure(gc, width: int) -> None:
    """`gc` set to draft `width` tokens a step by prompt lookup (0: a plain pipeline's request)."""
    gc.num_assistant_tokens = width
    gc.max_ngram_size = speculate.MAX_NGRAM if width else 0


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
