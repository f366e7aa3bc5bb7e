"""Running the export tools (optimum-cli, ONNX Runtime GenAI's builder, llama.cpp's converter) as subprocesses.

A subprocess keeps each tool's memory and native state out of aipc's process, and a killed conversion kills
only the tool. Its output (progress bars, warnings) goes to a log file in the staging folder, and to stderr too
with `--verbose`; the step itself is reported through `aipc.progress` (a spinner with its elapsed time on a
terminal, nothing in a pipe).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from aipc import progress
from aipc.errors import ConversionError

_NOISE = ("warning", "warn(", "tracerwarning", "futurewarning", "deprecat")


def run_tool(step: str, argv: list[str], log: Path, *, env: dict[str, str] | None = None) -> None:
    """Run `argv` as the step `step`; a failure raises with the tool's last error line and the log's path."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    show = progress.verbose()
    if not show:
        full_env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        full_env["TQDM_DISABLE"] = "1"
    with open(log, "ab") as out, progress.step(step, keep=True):
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE if show else out, stderr=subprocess.STDOUT, env=full_env)
        tee = threading.Thread(target=_tee, args=(proc.stdout, out), daemon=True) if show else None
        if tee is not None:
            tee.start()
        try:
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if tee is not None:
                tee.join(5)
        if code != 0:
            raise ConversionError(f"{step} failed (exit {code}): {last_error_line(log)} (full log: {log})")


def _tee(pipe, log) -> None:
    """--verbose: the tool's own output on stderr as it comes, and in the log."""
    for chunk in iter(lambda: pipe.read1(4096), b""):
        log.write(chunk)
        log.flush()
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()


def last_error_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if "error" in line.lower() and not any(n in line.lower() for n in _NOISE):
            return line[:300]
    return lines[-1][:300] if lines else "no output"
