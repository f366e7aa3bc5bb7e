"""Speculative decoding: what `speculate` asks for, prompt lookup, and the measured rule behind `auto`.

Speculation drafts tokens cheaply, then the model checks several of them in one forward pass; the runtime's own
acceptance rule keeps what the model would have produced, so the output is the model's. Drafts come from the
text so far (prompt lookup: the tokens that followed the last earlier occurrence of the final n-gram) or from a
small draft model with the same tokenizer.

Checking k drafted tokens costs more than one plain step: how much more depends on the device, the runtime and
the model (measured here: 1.2-1.6x on OpenVINO, 1.3-2.9x on llama.cpp, ~2x on ONNX Runtime's int4 CPU kernels
for the 135M model). It pays only when enough drafts are accepted. `auto` therefore measures both sides while it
generates and speculates only when the measurement says it is faster:

- acceptance: for prompt lookup, what the lookup *would* have drafted at every position of the answer and how
  many of those tokens the model then wrote (`Shadow`). Drafting by lookup costs nothing, so this is measured
  on every answer, speculated or not.
- cost: the seconds of each forward pass by the number of tokens it checks (`StepCosts`), measured on this
  device from the steps this model runs; a conservative prior fills the widths not measured yet.
- the rule: replay the measured positions with each draft width k (a step drafts min(k, what lookup found),
  keeps the matching prefix plus one token, and costs the measured ratio for its width) and take the width
  with the most tokens per unit of time. Speculate only if that beats plain decoding by a margin (`MARGIN`).

Where the runtime lets aipc decide per step (llama.cpp's draft-model hook), the rule runs at every step on the
answer's own recent positions. Elsewhere (OpenVINO GenAI, ONNX Runtime GenAI) it decides per request, from the
measured answers of earlier requests of the same kind (a long new prompt, from which answers often copy, or a
short one), and from those of its own template where it has one (a prompt that shares more of its start with
some earlier prompts than all of them share: the same instruction before a pasted text, an app's fixed prompt);
with none yet, long prompts start speculating and short ones do not. On OpenVINO GenAI the
answer's own positions then correct that plan midway (`switch`): the answer moves to the other pipeline when
what the move saves on the rest of the answer repays the prefill it costs. On OpenVINO GenAI, prompt
lookup runs in a second pipeline, which holds its own copy of the compiled weights and its own KV cache:
`auto` opens it only when that costs at most AUTO_MEMORY_SHARE of the machine's memory.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aipc.errors import UsageError

MODES = ("auto", "off", "lookup", "draft:MODEL")
MAX_NGRAM = 3  # the longest n-gram lookup matches (then shorter ones, down to one token)
DEFAULT_WIDTH = 5  # draft tokens per step when speculation is asked for explicitly (`lookup`, `draft:`)
WIDTHS = (1, 2, 3, 4, 6, 8, 12)  # widths `auto` chooses among
# Where drafting decides per step and a step checks only what lookup found (llama.cpp), wider drafts cost only
# when they are accepted: a long copy can use them. They pay where a check of many tokens costs little more than
# one of a few (llama.cpp's Q4_1 CPU kernels: a check of 13 tokens costs 6.5 plain steps, of 33 tokens 13.8).
WIDE_WIDTHS = (*WIDTHS, 16, 24, 32)
MARGIN = 0.05  # speculate when the replay predicts at least this much more speed than plain decoding
LONG_PROMPT = 64  # new prompt tokens from which a request counts as one answers may copy from
PRIOR_WIDTH = 4  # the width a long prompt starts with before anything is measured
_MIN_EVIDENCE = 12  # answer positions measured before a request's own measurement outweighs the prior
WINDOW = 96  # the most recent measured positions the per-step rule replays
RECONSIDER = 3  # new measured positions before the per-step rule decides again
_HISTORY = 384  # measured positions kept per kind of request for the per-request rule
# Requests of one template (an app's fixed instruction, a repeated task) are planned from their own answers: two
# prompts are of one template when they share TEMPLATE_PREFIX tokens more than the recent prompts of their kind
# all share (the chat template's own preamble). The last RECENT answers are kept for this, with the first
# PROMPT_KEPT tokens of their prompts.
TEMPLATE_PREFIX = 8
RECENT = 16
PROMPT_KEPT = 1024
SWITCH_PAYBACK = 1.5  # a mid-generation switch must save this many times what it costs (see `switch`)
# `auto` never costs more memory than this share of the machine's: on OpenVINO GenAI, whose prompt lookup needs
# a second pipeline (its own compiled weights and KV cache), a model whose second pipeline would take more is
# decoded plainly (`lookup` still speculates when asked for).
AUTO_MEMORY_SHARE = 0.1


@dataclass(frozen=True)
class Speculation:
    """`speculate` parsed: mode is auto, off, lookup or draft; draft names the draft model for draft mode."""

    mode: str
    draft: str | None = None

    @property
    def active(self) -> bool:
        return self.mode != "off"


def parse(value: str) -> Speculation:
    """The `speculate` setting parsed; LoadConfig has already checked its form."""
    value = value.strip()
    if value.startswith("draft:"):
        return Speculation("draft", value[len("draft:") :].strip())
    return Speculation(value.lower())


def refuse(backend: str, mode: str, reason: str) -> UsageError:
    """The one-line error for a speculation mode a backend or device cannot run."""
    return UsageError(f"speculate={mode} is not supported by {backend}: {reason}; use speculate=off or auto")


# --- prompt lookup ---------------------------------------------------------------------------------------------


class Lookup:
    """Prompt lookup over a growing token sequence: the tokens that followed the earliest earlier occurrence of
    the sequence's last n tokens, trying n = max_ngram down to 1 (the rule of OpenVINO GenAI's and
    llama-cpp-python's prompt lookup). Occurrences are indexed as tokens arrive, so a proposal costs a few
    dictionary look-ups however long the text is."""

    def __init__(self, ids: Sequence[int] = (), max_ngram: int = MAX_NGRAM) -> None:
        self._n = max_ngram
        self._ids: list[int] = []
        self._first: dict[tuple[int, ...], int] = {}
        self.extend(ids)

    def __len__(self) -> int:
        return len(self._ids)

    def extend(self, ids: Sequence[int]) -> None:
        for token in ids:
            self.append(int(token))

    def append(self, token: int) -> None:
        ids = self._ids
        ids.append(token)
        end = len(ids) - 1
        for n in range(1, min(self._n, len(ids)) + 1):
            self._first.setdefault(tuple(ids[end - n + 1 :]), end)

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that may come next ([] when the last tokens never occurred before)."""
        end = self._match() if k > 0 else None
        return [] if end is None else self._ids[end + 1 : end + 1 + k]

    def ahead(self) -> int:
        """How many tokens follow the occurrence `propose` copies from, up to the text's end (0: none): while an
        answer copies a passage of its prompt, about how much of it is left, plus the answer so far."""
        end = self._match()
        return 0 if end is None else len(self._ids) - 1 - end

    def _match(self) -> int | None:
        ids = self._ids
        last = len(ids) - 1
        for n in range(min(self._n, last), 0, -1):
            end = self._first.get(tuple(ids[last - n + 1 :]))
            if end is not None and end < last:
                return end
        return None


