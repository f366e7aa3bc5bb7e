"""Each model's default sampling settings (aipc.engine.defaults) and default context length (aipc.engine.context)."""

from __future__ import annotations

import json

import pytest

from aipc.engine import context, defaults
from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.errors import InvalidConfigError
from aipc.store.resolve import ModelSource, resolve


def test_ollama_defaults_fill_what_nothing_else_sets(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    source = ModelSource("plain", "hf", tmp_path)
    assert defaults.for_source(source) == {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1}
    # GenerationConfig's own defaults are the same, so a config made without a model samples alike.
    config = GenerationConfig()
    assert {k: getattr(config, k) for k in defaults.OLLAMA} == defaults.OLLAMA
    assert config.min_p == 0 and set(defaults.OPTIONS) == {*defaults.OLLAMA, "min_p"}  # min_p: off unless set


def test_the_model_files_then_the_catalog_win(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.95, "top_k": 20}))
    source = ModelSource("phi3:mini", "hf", tmp_path, defaults={"temperature": 0.3})
    found = defaults.resolve(source)
    assert found.values == {"temperature": 0.3, "top_k": 20, "top_p": 0.95, "repetition_penalty": 1.1}
    assert found.origins["temperature"] == "aipc's catalog"
    assert found.origins["top_k"] == "generation_config.json"
    assert found.origins["repetition_penalty"] == defaults.ORIGIN_BASE
    # A created model's PARAMETERs (`aipc create`) win over its base's files the same way, and say so.
    created = defaults.resolve(ModelSource("my-model", "hf", tmp_path, defaults={"repetition_penalty": 1.3}))
    assert created.values["repetition_penalty"] == 1.3 and created.values["top_k"] == 20
    assert created.origins["repetition_penalty"] == "its Modelfile"


def test_greedy_authors_and_hostile_files(tmp_path):
    """do_sample false means greedy; values that are not valid settings (model files are untrusted) are ignored."""
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"do_sample": False, "temperature": 0.9, "top_p": 7, "top_k": "many", "repetition_penalty": -1})
    )
    assert defaults.for_source(ModelSource("m", "hf", tmp_path)) == {
        "temperature": 0.0,
        "top_k": 40,
        "top_p": 0.9,
        "repetition_penalty": 1.1,
    }
    (tmp_path / "generation_config.json").write_text("[not json")
    assert defaults.for_source(ModelSource("m", "hf", tmp_path)) == defaults.OLLAMA


def test_gguf_sampling_keys_are_read(tmp_path):
    gguf = pytest.importorskip("gguf", reason="the gguf package (llama.cpp's gguf-py) writes the test file")
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_float32("general.sampling.temp", 0.5)
    writer.add_uint32("general.sampling.top_k", 64)
    writer.add_float32("general.sampling.penalty_repeat", 1.05)
    writer.add_float32("general.sampling.min_p", 0.05)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    found = defaults.resolve(ModelSource("m", "gguf", path))
    assert found.values["temperature"] == pytest.approx(0.5)
    assert found.values["top_k"] == 64
    assert found.values["repetition_penalty"] == pytest.approx(1.05)
    assert found.values["min_p"] == pytest.approx(0.05)
    assert found.values["top_p"] == 0.9  # not in the file: Ollama's
    assert "min_p 0.05" in found.summary() and "min_p" not in defaults.resolve(resolve("smollm2:135m")).summary()
    assert found.origins["top_k"] == "the GGUF's general.sampling"


def test_embedded_model_defaults_and_the_verbose_line():
    found = defaults.resolve(resolve("smollm2:135m"))
    assert found.values == defaults.for_source(resolve("smollm2:135m"))
    assert found.values["repetition_penalty"] > 1  # SmolLM2-135M loops without one (benchmarks/stop_rate.py)
    line = found.summary()
    assert line.startswith("sampling: temperature ") and "repeat_penalty" in line and "(smollm2:135m defaults" in line
    assert "set: repeat_penalty" in found.summary({"repetition_penalty": 1.3})
    assert found.summary({"temperature": 0}).startswith("sampling: greedy (temperature 0), repeat_penalty")


def test_load_takes_sampling_overrides_and_checks_them_first():
    with pytest.raises(InvalidConfigError, match="repetition_penalty must be a finite number > 0"):
        import aipc

        aipc.load("smollm2:135m", sampling={"repetition_penalty": 0})


# --- context length ----------------------------------------------------------------------------------------------

PHI3_MINI = context.ModelDims(131072, context.KVShape(layers=32, kv_heads=32, head_dim=96))


