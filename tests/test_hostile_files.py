"""Local inputs that used to end in a traceback: each is one line and exit 1 or 2 now. An ONNX Runtime GenAI
folder with a broken genai_config.json, a malicious pickle given with --allow-pickle, a prompt that is not
UTF-8 (argv and stdin), and a disk that is too small or fills up during `convert` (a real tmpfs, mounted
here when the tests run as root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli


def error_line(result, *, allowed_prefixes: tuple[str, ...] = ()) -> str:
    """The one `aipc: error:` line of a failed command (notes before it allowed), never a traceback."""
    assert result.returncode in (1, 2), (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("aipc: error: "), result.stderr
    assert all(ln.startswith(allowed_prefixes) for ln in lines[:-1]), result.stderr
    return lines[-1]


# --- ONNX Runtime GenAI folders -----------------------------------------------------------------------------
GOOD_GENAI = {
    "model": {
        "type": "phi3",
        "context_length": 4096,
        "eos_token_id": [32000, 32007],
        "bos_token_id": 1,
        "decoder": {"filename": "model.onnx"},
    },
    "search": {"max_length": 4096},
}


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("{}", 'it has no "model" object'),
        ("not json", "it is not JSON"),
        ("[1]", 'it has no "model" object'),
        ({"model": {"decoder": {"filename": "model.onnx"}}}, "neither model.context_length nor search.max_length"),
        ({**GOOD_GENAI, "search": []}, '"search" is not an object'),
        ({"model": {**GOOD_GENAI["model"], "context_length": "4k"}}, "model.context_length is '4k'"),
        ({"model": {**GOOD_GENAI["model"], "eos_token_id": "x"}}, "model.eos_token_id is 'x'"),
        ({"model": {**GOOD_GENAI["model"], "decoder": {}}}, "model.decoder.filename is missing"),
        ({"model": {**GOOD_GENAI["model"], "decoder": {"filename": "../../etc/passwd"}}}, "points outside"),
        ({"model": {**GOOD_GENAI["model"], "decoder": {"filename": "absent.onnx"}}}, "absent.onnx is not in"),
    ],
)
def test_a_broken_genai_config_is_one_line_and_exit_2(tmp_path, config, fragment):
    folder = tmp_path / "onnx-model"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"\x08\x07")
    (folder / "genai_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    result = run_cli("run", str(folder), "hi")
    line = error_line(result)
    assert result.returncode == 2
    assert f"{folder / 'genai_config.json'} is not a usable ONNX Runtime GenAI config: " in line
    assert fragment in line


def test_a_valid_genai_config_passes_the_check(tmp_path):
    from aipc.store.resolve import resolve

    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "genai_config.json").write_text(json.dumps(GOOD_GENAI))
    assert resolve(str(tmp_path)).format == "onnx-genai"


# --- pickles --------------------------------------------------------------------------------------------------
class _Evil:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_in_one_line_and_runs_nothing(phi3_fixtures, tmp_path):
    import torch

    folder = tmp_path / "evil"
    folder.mkdir()
    for f in phi3_fixtures["tiny"].iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "code-ran"
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "payload": _Evil(marker)}, folder / "pytorch_model.bin")
    result = run_cli("convert", str(folder), "--to", "onnx", "--precision", "fp32", "--name", "evil", "--allow-pickle")
    line = error_line(result)
    assert result.returncode == 2
    assert "pytorch_model.bin holds objects other than tensors" in line and "nothing in it ran" in line
    assert not marker.exists()
    from aipc.store import store

    assert store.find("evil") == []


# --- text that is not UTF-8 -----------------------------------------------------------------------------------
def _aipc(args: list[bytes | str], stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aipc", *args], input=stdin, capture_output=True, env=os.environ.copy(), timeout=120
    )


def _text(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def test_a_prompt_on_argv_that_is_not_utf8_is_one_line():
    result = _text(_aipc(["run", b"caf\xe9 au lait"]))
    line = error_line(result)
    assert result.returncode == 2 and result.stdout == ""
    assert line == (
        "aipc: error: the prompt on the command line is not UTF-8 text (byte 0xe9 at character 3): pass UTF-8 text"
    )
    assert error_line(_text(_aipc(["run", "--system", b"\xff", "hi"]))).startswith("aipc: error: --system is not UTF-8")


def test_a_prompt_on_stdin_that_is_not_utf8_is_one_line():
    result = _text(_aipc(["run"], stdin=b"What is\xff\xfe the capital of France?\n"))
    line = error_line(result)
    assert result.returncode == 2 and result.stdout == ""
    assert line.startswith("aipc: error: the prompt on stdin is not UTF-8 text (byte 0xff at offset 7)")


def test_a_prompt_too_long_for_any_model_is_named_as_such_not_blamed_on_the_template():
    result = _text(_aipc(["run"], stdin=b"word " * 1_000_000))
    line = error_line(result)
    assert result.returncode == 2 and "the messages hold 4,999,999 characters" in line and "template" not in line


# --- a disk too small, or one that fills up ---------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs with the given options at a fresh folder (needs root); unmounted afterwards."""
    mounted = []

    def mount(options: str) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode:
            pytest.skip(f"needs to mount a tmpfs (root): {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def _convert_into(home: Path, source: Path) -> subprocess.CompletedProcess:
    argv = ["convert", str(source), "--to", "gguf", "--precision", "q8_0", "--name", "tiny"]
    return run_cli(*argv, env={"AIPC_HOME": str(home)}, timeout=300)


def _litter(home: Path) -> list[str]:
    """Staging and scratch folders left behind (lock files aside: `prune` takes those)."""
    return sorted(
        str(p.relative_to(home))
        for p in home.rglob("*")
        if p.is_dir() and (p.name.startswith(".staging-") or p.parent.name == "tmp")
    )


def test_a_disk_too_small_is_refused_before_any_work(small_disk, tiny_gguf):
    home = small_disk("size=4m")
    result = _convert_into(home, tiny_gguf)
    line = error_line(result)
    assert result.returncode == 2
    assert "not enough free disk space in" in line and "MB needed" in line and "MB free" in line
    assert _litter(home) == [] and not list(home.rglob("*.gguf"))


def test_a_disk_that_fills_up_during_convert_is_one_line(small_disk, tiny_gguf):
    """Inodes run out at a different step for each size: in aipc's own writes, and in llama.cpp's quantizer."""
    said = set()
    for inodes in range(5, 14):
        home = small_disk(f"size=64m,nr_inodes={inodes}")
        result = _convert_into(home, tiny_gguf)
        if result.returncode == 0:
            said.add("converted")
            continue
        line = error_line(result, allowed_prefixes=("note: ",))
        said.add("disk" if "the disk filled up while converting" in line else line)
        assert _litter(home) == [], inodes
        assert not list((home / "models").rglob("*.gguf")) if (home / "models").is_dir() else True
    assert said <= {"disk", "converted"}, said  # every failure says what happened
    assert "disk" in said


# --- chat templates in GGUF files, on llama.cpp -------------------------------------------------------------------
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _with_template(src: Path, dst: Path, template: str) -> Path:
    """A copy of the GGUF `src` whose `tokenizer.chat_template` is `template`."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and key not in ("general.architecture", "tokenizer.chat_template"):
            sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub)
    writer.add_chat_template(template)
    for t in reader.tensors:
        data = np.asarray(t.data)
        writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _limited_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))  # a regression fails, not the machine


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        # Jinja folds constant expressions when it compiles: llama-cpp-python's loader took all the memory here
        ("{{ 'a' * 10**10 }}" + CHATML, "refused as unsafe"),
        ("{% for %}" + CHATML, "chat template"),  # malformed: raised from inside llama-cpp-python's constructor
        ("{% if false %}{{ 'a' * 10**10 }}{% endif %}" + CHATML, None),  # never rendered: the model answers
    ],
)
def test_a_hostile_chat_template_in_a_gguf_is_one_line_on_llama_cpp(tiny_gguf, tmp_path, template, fragment):
    path = _with_template(tiny_gguf, tmp_path / "model.gguf", template)
    result = subprocess.run(
        [sys.executable, "-m", "aipc", "run", str(path), "--backend", "llamacpp", "--max-tokens", "3", "Hi"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
        preexec_fn=_limited_memory,
    )
    if fragment is None:
        assert result.returncode == 0, result.stderr[-2000:]
    else:
        assert fragment in error_line(result) and result.returncode == 2


# --- Hugging Face folders: config.json and safetensors headers ---------------------------------------------------
TINY_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 100,
}


def _hf_folder(folder: Path, config: object, header: dict | None = None) -> Path:
    import struct

    from safetensors.numpy import save_file

    folder.mkdir()
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "config.json").write_text(text)
    weights = folder / "model.safetensors"
    if header is None:
        import numpy as np

        save_file({"w": np.zeros((4, 4), dtype=np.float32)}, str(weights))
    else:
        raw = json.dumps(header).encode()
        weights.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(64))
    return folder


@pytest.mark.parametrize(
    ("config", "header", "fragment"),
    [
        ("{{{", None, "config.json is not a usable model config: it is not JSON"),
        ([1, 2, 3], None, "it holds list, not an object"),
        ({**TINY_CONFIG, "num_attention_heads": 0}, None, "num_attention_heads is 0, not an integer from 1"),
        ({**TINY_CONFIG, "num_hidden_layers": 1e308}, None, "num_hidden_layers is 1e+308"),
        ({k: v for k, v in TINY_CONFIG.items() if k != "intermediate_size"}, None, "intermediate_size is missing"),
        ({**TINY_CONFIG, "num_key_value_heads": 3}, None, "not a multiple of num_key_value_heads 3"),
        (TINY_CONFIG, {"w": {"dtype": "F32", "shape": [80000, 80000], "data_offsets": [0, 25600000000]}}, "outside"),
        (TINY_CONFIG, {"w": {"dtype": "F99", "shape": [4], "data_offsets": [0, 16]}}, "has dtype 'F99'"),
        (TINY_CONFIG, {"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, "does not fill"),
    ],
)
@pytest.mark.parametrize("command", [["run"], ["convert", "--to", "gguf"]])
def test_a_damaged_hugging_face_folder_is_one_line(tmp_path, config, header, fragment, command):
    folder = _hf_folder(tmp_path / "model", config, header)
    args = [*command, str(folder)] + (["hi"] if command == ["run"] else [])
    result = run_cli(*args, timeout=120)
    assert fragment in error_line(result) and result.returncode == 2
