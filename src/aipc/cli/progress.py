"""How the CLI shows slow steps: one line on stderr, redrawn in place; nothing when stderr is not a terminal.

A step with no known total gets a spinner with its name and elapsed time (`⠹ loading phi3:mini… 4 s`); one with a
total gets a bar (`downloading X  [█████·····]  48%  1.1/2.3 GB  12 s`). Steps marked `keep` leave a line when
they end (`✓ converting … (9 s)`). Library code reports through `aipc.progress`; this is the reporter the CLI
installs.
"""

from __future__ import annotations

import shutil
import sys
import threading
from typing import TextIO

from aipc.progress import Step
from aipc.units import size_text

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
DELAY = 0.15  # steps that end sooner leave no trace on the screen
BAR = 20


class TerminalReporter:
    """Draws the innermost running step; one thread redraws it ten times a second while any step runs."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.tty = self.stream.isatty() if tty is None else tty
        self._steps: list[Step] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = False

    # --- the aipc.progress.Reporter protocol ---------------------------------------------------------
    def start(self, step: Step) -> None:
        if not self.tty:
            return
        with self._lock:
            self._steps.append(step)
            if self._thread is None:
                self._wake.clear()
                self._thread = threading.Thread(target=self._run, name="aipc-progress", daemon=True)
                self._thread.start()

    def update(self, step: Step) -> None:
        """Progress is drawn by the thread at its next tick: nothing to do per update."""

    def finish(self, step: Step, ok: bool) -> None:
        if not self.tty:
            return
        thread = None
        with self._lock:
            if step in self._steps:
                self._steps.remove(step)
            self._clear()
            if ok and step.keep:
                self.stream.write(f"✓ {step.name} ({_seconds(step.elapsed)})\n")
                self.stream.flush()
            if not self._steps and self._thread is not None:
                thread, self._thread = self._thread, None
                self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # --- drawing -------------------------------------------------------------------------------------
    def _run(self) -> None:
        tick = 0
        while not self._wake.wait(0.1):
            with self._lock:
                if self._wake.is_set() or not self._steps:
                    return
                top = self._steps[-1]
                if top.elapsed < DELAY:
                    continue
                width = shutil.get_terminal_size((80, 24)).columns
                self.stream.write("\r" + render(top, tick, width) + "\033[K")
                self.stream.flush()
                self._shown = True
                tick += 1

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False


def render(step: Step, tick: int, width: int = 80) -> str:
    """One line for `step`, at most `width - 1` columns (the last column would wrap on some terminals)."""
    elapsed = _seconds(step.elapsed)
    if step.total:
        fraction = max(0.0, min(step.done / step.total, 1.0))
        filled = int(fraction * BAR)
        amount = (
            f"{size_text(step.done)}/{size_text(step.total)}"
            if step.unit == "B"
            else f"{step.done:.0f}/{step.total:.0f}{' ' + step.unit if step.unit else ''}"
        )
        tail = f"  [{'█' * filled}{'·' * (BAR - filled)}] {fraction:4.0%}  {amount}  {elapsed}"
    else:
        tail = f"… {elapsed}"
    head = f"{FRAMES[tick % len(FRAMES)]} {step.name}"
    room = max(width - 1 - len(tail), 10)
    if len(head) > room:
        head = head[: room - 1] + "…"
    return (head + tail)[: max(width - 1, 1)]


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s"


def messages_into(step: Step):
    """A `say(message)` callback for code that reports progress as text (`[3/12] ov, 32-token prompt`, `scoring
    window 3/12`): the message becomes the step's name and a count in it becomes the step's bar."""
    import re

    from aipc import progress

    def say(message: str | None) -> None:
        if not message:
            return
        found = re.match(r"\[(\d+)/(\d+)\] (.*)", message) or re.match(r"(.*?) ?(\d+)/(\d+)$", message)
        if found and message.startswith("["):
            done, total, message = float(found.group(1)), float(found.group(2)), found.group(3)
        elif found:
            done, total, message = float(found.group(2)), float(found.group(3)), found.group(1)
        else:
            step.name, step.total, step.done = message, None, 0.0
            return
        step.name = message
        step.total = total
        progress.advance(step, done - step.done)

    return say
