"""`aipc` as a user runs it: real subprocesses, a real terminal (pty) for the interactive chat."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
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
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("sampling: greedy")  # --verbose's sampling line, then stats
    stats = lines[1:]
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
        (["--max-tokens", "0"], "max_tokens must be an integer from 1 to 2147483647, got 0"),
        (["--max-tokens", "-4"], "max_tokens must be an integer from 1 to 2147483647, got -4"),
        (["--max-tokens", "99999999999999999999"], "max_tokens must be an integer from 1 to 2147483647"),
        (["--seed", "18446744073709551616"], "seed must be an integer from 0 to 9223372036854775807"),
        (["--top-k", "99999999999999999999"], "top_k must be an integer from 0 to 2147483647"),
        (["--context-length", "99999999999999999999"], "context_length must be an integer from 16 to 2147483647"),
        (["--context-length", "2000000000"], "context length 2000000000 needs"),
        (["--speculate", "draft:nosuch"], "unknown model 'nosuch'"),
        (["--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--temperature", "inf"], "temperature must be a finite number >= 0 (0 is greedy), got inf"),
        (["--temperature", "nan"], "temperature must be a finite number >= 0 (0 is greedy), got nan"),
        (["--top-p", "0"], "top_p must be a number in (0, 1]"),
        (["--top-p", "1.5"], "top_p must be a number in (0, 1]"),
        (["--min-p", "1.5"], "min_p must be a number from 0 to 1 (0 disables it), got 1.5"),
        (["--max-tokens", "many"], "argument --max-tokens: invalid int value: 'many'"),
        (["--device", "tpu"], "unknown device 'tpu': valid devices are auto, cpu, gpu, npu"),
        (["--device", "gpu"], "device 'gpu' is not available to openvino (present: cpu)"),
        (["--device", "npu"], "set AIPC_EMULATE_NPU=1"),
        (["--backend", "onnx"], "unknown backend 'onnx': valid backends are auto, openvino, onnxruntime, llamacpp"),
        (["--backend", "onnxruntime"], "backend 'onnxruntime' does not load gguf models (formats: onnxruntime"),
        (
            ["-m", "nosuch:model"],
            "unknown model 'nosuch:model': valid names are smollm2:135m (smollm2)",
        ),
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
        assert "is not a valid GGUF file" in result.stderr
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
    result = run_cli(
        "run", "smollm2:135m", "-i", "--verbose", "--temperature", "0", "--max-tokens", "40", input=script + "\n"
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "No system message was specified for this model." in out and "Cleared session context" in out
    after_clear = out.split("Cleared session context")[1]
    # Every turn's prompt, from --verbose: the second carries the first turn and its answer, /clear drops them.
    # (Whether the 135M model then says the name back depends on the CPU's rounding: on some it loops instead.)
    prompts = [int(n) for n in re.findall(r"prompt (\d+) tokens", result.stderr)]
    assert len(prompts) == 4, result.stderr
    first, second, cleared, _ = prompts
    assert second > first + 8 and cleared < first
    assert "Ada" not in after_clear  # without the first turn the name cannot come up
    assert after_clear.count("\n") >= 2  # the multi-line message got an answer too


def run_in_terminal(
    args: list[str], env: dict | None = None, columns: int = 80, timeout: float = 300
) -> tuple[str, int]:
    """`aipc ARGS` on a pseudo-terminal (stdin, stdout and stderr all a terminal): its output and exit status."""
    import fcntl
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # child
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        # The window size comes from the terminal: COLUMNS/LINES (which pytest sets) would override it.
        child_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in ("COLUMNS", "LINES")}
        os.execve(sys.executable, [sys.executable, "-m", "aipc", *args], child_env)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return out.decode(errors="replace"), os.WEXITSTATUS(status)


def _read_until(fd: int, pattern: str, timeout: float = 120.0, buf: str = "") -> str:
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
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a test run started in the background inherits it ignored
        os.execv(sys.executable, [sys.executable, "-m", "aipc", "run", "smollm2:135m", "--max-tokens", "2000"])
    try:
        _read_until(fd, ">>> ")
        os.write(fd, b"Write a very long story about a dragon who learns to fly.\r")
        echoed = _read_until(fd, "fly.\r\n", timeout=30)  # the terminal echoed the line
        if not echoed.split("fly.\r\n", 1)[1].strip():
            _read_until(fd, " ", timeout=60)  # the answer has started streaming
        time.sleep(0.3)
        os.write(fd, b"\x03")  # Ctrl-C
        out = _read_until(fd, "(answer stopped)", timeout=10)
        if ">>> " not in out.split("(answer stopped)", 1)[1]:  # the prompt may come in the same read
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


def _stats(stderr: str) -> dict:
    line = stderr.strip().splitlines()[-1]
    return {
        "prompt": int(re.search(r"prompt (\d+) tokens", line).group(1)),
        "ran": line.rsplit(" | ", 1)[1],
    }


def test_prose_with_a_colon_is_a_prompt_and_piped_text_comes_first():
    args = ["run", "--verbose", "--temperature", "0", "--max-tokens", "1"]
    alone = run_cli(*args, "Summarise:")
    assert alone.returncode == 0, alone.stderr  # not "unknown model 'Summarise:'"
    assert re.fullmatch(r"smollm2:135m@embedded \(q4_1 GGUF\) on \w+/cpu", _stats(alone.stderr)["ran"])
    piped = run_cli(*args, input="Translate into French: good morning\n")
    both = run_cli(*args, "Summarise:", input="Translate into French: good morning\n")
    assert piped.returncode == 0 and both.returncode == 0, both.stderr
    # Both reach the model: the prompt holds the piped text and the words (the template's markup counted once).
    assert _stats(both.stderr)["prompt"] > max(_stats(alone.stderr)["prompt"], _stats(piped.stderr)["prompt"])


def test_dashes_make_any_word_the_prompt():
    result = run_cli("run", "--verbose", "--max-tokens", "1", "--", "phi3")
    assert result.returncode == 0, result.stderr  # 'phi3' asked of the default model, not run as a model
    assert _stats(result.stderr)["ran"].startswith("smollm2:135m@embedded")
    flag = run_cli("run", "--verbose", "--max-tokens", "1", "-p", "phi3")
    assert flag.returncode == 0 and _stats(flag.stderr)["ran"].startswith("smollm2:135m@embedded")


def _answer(out: str) -> str:
    """What the answer printed on a terminal: after the load spinner's last erase, ANSI sequences removed."""
    text = out.replace("\r\n", "\n").rsplit("\033[K", 1)[-1]
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).strip("\n")


