"""Context length as a load option on every backend, and LongRoPE past the original 4096 positions.

The LongRoPE check runs the tiny 128k-style Phi-3 fixture at 32 bits everywhere (PyTorch fp32, ONNX fp32, an
fp32 OpenVINO IR with f32 math, an f32 GGUF), with a prompt of 4232 tokens, and asks for PyTorch's greedy
tokens. The fixture is random and sharpened, so 16-bit weights drift from the reference at this length by
rounding alone (FINDINGS.md); 32 bits isolate what is tested: the long-factor rotary embedding.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import aipc
from aipc.convert.api import convert
from aipc.errors import ContextLengthError

LONG_PROMPT = 4232  # tokens: past the fixture's original_max_position_embeddings (4096)
CONTEXT = 8192
NEW_TOKENS = 16
GREEDY = {"temperature": 0, "repetition_penalty": 1.0, "max_tokens": NEW_TOKENS}


def _long_prompt() -> list[int]:
    # Ordinary vocabulary ids (the fixture's control tokens sit at the top of its vocabulary).
    return np.random.default_rng(0).integers(10, 900, size=LONG_PROMPT).tolist()


def _fp32_ir(checkpoint: Path, out: Path) -> Path:
    """optimum-intel's fp32 export (aipc converts to OpenVINO at 16 bits and below)."""
    if not (out / "openvino_model.xml").is_file():
        argv = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino", "-m", str(checkpoint)]
        argv += ["--task", "text-generation-with-past", "--weight-format", "fp32", str(out)]
        subprocess.run(argv, check=True, capture_output=True, timeout=600)
    return out


def _f32_gguf(checkpoint: Path, out: Path) -> Path:
    """llama.cpp's converter at f32 (aipc converts to GGUF at 16 bits and below)."""
    from aipc.convert.targets import llama_cpp_dir

    if not out.is_file():
        tools = llama_cpp_dir()
        argv = [sys.executable, str(tools / "convert_hf_to_gguf.py"), str(checkpoint), "--outtype", "f32"]
        argv += ["--outfile", str(out), "--model-name", "fx-longrope"]
        env = {"PYTHONPATH": str(tools / "gguf-py"), "PATH": "/usr/bin:/bin"}
        subprocess.run(argv, check=True, capture_output=True, timeout=600, env=env)
    return out


@pytest.fixture(scope="module")
def longrope_reference(phi3_fixtures):
    with aipc.load(str(phi3_fixtures["tiny-longrope"]), backend="torch", context_length=CONTEXT) as model:
        assert model.info.context_length == CONTEXT
        *_, done = model.stream(_long_prompt(), raw=True, **GREEDY)
    assert done.usage.prompt_tokens == LONG_PROMPT and len(done.token_ids) >= 1
    return done.token_ids


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "llamacpp"])
def test_longrope_past_the_original_context_matches_pytorch(phi3_fixtures, fixtures_root, longrope_reference, backend):
    checkpoint = phi3_fixtures["tiny-longrope"]
    load: dict = {}
    if backend == "onnxruntime":
        spec = convert(str(checkpoint), "onnx", "fp32", name="fx-longrope").ref
    elif backend == "openvino":
        spec = str(_fp32_ir(checkpoint, fixtures_root / "longrope-ov-fp32"))
        load = {"precision_hint": "f32"}  # the CPU plugin otherwise computes in bf16 where the CPU has it
    else:
        spec = str(_f32_gguf(checkpoint, fixtures_root / "longrope-f32.gguf"))
    with aipc.load(spec, backend=backend, device="cpu", context_length=CONTEXT, **load) as model:
        assert model.info.context_length == CONTEXT
        *_, done = model.stream(_long_prompt(), raw=True, **GREEDY)
    assert done.usage.prompt_tokens == LONG_PROMPT
    assert done.token_ids == longrope_reference


# --- the option on every backend ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_on(phi3_fixtures):
    checkpoint = str(phi3_fixtures["tiny"])
    return {
        "openvino": lambda: convert(checkpoint, "openvino", "fp16", name="fx-tiny").ref,
        "llamacpp": lambda: convert(checkpoint, "gguf", "f16", name="fx-tiny").ref,
        "onnxruntime": lambda: convert(checkpoint, "onnx", "fp32", name="fx-tiny").ref,
        "torch": lambda: checkpoint,
    }


