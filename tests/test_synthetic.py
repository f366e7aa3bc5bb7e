"""The real-scale synthetic model: Phi-3-mini's exact dimensions, random weights, never mistaken for real."""

from __future__ import annotations

import pytest

import aipc
from aipc.convert.api import convert
from aipc.store import store
from aipc.store.gguf_header import read_metadata
from tests.conftest import run_cli


@pytest.fixture
def frees_the_store():
    """Each real-scale model is removed after its test: two of them (4.9 GB) need not share a small CI disk."""
    yield
    for variant in store.list_variants("synthetic-phi3-mini"):
        store.remove(variant.ref)


def test_phi3_mini_sized_random_model_is_written_straight_to_gguf_and_runs(frees_the_store):
    variant = convert("synthetic:phi3-mini", "gguf", "q4_0")
    assert variant.name == "synthetic-phi3-mini" and variant.synthetic
    [gguf] = variant.path.glob("*.gguf")
    meta = read_metadata(gguf, arrays=False)
    assert "not a real model" in meta["general.name"]
    assert (meta["llama.embedding_length"], meta["llama.block_count"], meta["llama.feed_forward_length"]) == (
        3072,
        32,
        8192,
    )
    assert meta["llama.attention.head_count"] == 32 and meta["llama.context_length"] == 4096
    # 3.8B parameters at 4.5 bits each (Q4_0 blocks): Phi-3-mini's int4 size.
    assert 2.0e9 < gguf.stat().st_size < 2.3e9
    shown = run_cli("show", "synthetic-phi3-mini")
    assert "SYNTHETIC" in shown.stdout and "not a real model" in shown.stdout
    assert "synthetic-phi3-mini (synthetic)" in run_cli("list").stdout
    with aipc.load("synthetic-phi3-mini", backend="llamacpp", device="cpu") as model:
        *_, done = model.stream("Hello", raw=True, max_tokens=2, temperature=0, ignore_eos=True)
    assert done.usage.completion_tokens == 2


def test_phi3_mini_sized_random_model_is_written_as_the_onnx_builders_int4_graph_and_runs(frees_the_store):
    import json

    import onnx

    variant = convert("synthetic:phi3-mini", "onnx", "int4")
    assert variant.name == "synthetic-phi3-mini" and variant.synthetic and variant.variant == "onnx-int4"
    decoder = json.loads((variant.path / "genai_config.json").read_text())["model"]["decoder"]
    assert (decoder["hidden_size"], decoder["num_hidden_layers"], decoder["num_attention_heads"]) == (3072, 32, 32)
    graph = onnx.load(str(variant.path / "model.onnx"), load_external_data=False).graph
    layers = {n.name.split("/")[2] for n in graph.node if n.name.startswith("/model/layers.")}
    assert {f"layers.{k}" for k in range(32)} <= layers
    assert sum(n.op_type == "GroupQueryAttention" for n in graph.node) == 32
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) == 32 * 5 + 1  # qkv, o, gate, up, down; lm_head
    assert len([i for i in graph.input if i.name.startswith("past_key_values.")]) == 64
    # Phi-3-mini int4 for the CPU as the builder writes it: 4-bit blocks of 32 plus an fp32 embedding.
    assert 2.5e9 < sum(f.stat().st_size for f in variant.path.iterdir()) < 2.9e9
    assert "SYNTHETIC" in run_cli("show", "synthetic-phi3-mini@onnx-int4").stdout
    with aipc.load("synthetic-phi3-mini@onnx-int4", backend="onnxruntime", device="cpu") as model:
        *_, done = model.stream("Hello", raw=True, max_tokens=2, temperature=0, ignore_eos=True)
    assert done.usage.completion_tokens == 2


def test_synthetic_models_are_only_written_as_gguf_q4_0_or_onnx_int4():
    result = run_cli("convert", "synthetic:phi3-mini", "--to", "openvino")
    assert result.returncode == 2 and "use --to gguf --precision q4_0 or --to onnx --precision int4" in result.stderr
    result = run_cli("convert", "synthetic:phi9", "--to", "gguf", "--precision", "q4_0")
    assert result.returncode == 2 and "unknown synthetic shape 'phi9'" in result.stderr
