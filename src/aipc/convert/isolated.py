"""Running one function in a fresh Python process, so a crash in native code costs an error line, not aipc.

Native readers (OpenVINO's GGUF reader above all) can still crash on a file that passes aipc's own checks:
run in the server or the CLI, a SIGSEGV there killed the whole process with no message. Here the function
runs in a child (`python -m aipc.convert.isolated`); its result comes back through a file, an `AipcError` it
raises comes back as the same error, and anything else (another exception, a signal, an exit) becomes one
`ConversionError` line naming what crashed.

The call and its result travel as pickles between two of aipc's own processes (as `multiprocessing` sends
them); no pickle from a model file or the network is ever read.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aipc.errors import AipcError, ConversionError


def run_isolated(func: Callable[..., Any], *args: Any, who: str, doing: str, **kwargs: Any) -> Any:
    """`func(*args, **kwargs)` in a child process. `who` and `doing` word the error: "OpenVINO's GGUF reader
    crashed (SIGSEGV) reading x.gguf". `func` must be a module-level function."""
    call = pickle.dumps((func.__module__, func.__qualname__, args, kwargs))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    fd, result_path = tempfile.mkstemp(prefix="aipc-isolated-", suffix=".pickle")
    os.close(fd)
    result = Path(result_path)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "aipc.convert.isolated", result_path],
            input=call,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        outcome = pickle.loads(result.read_bytes()) if result.stat().st_size else None
    finally:
        result.unlink(missing_ok=True)
    if outcome is None:
        raise ConversionError(f"{who} {_how_it_ended(proc.returncode, proc.stderr)} {doing}")
    status, value = outcome
    if status == "ok":
        return value
    if status == "aipc":
        module, name, message = value
        cls = getattr(importlib.import_module(module), name, None)
        try:
            error = cls(message) if isinstance(cls, type) and issubclass(cls, AipcError) else None
        except TypeError:  # an error class that takes more than its message
            error = None
        raise error or ConversionError(message)
    raise ConversionError(f"{who} failed {doing}: {value}")


def _how_it_ended(code: int, stderr: bytes) -> str:
    if code < 0:
        try:
            return f"crashed ({signal.Signals(-code).name})"
        except ValueError:
            return f"crashed (signal {-code})"
    last = next((ln.strip() for ln in reversed(stderr.decode(errors="replace").splitlines()) if ln.strip()), "")
    return f"exited with code {code}" + (f" ({last[:200]})" if last else "")


def _child(result_path: str) -> None:
    module, qualname, args, kwargs = pickle.loads(sys.stdin.buffer.read())
    func: Any = importlib.import_module(module)
    for part in qualname.split("."):
        func = getattr(func, part)
    try:
        outcome: tuple[str, Any] = ("ok", func(*args, **kwargs))
    except AipcError as exc:
        outcome = ("aipc", (type(exc).__module__, type(exc).__name__, str(exc)))
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        outcome = ("failed", f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": "))
    Path(result_path).write_bytes(pickle.dumps(outcome))


if __name__ == "__main__":
    _child(sys.argv[1])
