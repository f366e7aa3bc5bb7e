"""The engine: one opened model, with the same generate/stream/chat for every backend.

The engine owns what must not differ between runtimes: chat formatting with the model's template, stop
strings, finish reasons, and timings computed from the event stream.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from aipc.backends.base import Backend, ModelInfo
from aipc.backends.scoring import Scorer
from aipc.engine import prompt, template
from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.engine.defaults import OPTIONS, SamplingDefaults
from aipc.engine.embeddings import EmbedderCache
from aipc.engine.events import Done, Event, Finished, TextDelta, Usage, compute_timings
from aipc.engine.stops import StopMatcher, tokens_to_stop
from aipc.errors import (
    AipcError,
    ContextLengthError,
    ConversionError,
    GenerationError,
    InvalidConfigError,
    ModelNotFoundError,
    UsageError,
)

if TYPE_CHECKING:
    from aipc.engine.tools.session import ToolPlan

log = logging.getLogger("aipc")


class ChatPrompt:
    """A chat request encoded for this model: the prompt's token ids, and the plan for its tools (None for a
    request without tools or tool turns). `encode(backend)` re-encodes it for another backend (the NPU's
    fallback device), since tokenizers may differ."""

    def __init__(self, ids: list[int], plan: ToolPlan | None, encode: Callable[[Backend], list[int]]) -> None:
        self.ids = ids
        self.plan = plan
        self.encode = encode


class Model:
    """An opened model. Use `aipc.load()` to make one; close it (or use `with`) to free the runtime."""

    def __init__(
        self,
        backend: Backend,
        defaults: GenerationConfig,
        load_seconds: float,
        fallback: Callable[[], Backend | None] | None = None,
        sampling: SamplingDefaults | None = None,
        *,
        template: str | None = None,
        system: str | None = None,
        context_length: int | None = None,
        answer_limit: int | None = None,
    ) -> None:
        self._backend = backend
        self.defaults = defaults
        # Where each default sampling value came from (`--verbose` prints `sampling.summary()`).
        self.sampling = sampling or SamplingDefaults({k: getattr(defaults, k) for k in OPTIONS})
        self.load_seconds = load_seconds
        # A created model's own settings (`aipc create`): a chat template used instead of the model's, a system
        # prompt for requests that bring none, and a lower cap on prompt + answer tokens.
        self.template = template
        self.system = system
        self.context_length = context_length
        self.answer_limit = answer_limit  # its own max_tokens (num_predict), where it sets one
        self._fallback = fallback  # opens the model off the NPU when a prompt is over the NPU pipeline's limit
        self._alternative: Backend | None = None
        self._scorers: dict[int, Scorer] = {}  # per backend, opened on first need (log-probs, eval)
        self._embedders = EmbedderCache()  # likewise, for embeddings
        self._score_lock = threading.Lock()
        self._token_texts: dict[int, str] = {}
        self._token_bytes: dict[int, bytes] = {}

    @property
    def info(self) -> ModelInfo:
        return self._backend.info

    @property
    def structured_output(self) -> bool:
        """Whether the runtime can constrain decoding (JSON Schema; forced tool calls) on this device."""
        return bool(getattr(self._backend, "structured_output", False))

    @property
    def where(self) -> str:
        """The backend and device, in words, for messages."""
        return f"the {self.info.backend} backend on {self.info.device}"

    @property
    def chat_template(self) -> str | None:
        """The chat template prompts are rendered with: a created model's own, else the model's."""
        return self.template or self.info.chat_template

    # --- prompts -------------------------------------------------------------------------------------
    def format(self, messages: Sequence[dict[str, Any]]) -> str:
        """The prompt text the model sees for `messages`, rendered with its own chat template."""
        return self._render(self._backend, self._prepared(messages))

    def encode(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The prompt's token ids for `messages`: the template's markup may hold control tokens, message
        content never does (typed `<|im_end|>` stays text; see `aipc.engine.prompt`)."""
        return self._encode_chat(self._backend, self._prepared(messages))

    def tokenize(self, text: str) -> list[int]:
        """Token ids of raw text (control-token strings in it become control tokens, as in a raw prompt)."""
        return self._backend.tokenize(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._backend.detokenize(ids)

    def _prepared(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Validated messages, led by the model's own system prompt when they bring none."""
        clean = template.validate_messages(messages)
        if self.system and not any(m["role"] == "system" for m in clean):
            clean.insert(0, {"role": "system", "content": self.system})
        return clean

    def _render(self, backend: Backend, messages: list[dict[str, Any]], continue_final: bool = False) -> str:
        info = backend.info
        source = self.template or info.chat_template
        last = messages[-1] if messages else {}
        partial = last.get("content") if last.get("role") == "assistant" else None
        if continue_final and isinstance(partial, str) and partial.strip():
            # The answer goes on from the last assistant message, as Ollama continues one (and transformers'
            # `continue_final_message`): the conversation rendered as history, cut right after that text.
            text = template.render(
                source, messages, bos_token=info.bos_token, eos_token=info.eos_token, add_generation_prompt=False
            )
            at = text.rfind(partial.strip())
            if at >= 0:
                return text[: at + len(partial.strip())]
        return template.render(source, messages, bos_token=info.bos_token, eos_token=info.eos_token)

    def _encode_chat(self, backend: Backend, messages: list[dict[str, Any]], continue_final: bool = False) -> list[int]:
        escaped, changed = prompt.escape_messages(messages, backend.info.special_tokens)
        text = self._render(backend, escaped, continue_final)
        return prompt.tokenize_pieces(text, backend.tokenize) if changed else backend.tokenize(text)

    # --- generation ----------------------------------------------------------------------------------
    def stream(
        self, prompt: str | Sequence[int], *, system: str | None = None, raw: bool = False, **options: Any
    ) -> Iterator[Event]:
        """Stream the answer to one user prompt: `TextDelta`s, then one `Done`.

        `raw=True` sends `prompt` as is, without the chat template: text (control-token strings in it are
        control tokens) or token ids.
        """
        if raw:
            config = self.defaults.updated(**options)
            if isinstance(prompt, str):
                return self._run(lambda backend: backend.tokenize(prompt), config)
            ids = self.check_ids(prompt)
            return self._run(lambda backend: ids, config)
        if not isinstance(prompt, str):
            raise UsageError("a prompt of token ids needs raw=True (the chat template takes text)")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.stream_chat(messages, **options)

    def stream_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool | None = None,
        **options: Any,
    ) -> Iterator[Event]:
        """Stream the assistant's next turn for OpenAI-style `messages`: `TextDelta`s, a `ToolCall` per call
        when `tools` (OpenAI's function tools) are given, then `Done`."""
        config = self.defaults.updated(**options)  # validate before any work
        chat = self.prepare(messages, tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls)
        return self.stream_prepared(chat, **options) if chat.plan is not None else self._run(chat.encode, config)

    def prepare(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool | None = None,
        continue_final: bool = False,
    ) -> ChatPrompt:
        """A chat request checked and encoded (template errors surface here, before any stream starts).
        `continue_final`: a last assistant message is the start of the answer, which goes on from it (Ollama's
        way; without tools), rather than a finished turn."""
        from aipc.engine import tools as tool_calling

        request = tool_calling.parse_request(tools, tool_choice, parallel_tool_calls)
        turns = any(isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")) for m in messages)
        if request is None and not turns:
            clean = self._prepared(messages)
            ids = self._encode_chat(self._backend, clean, continue_final)
            return ChatPrompt(
                ids, None, lambda b: ids if b is self._backend else self._encode_chat(b, clean, continue_final)
            )
        checked = tool_calling.validate_messages(messages)
        if self.system and not any(m["role"] == "system" for m in checked):
            checked.insert(0, {"role": "system", "content": self.system})
        source = self.template or self.info.chat_template
        from aipc.engine.tools.session import ToolPlan

        plan = ToolPlan.make(request, tool_calling.format_for(source, self.info.ref or self.info.name))

        def encode(backend: Backend) -> list[int]:
            info = backend.info
            rendered = tool_calling.render_prompt(
                self.template or info.chat_template,
                checked,
                request,
                plan.fmt,
                bos_token=info.bos_token,
                eos_token=info.eos_token,
                specials=info.special_tokens,
            )
            text = rendered.text
            return prompt.tokenize_pieces(text, backend.tokenize) if rendered.escaped else backend.tokenize(text)

        ids = encode(self._backend)
        return ChatPrompt(ids, plan, lambda b: ids if b is self._backend else encode(b))

    def stream_prepared(self, chat: ChatPrompt, **options: Any) -> Iterator[Event]:
        """Stream the answer to a prepared chat request (the server prepares in one thread, streams in another)."""
        config = self.defaults.updated(**options)
        if chat.plan is None:
            return self._run(chat.encode, config)
        from aipc.engine.tools import session

        backend = self._backend
        can = self.structured_output
        session.check(chat.plan, config, can_constrain=can, where=self.where)

        def run(extra: str, cfg: GenerationConfig) -> Iterator[Event]:
            def encode(b: Backend) -> list[int]:
                return chat.encode(b) + (b.tokenize(extra) if extra else [])

            return self._run(encode, cfg)

        return session.stream_calls(
            run,
            chat.plan,
            config,
            n_prompt=len(chat.ids),
            count_tokens=lambda text: len(backend.tokenize(text)) if text else 0,
            can_constrain=can,
        )

    @property
    def samples_choices_together(self) -> bool:
        """Whether the runtime can sample several answers to one prompt in one generation (`stream_choices`)."""
        return getattr(self._backend, "generate_choices", None) is not None

    def stream_choices(self, prompt: Sequence[int], n: int, **options: Any) -> Iterator[tuple[int, Event]] | None:
        """n sampled answers to one raw prompt (token ids) from one generation, where the runtime can sample
        several sequences at once (OpenVINO's num_return_sequences: one prefill, the n sequences decoded as a
        batch): `(choice, event)` pairs, each choice's events in order, its `Done` last. None where it cannot
        (greedy decoding, log-probs, a JSON schema, a runtime or device without it): run the choices one by one.
        Nothing arrives before every sequence has ended."""
        config = self.defaults.updated(**options)
        backend = self._backend
        run = getattr(backend, "generate_choices", None)
        if run is None or n < 2 or config.greedy or config.logprobs is not None or config.json_schema is not None:
            return None
        ids, config = self._capped(self.check_ids(prompt), config)
        return self._choices(run, backend, ids, n, config)

    def _choices(self, run, backend: Backend, ids: list[int], n: int, config: GenerationConfig):
        cancel = threading.Event()
        start = time.perf_counter()
        for index, items in enumerate(run(ids, config, n, cancel)):
            for event in self._follow(items, backend, ids, config, cancel, start):
                yield index, event

    def generate(
        self, prompt: str | Sequence[int], *, system: str | None = None, raw: bool = False, **options: Any
    ) -> str:
        """The whole answer to one user prompt."""
        return _join(self.stream(prompt, system=system, raw=raw, **options))

    def chat(self, messages: Sequence[dict[str, Any]], **options: Any) -> str:
        """The assistant's next turn for OpenAI-style `messages`, as text (`stream_chat` gives tool calls)."""
        return _join(self.stream_chat(messages, **options))

    def _run(self, encode: Callable[[Backend], list[int]], config: GenerationConfig) -> Iterator[Event]:
        cancel = threading.Event()
        start = time.perf_counter()
        backend = self._backend
        ids, config = self._capped(encode(backend), config)
        try:
            items = backend.generate(ids, config, cancel)
        except ContextLengthError as exc:
            backend = self._route_off_npu(exc)
            ids, config = self._capped(encode(backend), config)
            items = backend.generate(ids, config, cancel)
        yield from self._follow(items, backend, ids, config, cancel, start)

    def _follow(
        self,
        items: Iterator[TextDelta | Finished],
        backend: Backend,
        ids: list[int],
        config: GenerationConfig,
        cancel: threading.Event,
        start: float,
    ) -> Iterator[Event]:
        """The engine's events for a runtime's items: stop strings applied, log-probs attached, then `Done`."""
        first: float | None = None
        finished: Finished | None = None
        stopper = StopMatcher(config.stop) if config.stop else None
        stopped = False
        if config.logprobs is not None and not getattr(backend, "reports_logprobs", False):
            from aipc.engine.logprobs import scored_after

            make = backend  # bound now: the scorer belongs to the backend that generated

            items = scored_after(
                items,
                ids,
                config.logprobs,
                lambda seq: self._score(make, seq),
                backend.detokenize,
                stops=config.stop or (),
                cancel=cancel,
            )
        pending: tuple = ()  # log-probs of tokens whose text is held back (no text yet, or a possible stop string)
        try:
            for item in items:
                if isinstance(item, Finished):
                    finished = item
                    break
                if stopped:
                    continue
                if not item.text:
                    pending += item.tokens
                    continue
                if first is None:
                    first = item.t
                if stopper is None:
                    yield TextDelta(item.text, item.t, pending + item.tokens) if pending else item
                    pending = ()
                    continue
                text, stopped = stopper.feed(item.text)
                pending += item.tokens
                if text:
                    yield TextDelta(text, item.t, pending)
                    pending = ()
                if stopped:
                    cancel.set()  # the runtime stops at its next token; keep draining to its Finished
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        if finished is None:  # the runtime ended without reporting; treat as cancelled
            finished = Finished("cancelled", 0, 0, time.perf_counter())
        if stopper is not None and not stopped and (rest := stopper.flush()):
            yield TextDelta(rest, finished.t, pending)
        reason = "stop" if stopped else finished.finish_reason
        if stopped and finished.token_ids:  # tokens the runtime made after the stop string are not the answer's
            kept = tokens_to_stop(finished.token_ids, backend.detokenize, config.stop)
            finished = dataclasses.replace(finished, completion_tokens=kept, token_ids=finished.token_ids[:kept])
        info = backend.info
        yield Done(
            finish_reason=reason,
            usage=Usage(finished.prompt_tokens, finished.completion_tokens),
            timings=compute_timings(start, first, finished.t, finished.completion_tokens),
            backend=info.backend,
            device=info.device,
            token_ids=finished.token_ids,
            model=info.ref or info.name,
            end_logprob=None if stopped else finished.end_logprob,
            drafted=finished.drafted,
            accepted=finished.accepted,
        )

    def _capped(self, ids: list[int], config: GenerationConfig) -> tuple[list[int], GenerationConfig]:
        """A created model's context cap (`PARAMETER num_ctx`): the prompt must fit, the answer fills the rest."""
        if self.context_length is None:
            return ids, config
        if len(ids) >= self.context_length:
            raise ContextLengthError(
                f"the prompt has {len(ids)} tokens; this model's context is {self.context_length} tokens (num_ctx)",
                limit=self.context_length - 1,
                requested=len(ids),
            )
        return ids, config.updated(max_tokens=min(config.max_tokens, self.context_length - len(ids)))

    def _route_off_npu(self, exc: ContextLengthError) -> Backend:
        """A prompt over the NPU pipeline's MAX_PROMPT_LEN goes to the next device instead of failing."""
        if self._fallback is None:
            raise exc
        if self._alternative is None:
            self._alternative = self._fallback()
            if self._alternative is None:
                raise exc
        alt = self._alternative.info
        log.warning(
            "the prompt has %d tokens, over the NPU pipeline's %d; answering on %s/%s",
            exc.requested,
            exc.limit,
            alt.backend,
            alt.device,
        )
        return self._alternative

    def scorer(self) -> Scorer:
        """The runtime's teacher-forced next-token log-probs (`aipc eval` measures quality with them); a backend
        without that capability is refused by name, with the backends that have it."""
        return self._scorer_of(self._backend, "eval")

    def _scorer_of(self, backend: Backend, need: str) -> Scorer:
        make = getattr(backend, "scorer", None)
        if make is None:
            from aipc.backends.registry import SCORING

            raise UsageError(
                f"the {backend.info.backend} backend cannot score tokens (needed by {need}): "
                f"use one of {', '.join(SCORING)} (--backend)"
            )
        return make()

    def _score(self, backend: Backend, ids: Sequence[int]) -> Any:
        """Teacher-forced log-probs of `ids` ([len, vocab]) from `backend`'s scorer, opened once and kept;
        one sequence at a time (a scorer holds one inference state)."""
        with self._score_lock:
            scorer = self._scorers.get(id(backend))
            if scorer is None:
                scorer = self._scorers[id(backend)] = self._scorer_of(backend, "log-probabilities")
            return scorer.next_token_logprobs(ids)

    def embed(
        self, texts: Sequence[str | Sequence[int]], *, truncate: bool = True, cancel: threading.Event | None = None
    ) -> Any:
        """Unit-length embeddings of `texts` (or token ids) (`aipc.engine.embeddings.Embeddings`: vectors, tokens):
        the mean of the model's last hidden state, as Ollama computes them for a generative model. A text over
        the context is cut to it, or refused with `truncate=False`."""
        from aipc.engine.embeddings import embed

        limits = [n for n in (self.context_length, self.info.context_length) if n]
        context = min(limits) if limits else None
        return embed(self._backend, self._embedders, texts, context, truncate, self.check_ids, cancel)

    def prompt_logprobs(self, ids: Sequence[int], top: int = 0) -> list[Any]:
        """Each prompt token's `TokenLogprob` given the tokens before it (the first: None, nothing predicts it),
        with the `top` most likely tokens at each position: what `echo` with `logprobs` returns."""
        from aipc.engine.logprobs import prompt_logprobs

        ids = [int(i) for i in ids]
        if len(ids) < 2:
            return [None] * len(ids)
        return prompt_logprobs(self._score(self._backend, ids), ids, top)

    def check_ids(self, ids: Sequence[int]) -> list[int]:
        """Token ids from outside (an API's prompt of ids) checked against the vocabulary before any runtime sees
        them: an id a runtime does not have can crash it rather than fail."""
        size = getattr(self._backend, "vocab_size", None)
        out = [int(i) for i in ids]
        bad = [i for i in out if i < 0 or (size is not None and i >= size)]
        if bad:
            limit = f"0 to {size - 1}" if size is not None else "integers >= 0"
            raise UsageError(f"token id {bad[0]} is not in this model's vocabulary ({limit})")
        return out

    def token_text(self, ident: int) -> str:
        """One token's text, control tokens as their strings (kept: clients ask for the same tokens often)."""
        text = self._token_texts.get(ident)
        if text is None:
            text = self._token_texts[ident] = self._backend.detokenize([ident])
        return text

    def token_bytes(self, ident: int) -> bytes:
        """One token's bytes: the runtime's own where it gives them (a token may be part of a UTF-8 character),
        else the UTF-8 of its text (kept, as texts are: log-probs ask for each alternative's bytes)."""
        known = self._token_bytes.get(ident)
        if known is None:
            raw = getattr(self._backend, "token_bytes", None)
            known = raw(ident) if raw is not None else self.token_text(ident).encode("utf-8")
            self._token_bytes[ident] = known
        return known

    def reset_cache(self) -> None:
        """Forget any KV cache kept for the next chat turn (for measuring a turn without reuse)."""
        for backend in (self._backend, self._alternative):
            reset = getattr(backend, "reset_cache", None)
            if reset is not None:
                reset()

    # --- lifetime ------------------------------------------------------------------------------------
    def close(self) -> None:
        self._scorers.clear()
        self._embedders.close()
        self._backend.close()
        if self._alternative is not None:
            self._alternative.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return f"<aipc.Model {i.name} on {i.backend}/{i.device}>"


def _join(events: Iterator[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def load(
    model: str | None = None,
    backend: str = "auto",
    device: str = "auto",
    *,
    sampling: dict[str, Any] | None = None,
    **load_options: Any,
) -> Model:
    """Open `model` (a catalog name or a path; None is the embedded default) on the best or chosen device.

    Load options are `LoadConfig`'s (`context_length=N`, `kv_cache="q8"`, ...). Requests sample with the model's
    defaults (`aipc.engine.defaults`) unless they say otherwise; `sampling` replaces some of those defaults
    for every request (`sampling={"repetition_penalty": 1.2}`).
    If the best choice fails to load or compile, the next is tried, and the reason is logged in one line."""
    from aipc.backends import registry, speculate
    from aipc.engine import defaults as sampling_defaults
    from aipc.store.resolve import resolve_all

    config = LoadConfig(backend=backend, device=device, **load_options)
    overrides = {k: v for k, v in (sampling or {}).items() if v is not None}
    GenerationConfig().updated(**overrides)  # a bad value fails before the (slow) load
    started = time.perf_counter()
    speculation = speculate.parse(config.speculate)
    if speculation.mode == "draft":
        resolve_all(speculation.draft)  # an unknown draft model fails before the (slow) load, not once per backend
    choices = registry.candidates(resolve_all(model), config)
    opened, source = _open_first(choices, config)
    resolved = sampling_defaults.resolve(source)
    resolved = SamplingDefaults({**resolved.values, **overrides}, resolved.origins, resolved.model, overrides)
    # A created model's other parameters (stop, seed, max_tokens: `aipc create`) apply as they are.
    defaults = GenerationConfig().updated(**{**source.defaults, **resolved.values})
    fallback = None
    if opened.info.device.startswith("npu"):

        def fallback() -> Backend | None:
            """The next choice off the NPU, for prompts over the NPU pipeline's limit (opened on first need)."""
            rest = ((b, d, s) for b, d, s in choices if not d.name.startswith("npu"))
            try:
                return _open_first(rest, config)[0]
            except AipcError:
                return None

    return Model(
        opened,
        defaults,
        time.perf_counter() - started,
        fallback,
        resolved,
        template=source.template,
        system=source.system,
        context_length=source.context_length,
        answer_limit=source.defaults.get("max_tokens"),
    )


def _open_first(choices, config: LoadConfig) -> tuple[Backend, Any]:
    """Open the first choice that loads; each failure is logged in one line and the next choice is tried."""
    last: AipcError | None = None
    for backend_type, device, source in choices:
        try:
            return backend_type.load(source, config, device), source
        except (InvalidConfigError, ModelNotFoundError):
            raise  # an option out of range, or files gone: the same on every backend
        except (UsageError, ConversionError, GenerationError) as exc:
            last = exc
            log.warning("could not load on %s/%s (%s); trying the next choice", backend_type.name, device.name, exc)
    if last is not None:
        raise last
    raise UsageError("no device could open this model")
