"""`aipc` as a user runs it: real subprocesses, a real terminal (pty) for the interactive chat."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from tests.conftest import PARIS_QUESTION, run_cli


def test_run_streams_paris_from_the_default_model():
    result = run_cli("run", PARIS_QUESTION, "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "<|" not in result.stdout
    assert result.stderr == ""  # no status line or stats without a terminal or --verbose


@pytest.mark.npu
def test_run_on_the_emulated_npu_with_stats():
    result = run_cli(
        "run",
        "--device",
        "npu",
        "--verbose",
        "--temperature",
        "0",
        PARIS_QUESTION,
        env={"AIPC_EMULATE_NPU": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    stats = result.stderr.strip().splitlines()
    assert len(stats) == 1
    assert re.search(
        r"load [\d.]+ s \| prompt \d+ tokens \| TTFT \d+ ms \| next-token [\d.]+ ms \| [\d.]+ tokens/s",
        stats[0],
    )
    assert "openvino/npu (emulated)" in stats[0]


def test_prompt_from_a_pipe():
    result = run_cli("run", "smollm2:135m", "--temperature", "0", input=PARIS_QUESTION + "\n")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--max-tokens", "0"], "max_tokens must be an integer >= 1, got 0"),
        (["--max-tokens", "-4"], "max_tokens must be an integer >= 1, got -4"),
        (["--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--temperature", "inf"], "temperature must be a finite number >= 0 (0 is greedy), got inf"),
        (["--temperature", "nan"], "temperature must be a finite number >= 0 (0 is greedy), got nan"),
        (["--top-p", "0"], "top_p must be a number in (0, 1]"),
        (["--top-p", "1.5"], "top_p must be a number in (0, 1]"),
        (["--max-tokens", "many"], "argument --max-tokens: invalid int value: 'many'"),
        (["--device", "tpu"], "unknown device 'tpu': valid devices are auto, cpu, gpu, npu"),
        (["--device", "gpu"], "device 'gpu' is not available to openvino (present: cpu)"),
        (["--device", "npu"], "set AIPC_EMULATE_NPU=1"),
        (["--backend", "onnx"], "unknown backend 'onnx': valid backends are auto, openvino, onnxruntime, llamacpp"),
        (["--backend", "onnxruntime"], "backend 'onnxruntime' does not load gguf models (formats: onnxruntime"),
        (["-m", "nosuch:model"], "unknown model 'nosuch:model': valid names are smollm2:135m, phi3:mini"),
        (["-m", "missing/model.gguf"], "no such file or folder: missing/model.gguf"),
        (["-m", "phi3:mini"], "is not in the store"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, fragment):
    started = time.perf_counter()
    result = run_cli("run", *args, "hi")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr
    assert time.perf_counter() - started < 20  # rejected before any model loads


def test_unreadable_model_file(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    bad.chmod(0)
    result = run_cli("run", "-m", str(bad), "hi")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    if os.geteuid() == 0:  # root reads anything: then the file is read and refused as not a GGUF
        assert "is not a GGUF file" in result.stderr
    else:
        assert "cannot read" in result.stderr


def test_help_is_fast_and_imports_no_runtime():
    code = (
        "import sys, time; t = time.perf_counter(); from aipc.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('openvino', 'openvino_genai', 'jinja2', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy, time.perf_counter() - t)"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY [] " in out
    assert time.perf_counter() - started < 1.0
    assert "run" in out


def test_interactive_chat_over_a_pipe_keeps_history_and_commands():
    script = "\n".join(
        [
            "My name is Ada. Please remember it.",
            "What is my name?",
            "/system",
            "/clear",
            "What is my name?",
            '"""',
            "line one",
            'line two"""',
            "/bye",
            "never read",
        ]
    )
    result = run_cli("run", "smollm2:135m", "-i", "--temperature", "0", "--max-tokens", "40", input=script + "\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "(no system prompt)" in out and "Conversation cleared." in out
    before_clear, after_clear = out.split("Conversation cleared.")
    first_answer = run_cli(
        "run",
        "smollm2:135m",
        "--temperature",
        "0",
        "--max-tokens",
        "40",
        "My name is Ada. Please remember it.",
    ).stdout
    # The second answer repeats the name only if the first turn is in its context (the control after /clear
    # asks the same question without it).
    assert before_clear.count("Ada") > first_answer.count("Ada")
    assert "Ada" not in after_clear
    assert after_clear.count("\n") >= 2  # the multi-line message got an answer too


def _read_until(fd: int, pattern: str, timeout: float = 120.0) -> str:
    buf = ""
    deadline = time.monotonic() + timeout
    while pattern not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {pattern!r}; got {buf[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk.decode(errors="replace")
    return buf


def test_interactive_chat_in_a_terminal_ctrl_c_stops_answer_ctrl_d_leaves():
    pid, fd = pty.fork()
    if pid == 0:  # child: the CLI on a real terminal
        os.execv(sys.executable, [sys.executable, "-m", "aipc", "run", "smollm2:135m", "--max-tokens", "2000"])
    try:
        _read_until(fd, ">>> ")
        os.write(fd, b"Write a very long story about a dragon who learns to fly.\r")
        _read_until(fd, " ", timeout=60)  # the answer has started streaming
        time.sleep(0.3)
        os.write(fd, b"\x03")  # Ctrl-C
        out = _read_until(fd, "(answer stopped)", timeout=10)
        out += _read_until(fd, ">>> ", timeout=10)  # back at the prompt, still chatting
        os.write(fd, b"\x04")  # Ctrl-D
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            try:
                os.read(fd, 4096)
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("aipc did not leave on Ctrl-D")
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
