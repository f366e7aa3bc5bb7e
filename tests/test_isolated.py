"""`convert/isolated.py`: a function run in a child process comes back as its result, its own error, or one
ConversionError line naming the signal or exit that ended the child (real crashes, no patching)."""

from __future__ import annotations

import os

import pytest

from aipc.convert.isolated import run_isolated
from aipc.errors import ConversionError, ModelNotFoundError

WHO = {"who": "the test reader", "doing": "reading x.gguf"}


def answer(a: int, *, b: int) -> dict:
    return {"sum": a + b, "pid": os.getpid()}


def refuse() -> None:
    raise ModelNotFoundError("no such model: x")


def fail() -> None:
    raise ValueError("first line\nthe real reason")


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)  # reads address 0: SIGSEGV


def leave(code: int) -> None:
    import sys

    print("a last word", file=sys.stderr, flush=True)
    os._exit(code)


def test_the_result_comes_back_from_another_process():
    result = run_isolated(answer, 2, b=3, **WHO)
    assert result["sum"] == 5 and result["pid"] != os.getpid()


def test_an_aipc_error_comes_back_as_itself():
    with pytest.raises(ModelNotFoundError, match="^no such model: x$"):
        run_isolated(refuse, **WHO)


def test_another_exception_is_one_line():
    with pytest.raises(ConversionError, match="^the test reader failed reading x.gguf: ValueError: the real reason$"):
        run_isolated(fail, **WHO)


def test_a_segfault_is_one_line_naming_the_signal():
    with pytest.raises(ConversionError, match=r"^the test reader crashed \(SIGSEGV\) reading x.gguf$"):
        run_isolated(segfault, **WHO)


def test_an_exit_is_one_line_with_the_last_thing_it_said():
    with pytest.raises(ConversionError, match=r"^the test reader exited with code 3 \(a last word\) reading x.gguf$"):
        run_isolated(leave, 3, **WHO)