@pytest.mark.parametrize("backend", ["openvino", "llamacpp", "onnxruntime", "torch"])
def test_context_length_is_a_load_option_and_its_limit_is_enforced(tiny_on, backend):
    with aipc.load(tiny_on[backend](), backend=backend, device="cpu", context_length=300) as model:
        assert model.info.context_length == 300 and model.info.max_prompt_tokens == 299
        *_, done = model.stream(list(range(10, 290)), raw=True, temperature=0, max_tokens=64, ignore_eos=True)
        assert done.usage.completion_tokens == 300 - 280  # the answer stops where the context ends
        with pytest.raises(ContextLengthError, match="300 tokens") as info:
            model.generate(list(range(10, 310)), raw=True, max_tokens=4)
        assert info.value.requested == 300


def test_npu_context_length_sets_the_static_pipeline_limits(phi3_fixtures, monkeypatch):
    from aipc.backends.openvino import npu_limits
    from aipc.engine.config import LoadConfig

    assert npu_limits(LoadConfig()) == (1024, 128)
    assert npu_limits(LoadConfig(context_length=2048)) == (1920, 128)
    assert npu_limits(LoadConfig(context_length=256)) == (192, 64)
    monkeypatch.setenv("AIPC_EMULATE_NPU", "1")
    with aipc.load("smollm2:135m", device="npu", context_length=512) as model:
        assert model.info.device.startswith("npu")
        assert model.info.context_length == 512 and model.info.max_prompt_tokens == 384


def test_serve_load_options_reach_the_runtime_and_the_ollama_options(tiny_on):
    """`aipc serve --context-length 300 --kv-cache f16 --repeat-penalty 1.3`: the model the pool loads holds
    300 tokens and samples with that penalty; Ollama's num_ctx narrows one request; a prompt over the context is
    a 400 naming the limit."""
    import httpx

    from aipc.server.settings import ServerSettings
    from tests.test_server_support import LiveServer

    settings = ServerSettings(
        model=tiny_on["llamacpp"](),
        backend="llamacpp",
        device="cpu",
        context_length=300,
        kv_cache="f16",
        repetition_penalty=1.3,
    )
    with LiveServer(settings) as srv:
        body = {"model": settings.model, "prompt": "hello", "raw": True, "stream": False}
        r = httpx.post(srv.url + "/api/generate", json=body | {"options": {"num_predict": 4}}, timeout=120)
        assert r.status_code == 200, r.text
        [entry] = srv.state.pool.running()
        assert entry.model.info.context_length == 300
        assert entry.model.defaults.repetition_penalty == 1.3
        assert "repeat_penalty 1.3" in entry.model.sampling.summary()
        long = body | {"prompt": "hello " * 400, "options": {"num_predict": 4, "repeat_penalty": 1.0}}
        r = httpx.post(srv.url + "/api/generate", json=long, timeout=120)
        assert r.status_code == 400 and "299 tokens" in r.text, r.text  # the prompt's limit: 300 less one
        r = httpx.post(srv.url + "/api/generate", json=body | {"prompt": "hello " * 60, "options": {"num_ctx": 40}})
        assert r.status_code == 400 and "40" in r.text, r.text


def test_llamacpp_keeps_a_q8_cache_only_where_the_head_size_allows_it(phi3_fixtures, fixtures_root):
    """q8_0 packs 32 values per block: the tiny fixture's 16-wide heads get f16 by default, and q8 asked for is
    refused with the reason."""
    from aipc.errors import UsageError

    gguf = str(_f32_gguf(phi3_fixtures["tiny-longrope"], fixtures_root / "longrope-f32.gguf"))
    with aipc.load(gguf, backend="llamacpp", device="cpu", context_length=512) as model:
        *_, done = model.stream("hello", raw=True, temperature=0, max_tokens=2, ignore_eos=True)
        assert done.usage.completion_tokens == 2
    with pytest.raises(UsageError, match="multiple of 32 on llama.cpp.*is 16: use f16 or f32"):
        aipc.load(gguf, backend="llamacpp", device="cpu", context_length=512, kv_cache="q8")