class Shadow:
    """For every answer position: how many tokens lookup would have drafted there, and how many of them the
    model then wrote. Filled from the tokens as they come, speculated or not."""

    def __init__(self, lookup: Lookup, depth: int = max(WIDTHS)) -> None:
        self.lookup = lookup
        self._depth = depth
        self.runs: list[tuple[int, int] | None] = []  # per position: (matched, proposed), None while open
        self._open: list[tuple[int, list[int], int]] = []  # (position, proposal, matched so far)
        self._known = 0  # positions measured so far, from the start (the first open one stops the count)

    def push(self, token: int) -> None:
        position = len(self.runs)
        self.runs.append(None)
        self._open.append((position, self.lookup.propose(self._depth), 0))
        still = []
        for pos, proposal, matched in self._open:
            if matched < len(proposal) and proposal[matched] == token:
                matched += 1
                if matched < len(proposal):
                    still.append((pos, proposal, matched))
                    continue
            self.runs[pos] = (matched, len(proposal))
        self._open = still
        self.lookup.append(token)

    def recent(self, window: int) -> list[tuple[int, int]]:
        """The last `window` positions, those still open counted as far as they have matched, (matched,
        matched): a passage being copied counts as drafts as long as what has been confirmed of them, not as
        nothing until its longest proposal closes."""
        opened = {position: matched for position, _, matched in self._open}
        start = max(0, len(self.runs) - window)
        return [run if run is not None else (opened[i], opened[i]) for i, run in enumerate(self.runs[start:], start)]

    def known(self) -> int:
        """How many positions, from the start, are measured (up to the first one still open)."""
        runs, n = self.runs, self._known
        while n < len(runs) and runs[n] is not None:
            n += 1
        self._known = n
        return n


