"""The engine: one opened model, with the same generate/stream/chat for every backend.

The engine owns what must not differ between runtimes: chat formatting with the model's template, stop
strings, finish reasons, and timings computed from the event stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from aipc.backends.base import Backend, ModelInfo
from aipc.engine import template
from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.engine.events import Done, Event, Finished, TextDelta, Usage, compute_timings


class Model:
    """An opened model. Use `aipc.load()` to make one; close it (or use `with`) to free the runtime."""

    def __init__(self, backend: Backend, defaults: GenerationConfig, load_seconds: float) -> None:
        self._backend = backend
        self.defaults = defaults
        self.load_seconds = load_seconds

    @property
    def info(self) -> ModelInfo:
        return self._backend.info

    # --- prompts -------------------------------------------------------------------------------------
    def format(self, messages: Sequence[dict[str, Any]]) -> str:
        """The prompt text the model sees for `messages`, rendered with its own chat template."""
        info = self._backend.info
        return template.render(
            info.chat_template,
            template.validate_messages(messages),
            bos_token=info.bos_token,
            eos_token=info.eos_token,
        )

    def tokenize(self, text: str) -> list[int]:
        return self._backend.tokenize(text)

    # --- generation ----------------------------------------------------------------------------------
    def stream(self, prompt: str, *, system: str | None = None, raw: bool = False, **options: Any) -> Iterator[Event]:
        """Stream the answer to one user prompt: `TextDelta`s, then one `Done`.

        `raw=True` sends `prompt` as is, without the chat template.
        """
        if raw:
            return self._run(prompt, self.defaults.updated(**options))
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.stream_chat(messages, **options)

    def stream_chat(self, messages: Sequence[dict[str, Any]], **options: Any) -> Iterator[Event]:
        """Stream the assistant's next turn for OpenAI-style `messages`."""
        config = self.defaults.updated(**options)  # validate before any work
        return self._run(self.format(messages), config)

    def generate(self, prompt: str, *, system: str | None = None, raw: bool = False, **options: Any) -> str:
        """The whole answer to one user prompt."""
        return _join(self.stream(prompt, system=system, raw=raw, **options))

    def chat(self, messages: Sequence[dict[str, Any]], **options: Any) -> str:
        """The assistant's next turn for OpenAI-style `messages`, as text."""
        return _join(self.stream_chat(messages, **options))

    def _run(self, prompt: str, config: GenerationConfig) -> Iterator[Event]:
        cancel = threading.Event()
        start = time.perf_counter()
        first: float | None = None
        finished: Finished | None = None
        stopper = _StopMatcher(config.stop) if config.stop else None
        stopped = False
        items = self._backend.generate(prompt, config, cancel)
        try:
            for item in items:
                if isinstance(item, Finished):
                    finished = item
                    break
                if not item.text or stopped:
                    continue
                if first is None:
                    first = item.t
                if stopper is None:
                    yield item
                    continue
                text, stopped = stopper.feed(item.text)
                if text:
                    yield TextDelta(text, item.t)
                if stopped:
                    cancel.set()  # the runtime stops at its next token; keep draining to its Finished
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        if finished is None:  # the runtime ended without reporting; treat as cancelled
            finished = Finished("cancelled", 0, 0, time.perf_counter())
        if stopper is not None and not stopped and (rest := stopper.flush()):
            yield TextDelta(rest, finished.t)
        reason = "stop" if stopped else finished.finish_reason
        info = self._backend.info
        yield Done(
            finish_reason=reason,
            usage=Usage(finished.prompt_tokens, finished.completion_tokens),
            timings=compute_timings(start, first, finished.t, finished.completion_tokens),
            backend=info.backend,
            device=info.device,
            token_ids=finished.token_ids,
        )

    # --- lifetime ------------------------------------------------------------------------------------
    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return f"<aipc.Model {i.name} on {i.backend}/{i.device}>"


class _StopMatcher:
    """Finds stop strings across delta boundaries, holding back text that may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._buf = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self._buf += text
        hits = [i for i in (self._buf.find(s) for s in self._stops) if i >= 0]
        if hits:
            out, self._buf = self._buf[: min(hits)], ""
            return out, True
        keep = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(self._buf)), 0, -1):
                if self._buf.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        out = self._buf[: len(self._buf) - keep]
        self._buf = self._buf[len(self._buf) - keep :]
        return out, False

    def flush(self) -> str:
        out, self._buf = self._buf, ""
        return out


def _join(events: Iterator[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def load(
    model: str | None = None,
    backend: str = "auto",
    device: str = "auto",
    **load_options: Any,
) -> Model:
    """Open `model` (a catalog name or a path; None is the embedded default) on the best or chosen device."""
    from aipc.backends import registry
    from aipc.store.resolve import resolve_all

    config = LoadConfig(backend=backend, device=device, **load_options)
    started = time.perf_counter()
    backend_type, dev, source = registry.choose_source(resolve_all(model), config)
    opened = backend_type.load(source, config, dev)
    defaults = GenerationConfig().updated(**source.defaults)
    return Model(opened, defaults, time.perf_counter() - started)