def test_kv_bytes_per_token_from_the_model_dimensions():
    # Phi-3-mini: 32 layers x 32 KV heads x 96 x 2 (K and V) x 2 bytes = 384 KiB per token at f16.
    assert PHI3_MINI.kv.bytes_per_token("f16") == 393216
    assert PHI3_MINI.kv.bytes_per_token("f32") == 2 * 393216
    meta = {
        "general.architecture": "llama",
        "llama.block_count": 30,
        "llama.attention.head_count": 9,
        "llama.attention.head_count_kv": 3,
        "llama.embedding_length": 576,
        "llama.context_length": 8192,
    }
    assert context.dims_from_gguf(meta) == context.ModelDims(8192, context.KVShape(30, 3, 64))
    config = {"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 256, "max_position_embeddings": 4096}
    assert context.dims_from_config(config) == context.ModelDims(4096, context.KVShape(4, 8, 32))
    genai = {
        "model": {
            "context_length": 512,
            "decoder": {"num_hidden_layers": 2, "num_key_value_heads": 2, "num_attention_heads": 4, "head_size": 16},
        }
    }
    assert context.dims_from_genai(genai) == context.ModelDims(512, context.KVShape(2, 2, 16))


def test_the_trained_context_is_capped_to_fit_free_memory(caplog):
    gib = 2**30
    # 128k tokens of f16 KV cache are 48 GiB: with 8 GiB free, half of it holds 10k tokens, rounded down to 1024s.
    with caplog.at_level("WARNING", logger="aipc"):
        got = context.choose(None, PHI3_MINI, "f16", name="phi3:mini-128k", free_bytes=8 * gib)
    assert got == 10240
    (record,) = caplog.records
    assert "context capped to 10240 tokens" in record.message and "131072" in record.message
    assert "--context-length" in record.message and "\n" not in record.message
    # Enough memory: the trained context. Asked for: exactly that, even beyond the trained one.
    assert context.choose(None, PHI3_MINI, "q8", free_bytes=512 * gib) == 131072
    assert context.choose(70000, PHI3_MINI, "f16", free_bytes=1 * gib, total_bytes=64 * gib) == 70000
    with pytest.raises(InvalidConfigError, match="more than this machine's 16.0 GiB of memory"):
        context.choose(70000, PHI3_MINI, "f16", total_bytes=16 * gib)  # it could never fit
    # Never below MIN_CONTEXT; unknown dimensions or memory: the trained context, else the fallback.
    assert context.choose(None, PHI3_MINI, "f16", free_bytes=1) == context.MIN_CONTEXT
    assert context.choose(None, context.ModelDims(None, None), "f16") == context.FALLBACK_CONTEXT


def test_free_memory_is_read_under_the_sysroot(tmp_path, monkeypatch):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal:  16000000 kB\nMemAvailable:  4194304 kB\n")
    monkeypatch.setenv("AIPC_SYSROOT", str(tmp_path))
    assert context.free_memory_bytes() == 4 * 2**30
    assert context.choose(None, PHI3_MINI, "f16") == 5120
    monkeypatch.setenv("AIPC_SYSROOT", str(tmp_path / "nowhere"))
    assert context.free_memory_bytes() is None


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"context_length": 8}, "context_length must be an integer from 16 to 2147483647"),
        ({"context_length": 4096.0}, "context_length must be an integer from 16 to 2147483647"),
        ({"kv_cache": "q4"}, "kv_cache must be one of f32, f16, q8"),
    ],
)
def test_load_options_are_checked(options, fragment):
    with pytest.raises(InvalidConfigError, match=fragment):
        LoadConfig(**options)


# --- the command line --------------------------------------------------------------------------------------------


def test_verbose_says_the_sampling_and_repeat_penalty_overrides_it():
    from tests.conftest import run_cli

    result = run_cli("run", "--device", "cpu", "--verbose", "--repeat-penalty", "1.3", "--max-tokens", "8", "Hi")
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("sampling: ")]
    assert len(lines) == 1, result.stderr
    assert "repeat_penalty 1.3" in lines[0] and "smollm2:135m defaults" in lines[0]
    assert "set: repeat_penalty" in lines[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--kv-cache", "q4"], "kv_cache must be one of f32, f16, q8"),
        (["--context-length", "8"], "context_length must be an integer from 16 to 2147483647"),
        (["--repeat-penalty", "0"], "repetition_penalty must be a finite number > 0"),
    ],
)
def test_bad_load_and_sampling_options_are_one_line_exit_2(args, fragment):
    from tests.conftest import run_cli

    result = run_cli("run", *args, "Hi")
    assert result.returncode == 2
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_show_prints_the_sampling_that_run_applies():
    from tests.conftest import run_cli

    shown = run_cli("show", "smollm2", "--parameters")
    assert shown.returncode == 0, shown.stderr
    params = dict(ln.split(None, 1) for ln in shown.stdout.splitlines() if ln.strip())
    # The catalog's temperature, top_p and penalty, and Ollama's top_k for what the catalog leaves out.
    assert params == {"temperature": "0.2", "top_p": "0.9", "repeat_penalty": "1.1", "top_k": "40"}