# --- cost ------------------------------------------------------------------------------------------------------


class StepCosts:
    """Seconds per forward pass by the number of tokens it checks (1 = a plain step), measured on this device.

    Widths not measured yet are interpolated from those that are, or taken from a conservative prior
    (`PRIOR_FIXED` + `PRIOR_PER_TOKEN` per drafted token, relative to a plain step)."""

    PRIOR_FIXED = 0.15
    PRIOR_PER_TOKEN = 0.10
    _WEIGHT = 0.2  # exponential moving average: each new observation's weight

    def __init__(self) -> None:
        self._seconds: dict[int, float] = {}
        self._lock = threading.Lock()

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens < 1 or not seconds > 0:
            return
        with self._lock:
            old = self._seconds.get(tokens)
            self._seconds[tokens] = seconds if old is None else old + self._WEIGHT * (seconds - old)

    def plain_seconds(self) -> float | None:
        """A plain step's measured seconds; before one is measured, a measured wider step's by the prior."""
        with self._lock:
            seconds = dict(self._seconds)
        if 1 in seconds:
            return seconds[1]
        for tokens, s in sorted(seconds.items()):
            return s / (1.0 + self.PRIOR_FIXED + self.PRIOR_PER_TOKEN * (tokens - 1))
        return None

    def ratio(self, tokens: int) -> float:
        """Cost of a forward pass over `tokens` tokens, relative to a plain one-token step."""
        return self._ratio(tokens, self._measured())

    def ratios(self, drafts: int) -> list[float]:
        """The cost of a pass checking d drafts (`ratio(1 + d)`) for d = 0 .. drafts, from one reading."""
        measured = self._measured()
        return [self._ratio(1 + d, measured) for d in range(drafts + 1)]

    def _measured(self) -> list[tuple[int, float]]:
        """(tokens, cost relative to a plain step) of the measured passes over more than one token."""
        with self._lock:
            seconds = dict(self._seconds)
        plain = seconds.get(1)
        return sorted((n, s / plain) for n, s in seconds.items() if n > 1) if plain else []

    def _ratio(self, tokens: int, measured: list[tuple[int, float]]) -> float:
        if tokens <= 1:
            return 1.0
        if not measured:
            return 1.0 + self.PRIOR_FIXED + self.PRIOR_PER_TOKEN * (tokens - 1)
        if tokens in dict(measured):
            return max(dict(measured)[tokens], 1.0)
        below = [(n, r) for n, r in measured if n < tokens]
        above = [(n, r) for n, r in measured if n > tokens]
        if below and above:
            (n0, r0), (n1, r1) = below[-1], above[0]
            return max(r0 + (r1 - r0) * (tokens - n0) / (n1 - n0), 1.0)
        n0, r0 = below[-1] if below else above[0]
        # beyond the measured widths: the measured point, moved along the steeper of the prior's slope and the
        # slope of the two widest measured points (checks on some runtimes grow by half a plain step a token)
        slope = self.PRIOR_PER_TOKEN
        if len(below) >= 2:
            (n1, r1), (n2, r2) = below[-2], below[-1]
            slope = max(slope, (r2 - r1) / (n2 - n1))
        return max(r0 + slope * (tokens - n0), 1.0)


