"""The progress hook and the terminal's display of it: a spinner or a bar on a terminal, silence in a pipe."""

from __future__ import annotations

import io
import re
import time

from aipc import progress
from aipc.cli.progress import TerminalReporter, messages_into, render


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _with(reporter):
    previous = progress.install(reporter)
    return previous


def test_a_terminal_sees_a_spinner_then_a_kept_step_line():
    out = _Terminal()
    previous = _with(TerminalReporter(out))
    try:
        with progress.step("converting model.gguf to OpenVINO IR (first run only)", keep=True):
            time.sleep(0.5)
        with progress.step("a quick step"):
            pass
    finally:
        progress.install(previous)
    text = out.getvalue()
    assert "\r⠋ converting model.gguf to OpenVINO IR (first run only)… 0 s\033[K" in text
    assert re.search(r"\r\033\[K✓ converting model.gguf to OpenVINO IR \(first run only\) \(\d s\)\n$", text)
    assert "a quick step" not in text  # shorter than the display delay: no flicker


def test_a_pipe_sees_nothing_and_without_a_reporter_library_steps_are_silent():
    out = io.StringIO()
    previous = _with(TerminalReporter(out))
    try:
        with progress.step("downloading", total=10, unit="B", keep=True) as step:
            progress.advance(step, 5)
            time.sleep(0.3)
    finally:
        progress.install(previous)
    assert out.getvalue() == ""
    progress.install(None)
    try:
        with progress.step("nobody listens", total=2) as step:
            progress.advance(step)
        assert step.done == 1 and not progress.verbose()
    finally:
        progress.install(previous)


def test_bars_show_the_fraction_and_amount_within_the_width():
    step = progress.Step("downloading OpenVINO/Phi-3-mini-4k-instruct-int4-ov", total=2.3e9, unit="B")
    step.done = 1.15e9
    line = render(step, 0, 60)
    assert len(line) <= 59 and "[██████████··········]  50%  1.1 GB/2.3 GB" in line and line.startswith("⠋ downl")
    counted = progress.Step("scoring", total=12)
    counted.done = 3
    assert "25%  3/12" in render(counted, 1, 80)


def test_text_progress_becomes_a_named_count():
    step = progress.Step("benchmarking")
    say = messages_into(step)
    say("[3/12] smollm2:135m openvino q4_1 cpu, 32-token prompt")
    assert (step.name, step.done, step.total) == ("smollm2:135m openvino q4_1 cpu, 32-token prompt", 3, 12)
    say("scoring window 5/40")
    assert (step.name, step.done, step.total) == ("scoring window", 5, 40)
    say("loading the reference")
    assert (step.name, step.total) == ("loading the reference", None)
