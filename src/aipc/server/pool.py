"""The model pool: models loaded on demand, kept for their keep-alive, unloaded least recently used first.

Like Ollama's scheduler (server/sched.go): the first request for a model loads it while the request waits
(/health and /api/ps show it "loading"); later requests reuse it. Each loaded model has its own `Slots`
(`--parallel` generations at once, `--max-queue` more waiting), so requests to different models run at once.

- keep-alive: once a model has no request left, it stays loaded for its keep-alive (the latest request's,
  else the server's default), then unloads; 0 unloads at once, None (negative in requests) never does.
- budgets: at most `--max-loaded` models, and their memory (estimated from files and KV budget before a load,
  measured as RSS growth after) within `--max-memory`. To make room, idle models are unloaded at once, least
  recently used first; a load waits only while every model it could unload is busy.
- loads run one at a time, in a worker thread; a load that fails fails the requests waiting for it, and the
  model is not kept (the next request tries again).
- unloading closes the runtime's objects, collects garbage and trims the allocator, so memory is given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from starlette.concurrency import run_in_threadpool

from aipc.errors import AipcError, ModelNotFoundError
from aipc.server import memory
from aipc.server.errors import APIError
from aipc.server.scheduler import Slots
from aipc.server.settings import ServerSettings

log = logging.getLogger("aipc.server")

LOADING, READY, UNLOADING = "loading", "ready", "unloading"
_UNSET: Any = object()


class Entry:
    """One model in the pool: loading, then ready with its own slots; what a request holds while it runs."""

    def __init__(self, name: str, keep_alive: float | None) -> None:
        self.name = name  # as requests name it
        self.names = {name}  # and the other names that reach it once loaded (its stored variant's ref)
        self.state = LOADING
        self.model: Any = None
        self.slots: Slots | None = None
        self.context_length: int | None = None
        self.size_bytes = 0
        self.estimate_bytes = 0
        self.load_seconds = 0.0
        self.keep_alive = keep_alive
        self.active = 0  # requests holding it: waiting for the load, for a slot, or generating
        self.last_used = time.monotonic()
        self.expires_at: float | None = None  # wall-clock time of the idle unload; None while busy or forever
        self.external = False  # opened by the caller (tests, embedding): never unloaded or closed here
        self.timer: asyncio.TimerHandle | None = None
        self._ready: asyncio.Future | None = None

    @property
    def ready(self) -> asyncio.Future:
        """Resolved once the model is loaded (or its load failed); made on the event loop when first needed."""
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # waiters read failures
            if self.state == READY:
                self._ready.set_result(self)
        return self._ready

    @property
    def ref(self) -> str:
        return (self.model.info.ref or self.model.info.name) if self.model is not None else self.name

    @property
    def waiting(self) -> int:
        """Requests waiting for this model: for its load, or in its slot queue."""
        if self.slots is None:
            return self.active
        return self.slots.queued + max(self.active - self.slots.running - self.slots.queued, 0)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.expires_at = None


class ModelPool:
    """Models by name; `acquire` a model for a request (loading it if needed), `release` it when done."""

    def __init__(self, settings: ServerSettings, on_load: Callable[..., None], on_unload: Callable[..., None]):
        self.settings = settings
        self.entries: dict[str, Entry] = {}
        self.budget = settings.max_memory if settings.max_memory is not None else memory.default_budget()
        self.pinned: tuple[str, ...] = tuple(n for n in (settings.model,) if n)  # names the operator gave
        self._on_load = on_load
        self._on_unload = on_unload
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Event()  # a model went idle or away: room may be made now
        self._aborted: asyncio.Future | None = None
        self._tasks: set[asyncio.Future] = set()
        self.closed = False

    # --- finding and holding models ---------------------------------------------------------------------
    def find(self, name: str) -> Entry | None:
        entry = self.entries.get(name)
        if entry is not None:
            return entry
        return next((e for e in self.entries.values() if name in e.names and e.state != UNLOADING), None)

    def add_external(self, model: Any, names: set[str]) -> Entry:
        """Serve a model the caller opened (and closes): ready at once, never unloaded here."""
        entry = Entry(model.info.name, None)
        entry.external = True
        files = SimpleNamespace(path=model.info.path, format="openvino-ir" if Path(model.info.path).is_dir() else "")
        entry.estimate_bytes = memory.estimate_bytes(files, self.settings.context_length)
        self._ready(entry, model, 0, model.load_seconds)
        entry.names |= names
        self.entries[entry.name] = entry
        return entry

    async def acquire(self, name: str, keep_alive: float | None = _UNSET) -> Entry:
        """The ready model called `name`, loading it first if needed (the caller waits); the caller must
        `release` it. Raises the load's error when it fails, and 503 when the server is shutting down."""
        entry = self.find(name)
        if entry is None:
            default = self.settings.keep_alive
            entry = Entry(name, default if keep_alive is _UNSET else keep_alive)
            self.entries[name] = entry
            self._spawn(self._load(entry))
        elif keep_alive is not _UNSET:
            entry.keep_alive = keep_alive  # as Ollama: the latest request's keep-alive counts
        entry.active += 1
        entry.cancel_timer()
        try:
            if not entry.ready.done():
                await self._wait_ready(entry)
            entry.ready.result()
        except BaseException:
            self.release(entry)
            raise
        entry.last_used = time.monotonic()
        return entry

    async def _wait_ready(self, entry: Entry) -> None:
        """Wait for the load without cancelling it when this request goes away (others may want the model)."""
        waits = {entry.ready}  # asyncio.wait never cancels what it waits for
        if self._aborted is not None:
            waits.add(self._aborted)
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if self._aborted is not None and self._aborted in done:
            raise self._aborted.exception()

    def release(self, entry: Entry) -> None:
        """A request is done with `entry`: once none is left, its keep-alive starts."""
        entry.active = max(entry.active - 1, 0)
        entry.last_used = time.monotonic()
        self._changed.set()
        if entry.active or entry.state != READY or entry.external:
            return
        keep = entry.keep_alive
        if keep is None:
            return
        if keep <= 0:
            self._spawn(self.unload(entry, "keep_alive"))
            return
        entry.expires_at = time.time() + keep
        entry.timer = asyncio.get_running_loop().call_later(keep, lambda: self._spawn(self._expire(entry)))

    def _spawn(self, work: Any) -> None:
        """Run `work` as a task, kept referenced until it is done."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, entry: Entry) -> None:
        if entry.active == 0 and entry.state == READY:
            await self.unload(entry, "expired")

    # --- loading ----------------------------------------------------------------------------------------
    async def _load(self, entry: Entry) -> None:
        started = time.perf_counter()
        try:
            from aipc.server import library

            s = self.settings
            sources = await run_in_threadpool(
                library.local_sources, entry.name, allow_paths=s.allow_paths, pinned=self.pinned
            )
            entry.estimate_bytes = memory.estimate_bytes(sources[0], s.context_length)
            async with self._load_lock:
                await self._make_room(entry)
                if self.closed:
                    raise _shutting_down()
                before = memory.rss_bytes()
                try:
                    model = await run_in_threadpool(self._open, entry.name)
                except AipcError as exc:
                    if isinstance(exc, ModelNotFoundError):
                        raise
                    raise APIError(
                        500,
                        f"the model {entry.name!r} failed to load: {exc}",
                        type="server_error",
                        code="model_load_failed",
                    ) from None
                grown = memory.rss_bytes() - before
            if self.closed:
                await run_in_threadpool(model.close)
                raise _shutting_down()
        except BaseException as exc:
            entry.state = UNLOADING
            if self.entries.get(entry.name) is entry:
                del self.entries[entry.name]
            self._changed.set()
            self._on_load(entry, "failed", time.perf_counter() - started)
            if not entry.ready.done():
                entry.ready.set_exception(exc)
            return
        self._ready(entry, model, grown, time.perf_counter() - started)
        entry.ready.set_result(entry)
        self._on_load(entry, "loaded", entry.load_seconds)

    def _open(self, name: str) -> Any:
        import aipc

        s = self.settings
        return aipc.load(
            name,
            backend=s.backend,
            device=s.device,
            parallel=s.parallel,
            context_length=s.context_length,
            kv_cache=s.kv_cache,
            speculate=s.speculate,
            sampling={"repetition_penalty": s.repetition_penalty},
        )

    def _ready(self, entry: Entry, model: Any, grown: int, seconds: float) -> None:
        info = model.info
        entry.model = model
        entry.state = READY
        entry.slots = Slots(max(1, min(self.settings.parallel, info.parallel)), self.settings.max_queue)
        entry.context_length = self.settings.context_length or info.context_length
        if model.context_length:  # a created model's num_ctx (its Modelfile) caps what its requests may use
            entry.context_length = min(entry.context_length or model.context_length, model.context_length)
        entry.size_bytes = grown if grown > 0 else entry.estimate_bytes
        entry.load_seconds = seconds
        if info.ref and info.ref not in self.entries:
            entry.names.add(info.ref)  # "smollm2:135m" opened its best variant: a request naming that variant hits it

    async def _make_room(self, entry: Entry) -> None:
        """Unload idle models, least recently used first, until `entry` fits both budgets; wait while the only
        models that could make room are busy. Called with the load lock held."""
        need = entry.estimate_bytes
        if self.budget is not None and need > self.budget:
            raise _too_large(entry.name, need, self.budget)
        while True:
            others = [e for e in self.entries.values() if e is not entry and e.state == READY]
            used = sum(e.size_bytes for e in others)
            fits_memory = self.budget is None or used + need <= self.budget
            if len(others) < self.settings.max_loaded and fits_memory:
                return
            idle = sorted((e for e in others if e.active == 0 and not e.external), key=lambda e: e.last_used)
            if idle:
                await self.unload(idle[0], "evicted")
                continue
            if all(e.external for e in others):
                raise APIError(
                    503,
                    f"no room to load {entry.name!r}: {len(others)} model(s) are loaded and none can be unloaded "
                    f"(--max-loaded {self.settings.max_loaded})",
                    type="server_error",
                    code="no_room",
                )
            log.info("waiting for a busy model to go idle before loading %s", entry.name)
            self._changed.clear()
            await self._changed.wait()

    # --- unloading --------------------------------------------------------------------------------------
    async def unload(self, entry: Entry, reason: str) -> bool:
        """Close `entry`'s model and give its memory back; False when it is busy, external or not loaded."""
        if entry.state != READY or entry.active or entry.external:
            return False
        entry.state = UNLOADING
        entry.cancel_timer()
        if self.entries.get(entry.name) is entry:
            del self.entries[entry.name]
        started = time.perf_counter()
        model, entry.model = entry.model, None
        try:
            await run_in_threadpool(_close, model)
        finally:
            del model
            await run_in_threadpool(memory.give_back)
            self._changed.set()
        self._on_unload(entry, reason, time.perf_counter() - started)
        return True

    async def stop(self, name: str) -> Entry | None:
        """Unload `name` now if idle, else as soon as its requests are done (keep-alive 0); None if not loaded."""
        entry = self.find(name)
        if entry is None:
            return None
        entry.keep_alive = 0
        if entry.active == 0:
            await self.unload(entry, "stopped")
        return entry

    # --- shutting down ----------------------------------------------------------------------------------
    def abort(self, error: BaseException) -> None:
        """Fail the requests waiting for a model to load (the server is shutting down)."""
        if self._aborted is None:
            self._aborted = asyncio.get_running_loop().create_future()
            self._aborted.set_exception(error)
            self._aborted.add_done_callback(lambda f: f.exception())

    async def close(self) -> None:
        self.closed = True
        for entry in list(self.entries.values()):
            entry.cancel_timer()
            if entry.external or entry.model is None:
                continue
            model, entry.model = entry.model, None
            entry.state = UNLOADING
            with contextlib.suppress(Exception):
                await run_in_threadpool(_close, model)
        self.entries.clear()

    # --- what is loaded ---------------------------------------------------------------------------------
    def running(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.state in (LOADING, READY)]


def _close(model: Any) -> None:
    model.close()


def _shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", type="server_error", code="shutting_down")


def _too_large(name: str, need: int, budget: int) -> APIError:
    return APIError(
        507,
        f"model {name!r} needs about {need / 2**30:.1f} GiB of memory, over this server's budget of "
        f"{budget / 2**30:.1f} GiB (--max-memory)",
        type="server_error",
        code="insufficient_memory",
    )
