"""Running the export tools (optimum-cli, ONNX Runtime GenAI's builder, llama.cpp's converter) as subprocesses.

A subprocess keeps each tool's memory and native state out of aipc's process, and a killed conversion kills
only the tool. Output goes to a log file in the staging folder; on a terminal a one-line progress indicator shows
the step and its elapsed time; in a pipe nothing is printed until the result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from aipc.errors import ConversionError

_NOISE = ("warning", "warn(", "tracerwarning", "futurewarning", "deprecat")


def run_tool(step: str, argv: list[str], log: Path, *, env: dict[str, str] | None = None) -> None:
    """Run `argv`, showing `step` with a timer on a terminal; a failure raises with the tool's last error line."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    if not sys.stderr.isatty():
        full_env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    started = time.monotonic()
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=full_env)
        with Progress(step):
            try:
                code = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
    if code != 0:
        if disk_is_full(log.parent):  # tools word it their own way ("iostream error"): say what it was
            raise ConversionError(f"{step} failed (exit {code}): No space left on device (full log: {log})")
        raise ConversionError(f"{step} failed (exit {code}): {last_error_line(log)} (full log: {log})")
    Progress.done(step, time.monotonic() - started)


def disk_is_full(folder: Path) -> bool:
    """Whether the disk holding `folder` is out of space or of inodes (under 1 MiB or no inode left)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False
    return st.f_bavail * st.f_frsize < 1 << 20 or (st.f_files > 0 and st.f_favail == 0)


def last_error_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if "error" in line.lower() and not any(n in line.lower() for n in _NOISE):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


class Progress:
    """`step… 12 s` redrawn once a second on a terminal's stderr; silent otherwise."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.tty = sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._draw, daemon=True)

    def _draw(self) -> None:
        started = time.monotonic()
        spinner = "|/-\\"
        i = 0
        while not self._stop.wait(0.5):
            i += 1
            sys.stderr.write(f"\r{spinner[i % 4]} {self.step}… {time.monotonic() - started:.0f} s\033[K")
            sys.stderr.flush()

    def __enter__(self) -> Progress:
        if self.tty:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tty:
            self._stop.set()
            self._thread.join()
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    @staticmethod
    def done(step: str, seconds: float) -> None:
        if sys.stderr.isatty():
            print(f"✓ {step} ({seconds:.0f} s)", file=sys.stderr)