def replay(runs: Sequence[tuple[int, int]], width: int, ratios: Sequence[float], *, pads_misses: bool) -> float:
    """Predicted speed relative to plain decoding if these measured positions had been generated drafting up to
    `width` tokens a step; `ratios[d]` is the cost of a step checking d drafts. `pads_misses`: the runtime
    checks `width` drafts even when lookup finds none (OpenVINO GenAI pads its candidates)."""
    if not runs:
        return 1.0
    position, tokens, time = 0, 0, 0.0
    n = len(runs)
    while position < n:
        matched, proposed = runs[position]
        drafted = width if width < proposed else proposed
        time += ratios[width] if pads_misses else ratios[drafted]
        kept = 1 + (matched if matched < drafted else drafted)
        tokens += kept
        position += kept
    return tokens / time


def best_width(
    runs: Sequence[tuple[int, int]], costs: StepCosts, *, pads_misses: bool, widths: Sequence[int] = WIDTHS
) -> tuple[int, float]:
    """The draft width with the highest predicted speed, and that speed (relative to plain decoding)."""
    ratios = costs.ratios(max(widths))
    scored = [(replay(runs, w, ratios, pads_misses=pads_misses), w) for w in widths]
    speed, width = max(scored)
    return width, speed


def switch(
    runs: Sequence[tuple[int, int]],
    costs: StepCosts,
    current: int,
    *,
    pads_misses: bool,
    remaining: int,
    switch_seconds: float,
    widths: Sequence[int] = WIDTHS,
) -> int | None:
    """Mid-generation, for runtimes that fix the draft width for a whole generation: the width to continue
    with (0: plain decoding) when switching pays, else None to go on as now (`current`, 0 when plain).

    Switching costs `switch_seconds` (the other pipeline prefills the text so far). It pays when the answer's
    own measured positions (`runs`) predict that the `remaining` tokens take at least SWITCH_PAYBACK times
    that much less time than going on as now. Only plain decoding and drafting are switched between."""
    plain = costs.plain_seconds()
    if plain is None or len(runs) < _MIN_EVIDENCE:
        return None
    ratios = costs.ratios(max(widths))
    now = replay(runs, current, ratios, pads_misses=pads_misses) if current else 1.0
    if current:
        target, speed = 0, 1.0
        if now >= 1.0 - MARGIN:
            return None
    else:
        target, speed = best_width(runs, costs, pads_misses=pads_misses, widths=widths)
        if speed < 1.0 + MARGIN:
            return None
    saved = remaining * plain * (1.0 / now - 1.0 / speed)
    return target if saved > SWITCH_PAYBACK * switch_seconds else None


# --- the rule ------------------------------------------------------------------------------------------------


@dataclass
class Counts:
    """Draft tokens checked by the model in one generation, and how many it accepted."""

    drafted: int = 0
    accepted: int = 0


