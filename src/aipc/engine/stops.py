"""Stop strings: found in the streamed text across delta boundaries (`StopMatcher`), and the tokens an answer
keeps once one is found (`tokens_to_stop`), on every backend alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class StopMatcher:
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


def tokens_to_stop(ids: Sequence[int], detokenize: Callable[[Sequence[int]], str], stops: Sequence[str]) -> int:
    """How many of `ids` it takes for their text to hold a stop string (all of them where it never does):
    a binary search, the text growing with the tokens."""
    low, high = 1, len(ids)
    if not any(s in detokenize(ids) for s in stops):
        return len(ids)
    while low < high:
        middle = (low + high) // 2
        if any(s in detokenize(ids[:middle]) for s in stops):
            high = middle
        else:
            low = middle + 1
    return low