def test_answers_wrap_at_word_boundaries_in_a_terminal_only():
    args = ["run", "--temperature", "0", "--max-tokens", "90", "Describe the sea in four long sentences."]
    out, status = run_in_terminal(args, columns=40)
    assert status == 0, out
    answer = _answer(out)
    lines = answer.splitlines()
    assert len(lines) >= 3 and max(len(line) for line in lines) <= 39, answer
    piped = run_cli(*args)  # a pipe gets the raw stream
    assert piped.returncode == 0
    assert piped.stdout.split() == answer.split()  # the same words, none cut in two
    raw, status = run_in_terminal([*args, "--nowordwrap"], columns=40)
    assert status == 0 and _answer(raw).split() == answer.split()
    assert max(len(line) for line in _answer(raw).splitlines()) > 39  # not wrapped: the terminal wraps it


def test_chat_commands_set_show_save_load_exit(tmp_path):
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["AIPC_HOME"] = str(tmp_path / "home")
        os.execv(sys.executable, [sys.executable, "-m", "aipc", "run", "smollm2", "--temperature", "0"])
    try:
        out = _read_until(fd, ">>> ")
        assert "loading smollm2" in out  # the spinner while the model loads
        assert "Chatting with smollm2 (smollm2:135m@embedded (q4_1 GGUF)) on " in out

        def say(line: str, expect: str) -> str:
            """Type a line; read until `expect` and the prompt after it (the terminal may echo the line
            before the prompt it was typed at is printed: only text after `expect` counts as the next prompt)."""
            os.write(fd, line.encode() + b"\r")
            buf = _read_until(fd, expect, timeout=90)
            head, tail = buf.split(expect, 1)
            return head + expect + _read_until(fd, ">>> ", timeout=90, buf=tail)

        say("/set parameter num_predict 3", "Set parameter 'num_predict' to '3'")
        say("/set parameter temperature hot", "Couldn't set parameter")
        say("/set parameter stop Arr Yo", "Set parameter 'stop' to 'Arr, Yo'")
        shown = say("/show parameters", "User defined parameters:")
        assert "max_tokens" not in shown and re.search(r"num_predict\s+3", shown) and "temperature" in shown
        say("/set system You are a pirate.", "Set system message.")
        say("/show system", "You are a pirate.")
        say("/show template", "<|im_start|>")
        say("/show info", "architecture      llama")
        say("/nope", "Unknown command '/nope'")
        os.write(fd, b"Hello\r")  # answered (3 tokens) before the next line is read
        say("/save pirate-chat", "Created new model 'pirate-chat'")
        say("/load phi5", "Couldn't load model 'phi5'")
        loaded = say("/load pirate-chat", ">>> Hello")  # the saved conversation, replayed
        assert "Loading model 'pirate-chat'" in loaded
        say("/clear", "Cleared session context")
        say("/set parameter num_ctx 99999999", "over this model's context of 8192")
        shown = run_cli("show", "pirate-chat", env={"AIPC_HOME": str(tmp_path / "home")}).stdout
        assert "You are a pirate." in shown and re.search(r"num_predict\s+3", shown) and '"Arr"' in shown
        removed = run_cli("rm", "pirate-chat", env={"AIPC_HOME": str(tmp_path / "home")})
        assert removed.returncode == 0, removed.stderr
        say("/show info", "error: ")  # the model was removed from the store under the chat: it says so, goes on
        os.write(fd, b"/exit\r")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