class Governor:
    """The measured rule behind `auto`, for one opened model: the step costs measured on its device, and, per
    kind of request (long or short new prompt), the lookup acceptance measured on recent answers."""

    def __init__(self, *, pads_misses: bool, widths: Sequence[int] = WIDTHS) -> None:
        self.costs = StepCosts()
        self.pads_misses = pads_misses
        self.widths = tuple(widths)
        self._history: dict[str, deque] = {"long": deque(maxlen=_HISTORY), "short": deque(maxlen=_HISTORY)}
        self._recent: deque[tuple[str, tuple[int, ...], list]] = deque(maxlen=RECENT)  # (kind, prompt head, runs)
        self._previous: list[int] = []
        self._last_width = 0
        self._lock = threading.Lock()

    def _shared(self, prompt: Sequence[int]) -> int:
        return common_prefix(self._previous, prompt)

    def _measured(self, kind: str, prompt: Sequence[int]) -> list:
        """The measured positions a request is planned from: those of earlier requests of its template where
        there are enough, else those of every recent request of its kind. A template is what the prompt shares
        with some recent prompts beyond what all recent prompts of the kind share: a copy task and a rewrite
        task after the same chat preamble are planned apart, though both are long prompts."""
        entries = [(head, runs) for k, head, runs in self._recent if k == kind]
        if len(entries) >= 2:
            shared = [common_prefix(head, prompt) for head, _ in entries]
            floor = min(shared)
            mine = [runs for n, (_, runs) in zip(shared, entries, strict=True) if n >= floor + TEMPLATE_PREFIX]
            if 0 < len(mine) < len(entries):
                runs = [r for part in mine for r in part][-_HISTORY:]
                if len(runs) >= _MIN_EVIDENCE:
                    return runs
        return list(self._history[kind])

    def kind(self, prompt: Sequence[int]) -> str:
        """long: the prompt brings at least LONG_PROMPT tokens the previous one did not start with (a pasted
        text, a document); short: a question, an instruction, a chat's next turn."""
        return "long" if len(prompt) - self._shared(prompt) >= LONG_PROMPT else "short"

    def plan(self, prompt: Sequence[int], *, seeded: bool = False) -> tuple[str, int]:
        """(kind, width) for a request decided per request: width 0 means plain decoding.

        A prompt that continues the previous one by LONG_PROMPT tokens or more (a chat's next turn) keeps the
        previous request's choice: the runtime's KV cache of that history lives with it, and switching would
        prefill the whole history again. Seeded sampling is planned from the prompt alone (its kind), so that
        the same seed and prompt always take the same path and give the same text."""
        kind = self.kind(prompt)
        if seeded:
            return kind, PRIOR_WIDTH if kind == "long" else 0
        with self._lock:
            if self._previous and self._shared(prompt) >= LONG_PROMPT:
                return kind, self._last_width
            runs = self._measured(kind, prompt)
        if len(runs) < _MIN_EVIDENCE:
            width = PRIOR_WIDTH if kind == "long" else 0
        else:
            width, speed = best_width(runs, self.costs, pads_misses=self.pads_misses, widths=self.widths)
            width = width if speed >= 1.0 + MARGIN else 0
        with self._lock:
            self._last_width = width
        return kind, width

    def continue_with(self, width: int) -> None:
        """The width a generation ended with (it may have switched): a chat's next turn stays there."""
        with self._lock:
            self._last_width = width

    def record(self, kind: str, prompt: Sequence[int], answer: Sequence[int]) -> None:
        """Measure lookup on a finished answer (replayed from its tokens, free) for the next plan."""
        shadow = Shadow(Lookup(prompt), depth=max(self.widths))
        for token in answer:
            shadow.push(int(token))
        self.remember(kind, prompt, shadow)

    def remember(self, kind: str, prompt: Sequence[int], shadow: Shadow) -> None:
        runs = shadow.runs[: shadow.known()]
        with self._lock:
            self._previous = list(prompt)
            if runs and kind in self._history:
                self._history[kind].extend(runs)
                self._recent.append((kind, tuple(prompt[:PROMPT_KEPT]), runs[-_HISTORY:]))

    def stepper(self, prompt: Sequence[int], *, seeded: bool = False) -> Stepper:
        """The per-step rule for one generation (runtimes that ask before every step); seeded sampling keeps the
        width planned from its prompt for the whole generation (see `plan`)."""
        kind, width = self.plan(prompt, seeded=seeded)
        return Stepper(self, kind, prompt, width, fixed=seeded)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Stepper:
    """The rule applied at every step of one generation: the answer's own recent positions, once there are
    enough of them, else the width planned for its kind of request. Also counts what was drafted and accepted.
    `fixed`: always the given width (speculation asked for explicitly)."""

    def __init__(
        self, governor: Governor, kind: str, prompt: Sequence[int], width: int, *, fixed: bool = False
    ) -> None:
        self.governor = governor
        self.kind = kind
        self.prompt = list(prompt)
        self.shadow = Shadow(Lookup(prompt), depth=max(governor.widths))
        self.counts = Counts()
        self._planned = width
        self._fixed = fixed
        self._on = width > 0
        self._draft: list[int] = []
        self._draft_at = 0
        self._matched = 0
        self._decided: tuple[int, int] | None = None  # (measured positions, width) of the last decision

    def push(self, token: int) -> None:
        """A token the model produced, drafted or not."""
        offset = len(self.shadow.runs) - self._draft_at
        if offset == self._matched < len(self._draft) and self._draft[offset] == token:
            self._matched += 1
            self.counts.accepted += 1
        self.shadow.push(token)

    def width(self) -> int:
        """Tokens to draft at this step (0: a plain step)."""
        if self._fixed:
            return self._planned
        known = len(self.shadow.runs)
        if known < _MIN_EVIDENCE:
            return self._planned
        if self._decided and known - self._decided[0] < RECONSIDER:
            return self._decided[1]
        runs = self.shadow.recent(WINDOW)
        width, speed = best_width(runs, self.governor.costs, pads_misses=False, widths=self.governor.widths)
        # hysteresis: drafting starts above 1 + MARGIN and stops once it no longer gains anything
        self._on = speed > 1.0 if self._on else speed >= 1.0 + MARGIN
        self._decided = (known, width if self._on else 0)
        return self._decided[1]

    def propose(self, width: int, ends: Callable[[int], bool] | None = None) -> list[int]:
        """Prompt lookup's draft of up to `width` tokens from the text so far, cut after the first token for which
        `ends` is true (the answer stops there: what a draft holds beyond it is never used)."""
        draft = self.shadow.lookup.propose(width) if width > 0 else []
        if ends is not None:
            for i, token in enumerate(draft):
                if ends(token):
                    return draft[: i + 1]
        return draft

    def drafted(self, draft: Sequence[int]) -> None:
        """The draft the model checks at this step, whatever drafted it."""
        self._draft, self._draft_at, self._matched = list(draft), len(self.shadow.runs), 0
        self.counts.drafted += len(draft)

    def finish(self) -> None:
        """The generation ended: its measured positions inform the next request's plan."""
        self.governor.remember(self.kind, self.prompt, self.shadow)


