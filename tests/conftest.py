"""Shared fixtures: one model store per test session, and the embedded model opened once per device.

The store lives in a temporary folder (set AIPC_TEST_HOME to keep one between runs). Models are real: the
embedded SmolLM2-135M-Instruct GGUF, converted to OpenVINO IR once per session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

PARIS_QUESTION = "What is the capital of France?"


_MADE_HOME: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _MADE_HOME
    home = os.environ.get("AIPC_TEST_HOME")
    if not home:
        home = _MADE_HOME = tempfile.mkdtemp(prefix="aipc-test-home-")
    os.environ["AIPC_HOME"] = home
    os.environ.pop("AIPC_EMULATE_NPU", None)
    # The hub is unreachable here; point it at a closed loopback port so hub look-ups fail fast, not by timeout.
    os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"


def pytest_unconfigure(config: pytest.Config) -> None:
    """A store this session made is removed with it (converted fixtures take hundreds of MB)."""
    if _MADE_HOME:
        import shutil

        shutil.rmtree(_MADE_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def model():
    import aipc

    with aipc.load(device="cpu") as m:
        yield m


@pytest.fixture(scope="session")
def npu_model():
    import aipc

    os.environ["AIPC_EMULATE_NPU"] = "1"
    try:
        with aipc.load(device="npu") as m:
            yield m
    finally:
        os.environ.pop("AIPC_EMULATE_NPU", None)


def run_cli(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 180):
    """`aipc ARGS` in a subprocess, as a user would run it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "aipc", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input if input is not None else "",
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    """Where generated checkpoints live for the session (inside the session's store folder)."""
    root = Path(os.environ["AIPC_HOME"]) / "test-fixtures"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def phi3_fixtures(fixtures_root) -> dict[str, Path]:
    """The synthetic Phi-3 checkpoints: tiny, tiny-longrope (128k rope scaling), tiny-phi4 (partial rotary,
    GQA, tied embeddings). Made once per session, offline, in a few seconds each."""
    from aipc.convert.synthetic import make_phi3

    made = {}
    for shape in ("tiny", "tiny-longrope", "tiny-phi4"):
        folder = fixtures_root / shape
        if not (folder / "model.safetensors").is_file():
            make_phi3(folder, shape)
        made[shape] = folder
    return made


@pytest.fixture(scope="session")
def smollm2_phi3(fixtures_root) -> Path:
    """The embedded SmolLM2-135M-Instruct, dequantized and repacked into the Phi-3 layout (lossless): a real,
    coherent model in the exact Phi-3 graph (~50 s, once per session)."""
    from aipc.convert.from_gguf import gguf_to_hf, repack_as_phi3
    from aipc.store.resolve import resolve

    folder = fixtures_root / "smollm2-phi3"
    if not (folder / "model.safetensors").is_file():
        llama = fixtures_root / "smollm2-llama"
        if not (llama / "model.safetensors").is_file():
            gguf_to_hf(resolve(None).path, llama)
        repack_as_phi3(llama, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gguf(fixtures_root) -> Path:
    """A small real GGUF model (~6 MB): the llama architecture in the tiny shape's dimensions, random Q4_0
    weights, SmolLM2's vocabulary. Every runtime loads it; the GGUF fuzzer and disk tests damage copies."""
    from aipc.convert.synthetic_gguf import write_random_gguf

    path = fixtures_root / "fuzz-tiny.gguf"
    if not path.is_file():
        write_random_gguf(path.with_suffix(".tmp"), "tiny")
        os.replace(path.with_suffix(".tmp"), path)
    return path
