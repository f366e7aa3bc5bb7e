"""OpenVINO GenAI with continuous batching: many generations share one `ContinuousBatchingPipeline`.

Why: one stream leaves most of a CPU's (or GPU's) compute idle between tokens; stepping several requests
together multiplies the aggregate tokens/s (on the project's 2-core machine: 63 tokens/s with one stream,
301 with 4, 470 with 8). `aipc serve --parallel N` opens this mode (`LoadConfig.parallel > 1`); the NPU's
static pipeline cannot batch, so there the registry keeps the single `LLMPipeline`.

One scheduler thread owns the pipeline. `generate` hands it a request and reads that request's queue; the
thread adds waiting requests, calls `step()` (which releases the GIL), and turns each request's new token ids
into text with OpenVINO's own `TextStreamer` (control tokens kept, as `LLMPipeline` streams them here). A request
whose `cancel` is set is dropped from the batch before the next step, and its consumer returns only once the
thread has let go of it.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from time import perf_counter as _now

import openvino_genai as ov_genai

from aipc.backends.base import DeviceInfo
from aipc.backends.openvino import (
    _FINISH,
    OpenVINOBackend,
    OpenVINOModel,
    _last_line,
    pipeline_properties,
    token_inputs,
)
from aipc.backends.openvino_speculate import text_streamer
from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.engine.events import Finished, TextDelta
from aipc.errors import GenerationError
from aipc.store.resolve import ModelSource

_END = object()
_RUNNING = ov_genai.GenerationStatus.RUNNING
# How long a consumer that leaves waits for the scheduler thread to drop its request (one step, normally).
_RELEASE_TIMEOUT_S = 30.0


class OpenVINOBatchedBackend(OpenVINOBackend):
    """The OpenVINO runtime type, opening models in a continuous-batching pipeline."""

    def supports(self, device: DeviceInfo) -> bool:
        """Continuous batching needs dynamic shapes and a paged KV cache: CPU and GPU, not the NPU."""
        return not device.name.startswith("npu")

    def load(self, source: ModelSource, config: LoadConfig, device: DeviceInfo) -> OpenVINOBatchedModel:
        return OpenVINOBatchedModel(source, config, device)


class _Request:
    """One generation inside the batch: its inputs, its output queue, and its progress."""

    __slots__ = (
        "cancel",
        "config",
        "handle",
        "input_ids",
        "n_prompt",
        "out",
        "reason",
        "released",
        "streamer",
        "tokens",
    )

    def __init__(self, input_ids, n_prompt: int, config: ov_genai.GenerationConfig, cancel: threading.Event) -> None:
        self.input_ids = input_ids
        self.n_prompt = n_prompt
        self.config = config
        self.cancel = cancel
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.released = threading.Event()  # set once the scheduler thread has let go of this request
        self.handle = None
        self.streamer = None
        self.tokens: list[int] = []  # the generated ids, end-of-turn included (log-probs score them)
        self.reason = "stop"

    def on_text(self, text: str) -> bool:
        self.out.put(TextDelta(text, _now()))
        return False

    def finish(self, reason: str) -> None:
        if self.streamer is not None and reason != "cancelled":
            self.streamer.end()  # flushes text held back for an incomplete character
        self.handle = self.streamer = None
        self.out.put(Finished(reason, self.n_prompt, len(self.tokens), _now(), tuple(self.tokens)))
        self.out.put(_END)
        self.released.set()

    def fail(self, exc: BaseException) -> None:
        self.handle = self.streamer = None
        self.out.put(exc)
        self.out.put(_END)
        self.released.set()


class OpenVINOBatchedModel(OpenVINOModel):
    """One `ContinuousBatchingPipeline` on one device, stepped by one thread for every caller."""

    def __init__(self, source: ModelSource, config: LoadConfig, device: DeviceInfo) -> None:
        super().__init__(source, config, device)
        self.info = replace(self.info, parallel=config.parallel)
        self._cond = threading.Condition()
        self._waiting: list[_Request] = []
        self._closed = False
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="aipc-batch", daemon=True)
        self._thread.start()

    def _open(self, path: Path, config: LoadConfig, device: DeviceInfo) -> ov_genai.ContinuousBatchingPipeline:
        scheduler = ov_genai.SchedulerConfig()
        scheduler.max_num_seqs = max(config.parallel, 1)
        # Chats resend their history every turn; cached prefixes make that prefill nearly free.
        scheduler.enable_prefix_caching = True
        props = pipeline_properties(config, device, path)
        props.pop("NUM_STREAMS", None)  # the batch, not the stream count, is the unit of parallelism here
        return ov_genai.ContinuousBatchingPipeline(str(path), scheduler, device.runtime_name, props)

    def _default_generation_config(self) -> ov_genai.GenerationConfig:
        return self._pipe.get_config()

    def _speculation(self, config: LoadConfig, device: DeviceInfo, source: ModelSource) -> None:
        """Batching many requests is this mode's speed-up: auto decodes plainly, lookup and draft are refused."""
        from aipc.backends import speculate

        if speculate.parse(config.speculate).mode in ("lookup", "draft"):
            raise speculate.refuse(
                "OpenVINO's continuous-batching mode (parallel > 1)",
                config.speculate,
                "aipc speculates one generation at a time; use parallel 1 to speculate",
            )
        return None

    # Prefix caching keeps the blocks of every recent prompt, shared by all callers: no one chat's cache to drop.
    reset_cache = None
    # Several choices of one request run as concurrent requests of the scheduler (the server's `--parallel`).
    generate_choices = None

    def generate(
        self, prompt: Sequence[int], config: GenerationConfig, cancel: threading.Event
    ) -> Iterator[TextDelta | Finished]:
        return self._follow(_Request(token_inputs(prompt).input_ids, len(prompt), self._config(config), cancel))

    def _follow(self, request: _Request) -> Iterator[TextDelta | Finished]:
        with self._cond:
            if self._closed:
                raise GenerationError("the model is closed")
            self._waiting.append(request)
            self._cond.notify()
        try:
            while (item := request.out.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            request.cancel.set()
            with self._cond:
                self._cond.notify()
            request.released.wait(_RELEASE_TIMEOUT_S)

    # --- the scheduler thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        active: dict[int, _Request] = {}
        try:
            while True:
                with self._cond:
                    while not self._waiting and not active and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        break
                    new, self._waiting = self._waiting, []
                for request in new:
                    self._admit(request, active)
                for rid, request in list(active.items()):
                    if request.cancel.is_set():
                        request.handle.cancel()
                        del active[rid]
                        request.finish("cancelled")
                if not active and not self._pipe.has_non_finished_requests():
                    continue
                try:  # with nothing active, a step still frees the KV blocks of requests just cancelled
                    with self._weights.settling():  # the first step repacks the weights (`aipc.backends.mapped`)
                        self._pipe.step()
                except RuntimeError as exc:
                    error = GenerationError(f"OpenVINO generation failed: {_last_line(exc)}")
                    for request in active.values():
                        request.fail(error)
                    active.clear()
                    continue
                for rid, request in list(active.items()):
                    if self._collect(request):
                        del active[rid]
        finally:
            with self._cond:
                left, self._waiting = [*self._waiting, *active.values()], []
            for request in left:
                request.finish("cancelled")

    def _admit(self, request: _Request, active: dict[int, _Request]) -> None:
        if request.cancel.is_set():
            request.finish("cancelled")
            return
        rid = next(self._ids)
        try:
            request.handle = self._pipe.add_request(rid, request.input_ids, request.config)
        except RuntimeError as exc:
            request.fail(GenerationError(f"OpenVINO could not start the generation: {_last_line(exc)}"))
            return
        # Control tokens are kept (tool-call markup is made of them); end-of-turn ids never reach the streamer.
        request.streamer = text_streamer(self._tok, request.on_text)
        active[rid] = request

    def _collect(self, request: _Request) -> bool:
        """Stream what `request` generated in the last step; True once it has finished."""
        handle = request.handle
        status = handle.get_status()
        while handle.can_read():
            for output in handle.read().values():
                ids = list(output.generated_ids)
                request.tokens += [int(i) for i in ids]
                text_ids = [i for i in ids if i not in self._stop_ids]
                if text_ids:
                    request.streamer.write(text_ids)
                if output.finish_reason != ov_genai.GenerationFinishReason.NONE:
                    request.reason = _FINISH.get(output.finish_reason, "stop")
        if status == _RUNNING:
            return False
        if status == ov_genai.GenerationStatus.IGNORED:
            request.fail(GenerationError("OpenVINO ignored the request: its prompt does not fit the KV cache"))
        else:
            request.finish(request.reason)
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(_RELEASE_TIMEOUT_S)
        self._pipe = None