# --- draft models ----------------------------------------------------------------------------------------------

# Text a draft model's tokenizer must split exactly as the model's: words, numbers, code, accents, CJK, emoji,
# whitespace runs and chat markup.
PROBE = (
    "The quick brown fox jumps over 13 lazy dogs; 2 + 2 = 4. def f(x):\n    return x ** 2  # Ça va? "
    "Größe, naïve café. 東京タワー 🙂 <|im_end|><|end|></s>\t\tEnd."
)


def check_same_tokenizer(name: str, main: tuple, draft: tuple) -> None:
    """Refuse a draft model whose tokenizer differs from the model's. Each side is (vocabulary size,
    encode(text) -> ids, decode(ids) -> text); the vocabularies must match in size, split a probe text into the
    same ids, and give the same text for a spread of ids."""
    (main_size, main_encode, main_decode), (draft_size, draft_encode, draft_decode) = main, draft
    why = None
    if main_size != draft_size:
        why = f"its vocabulary has {draft_size} tokens, the model's {main_size}"
    elif list(main_encode(PROBE)) != list(draft_encode(PROBE)):
        why = "it splits the same text into other token ids"
    else:
        for ident in range(0, main_size, max(1, main_size // 997)):
            if main_decode([ident]) != draft_decode([ident]):
                why = f"token id {ident} means something else to it"
                break
    if why:
        raise UsageError(
            f"draft model {name} does not share the model's tokenizer ({why}): use a draft model "
            "from the same family and tokenizer, or speculate=lookup"
        )


def draft_source(name: str, formats: Sequence[str]):
    """The stored variant or file of draft model `name` that a backend loading `formats` can open."""
    from aipc.store.resolve import resolve_all

    sources = resolve_all(name)
    for source in sources:
        if source.format in formats:
            return source
    have = ", ".join(sorted({s.format for s in sources})) or "nothing"
    raise UsageError(f"draft model {name} has no {' or '.join(formats)} form (found: {have}): convert it first")
