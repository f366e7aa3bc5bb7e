"""Weights a runtime maps from disk and stops reading once it has made its own copy.

OpenVINO maps an IR's `.bin` file into the process and compiles from it; on its first inference the CPU plugin
repacks every compressed matmul's weights into its own layout and never reads the mapped ones again. The mapped
pages still count in the process's resident set, so the weights are resident twice at the end of that first
inference (the real-scale Phi-3-mini: 1.8 GB mapped + 1.8 GB repacked). The pages are the file's (a shared,
read-only mapping holds no data of its own), so asking the kernel to reclaim them (`MADV_PAGEOUT`) loses nothing:
a page read again is mapped again from the page cache or the file. PAGEOUT, not DONTNEED: the regions are read
from /proc/self/maps while the runtime maps and unmaps memory in other threads, so one may have become another
mapping by the time of the call, and DONTNEED would zero an anonymous one under the runtime (a full test run met a
segfault so); PAGEOUT never discards data (anonymous pages with no swap stay as they are). Kernels before 5.4
refuse it. PAGEOUT leaves pages that another mapping also holds (a second pipeline or process on the same
file), so the pass after the runtime returns, made from the thread that called it, uses DONTNEED, which releases
them from this process whatever else maps them; the runtime is not mapping memory then (another model generating
in the same process could be, which leaves a far narrower window than a pass every 20 ms during a compile).

`MappedWeights.settling()` does that while a pipeline compiles and during its first inference: a thread releases
the mapped pages every `INTERVAL_S`, so only the ones being read at that moment stay resident, and once more at the
end. Later inferences run without it (`opened()` arms it again for a pipeline opened later). Linux only; elsewhere
nothing is done.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("aipc")

INTERVAL_S = 0.02
_MADV_DONTNEED = 4
_MADV_PAGEOUT = 21
_SUPPORTED = sys.platform.startswith("linux") and os.path.exists("/proc/self/maps")
_madvise = None


def _libc_madvise():
    global _madvise
    if _madvise is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
        _madvise = libc.madvise
    return _madvise


def shared_read_only_regions(prefix: str, maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """(start, end) of every shared, read-only mapping of a file whose path starts with `prefix`."""
    regions = []
    with open(maps) as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or not parts[5].startswith(prefix):
                continue
            perms = parts[1]
            if perms[1] == "w" or perms[3] != "s":  # private or writable pages may hold data the file does not
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            regions.append((start, end))
    return regions


def release(prefix: str, advice: int = _MADV_PAGEOUT) -> int:
    """Release the resident pages of shared, read-only mappings of files under `prefix`; the bytes covered.
    `_MADV_DONTNEED` only where no other thread maps or unmaps memory meanwhile (see the module's notes)."""
    if not _SUPPORTED:
        return 0
    madvise = _libc_madvise()
    covered = 0
    for start, end in shared_read_only_regions(prefix):
        if madvise(start, end - start, advice) == 0:
            covered += end - start
    return covered


class MappedWeights:
    """The weights files under one model folder, as the runtime that opened them maps them."""

    def __init__(self, folder: Path) -> None:
        self._prefix = str(Path(folder).resolve()) + os.sep
        self._pending = True
        self._running = False

    def opened(self) -> None:
        """A pipeline over these weights was opened: the next `settling()` releases the pages its first inference
        reads."""
        self._pending = True

    @contextlib.contextmanager
    def settling(self) -> Iterator[None]:
        """Release the mapped pages while the body runs and once after it, if a pipeline was opened since the
        last time (and no other `settling()` is doing so); otherwise do nothing."""
        if not (_SUPPORTED and self._pending) or self._running:
            yield
            return
        self._pending, self._running = False, True
        stop = threading.Event()
        thread = threading.Thread(target=self._loop, args=(stop,), name="aipc-release", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self._running = False
            self._release(_MADV_DONTNEED)  # the runtime has returned: nothing of it remaps under this pass

    def _loop(self, stop: threading.Event) -> None:
        while not stop.wait(INTERVAL_S):
            self._release()

    def _release(self, advice: int = _MADV_PAGEOUT) -> None:
        try:
            release(self._prefix, advice)
        except (OSError, ValueError) as exc:  # an unreadable maps file: the pages stay, nothing else changes
            log.debug("could not release the mapped weights under %s: %s", self._prefix, exc)
