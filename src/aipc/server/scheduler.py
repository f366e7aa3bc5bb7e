"""Generation slots, the wait queue, and the bridge from a blocking event generator to the event loop.

`Slots` lets `parallel` generations run at once (what the opened model can do) and up to `max_queue` more wait,
in arrival order; the rest get 503 with a Retry-After estimated from recent generation times. A slot is held
until the generation's thread has closed the engine's generator, i.e. until the runtime has really let go, so
the next request never overlaps the last one on a single-stream pipeline.

`EventPump` runs `Model.stream*` (blocking, one token at a time) in its own thread and hands the events to the
event loop, which never blocks. Stopping it (a client left, the server drains) makes the thread leave the
stream at the next event and close it, which cancels the runtime within a token and joins its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aipc.server.errors import APIError, ClientGone

_END = object()


class ServerBusy(APIError):
    def __init__(self, retry_after: int, running: int, queued: int) -> None:
        super().__init__(
            503,
            f"the server is busy ({running} generating, {queued} waiting); retry in about {retry_after} s",
            type="server_error",
            code="server_busy",
            headers={"Retry-After": str(retry_after)},
        )


class Slot:
    """A granted place to generate; give it back with `release()` (idempotent)."""

    def __init__(self, slots: Slots) -> None:
        self._slots = slots
        self._start = time.monotonic()
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._slots._give_back(time.monotonic() - self._start)


class Slots:
    """`parallel` generations at once, `max_queue` more waiting in order, the rest turned away (503)."""

    def __init__(self, parallel: int, max_queue: int) -> None:
        self.parallel = parallel
        self.max_queue = max_queue
        self.running = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._mean_s: float | None = None  # recent generation time, for Retry-After

    @property
    def queued(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self) -> Slot:
        """A slot now, or after the requests ahead; raises `ServerBusy` when the queue is full. Cancelling the
        waiting task (the client left) takes the request out of the queue: it never runs."""
        if self.running < self.parallel and not self.queued:
            self.running += 1
            return Slot(self)
        if self.queued >= self.max_queue:
            raise ServerBusy(self.retry_after(), self.running, self.queued)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                Slot(self).release()  # handed over just as we were cancelled: pass it on
            else:
                self._forget(waiter)
            raise
        return Slot(self)

    def fail_waiting(self, error: BaseException) -> None:
        """Answer every waiting request with `error` (the server is shutting down)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the recent mean generation time times the queue's depth."""
        if self._mean_s is None:
            return 1
        return max(1, min(120, math.ceil(self._mean_s * (self.queued + 1) / self.parallel)))

    def _forget(self, waiter: asyncio.Future) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _give_back(self, held_s: float) -> None:
        self._mean_s = held_s if self._mean_s is None else 0.8 * self._mean_s + 0.2 * held_s
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next in line
                return
        self.running -= 1


class EventPump:
    """Iterates a blocking event generator in a thread; `async for` reads its events on the event loop.

    `start()` is called in the thread (so prompt formatting and tokenizing do not block the loop either);
    `on_exit` is called on the loop once the generator is closed and the thread is done with the runtime.
    """

    def __init__(self, start: Callable[[], Iterator[Any]], on_exit: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: deque[Any] = deque()  # touched on the loop only
        self._arrived = asyncio.Event()
        self._stop = threading.Event()
        self._on_exit = on_exit
        self.finished = asyncio.Event()
        self._thread = threading.Thread(target=self._work, args=(start,), name="aipc-request", daemon=True)
        self._thread.start()

    def _post(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._push, item)
        except RuntimeError:  # the loop is closed: the server is gone, nobody reads
            self._stop.set()

    def _work(self, start: Callable[[], Iterator[Any]]) -> None:
        try:
            events = start()
            try:
                for event in events:
                    if self._stop.is_set():
                        break
                    self._post(event)
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()  # cancels the runtime if we left early, and joins it
        except BaseException as exc:  # raised on the loop, in the request that asked
            self._post(exc)
        finally:
            self._post(_END)
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._exited)

    def _push(self, item: Any) -> None:
        self._items.append(item)
        self._arrived.set()

    def _exited(self) -> None:
        self.finished.set()
        self._on_exit()

    def stop(self) -> None:
        """Leave the stream at the next event (thread-safe, idempotent)."""
        self._stop.set()

    def abort(self, error: APIError) -> None:
        """Stop, and make the reader see `error` next (the server is shutting down). Call on the loop."""
        self._stop.set()
        self._items.appendleft(error)
        self._arrived.set()

    def __aiter__(self) -> EventPump:
        return self

    async def __anext__(self) -> Any:
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        item = self._items[0]
        if item is not _END:  # the end stays: every later read ends too
            self._items.popleft()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def ready(self) -> list[Any]:
        """The events already waiting, without blocking (to write several tokens in one send); stops at the end
        or at an error, which the next `__anext__` reports."""
        out = []
        while self._items and not (self._items[0] is _END or isinstance(self._items[0], BaseException)):
            out.append(self._items.popleft())
        return out


async def wait_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    """Returns when the client has closed the connection (the request body has been read by then)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(
    receive: Callable[[], Awaitable[dict]],
    awaitable: Awaitable[Any],
    discard: Callable[[Any], None] | None = None,
) -> Any:
    """The result of `awaitable`, or `ClientGone` if the client leaves first (the awaitable is then cancelled,
    and `discard` gets a result that arrived anyway, such as a slot to give back)."""
    task = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(wait_disconnect(receive))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watch.cancel()
        raise
    if task in done:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled() and task.exception() is None and discard is not None:
        discard(task.result())
    raise ClientGone()
