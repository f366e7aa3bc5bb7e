"""Synthetic Phi-3-family checkpoints, made offline: random weights, a locally trained SentencePiece tokenizer,
and the real models' special tokens, chat template and file layout.

They stand in for the real models (which cannot be downloaded here) wherever a test or a benchmark needs the
exact Phi-3 graph: every converter and backend sees the same files a Hugging Face download would give. Each
config carries `"aipc_synthetic": true`, so the store can say it is not a real model.

Shapes:
- `tiny`: Phi-3-mini's structure at toy size (fast tests).
- `tiny-longrope`: with the 128k models' LongRoPE `rope_scaling` (short and long factors).
- `tiny-phi4`: Phi-4-mini's traits: partial rotary embeddings, grouped-query attention, tied embeddings.
- `phi3-mini`: Phi-3-mini-4k-instruct's real dimensions (3.8B parameters): costs what the real model costs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

# Phi-3-mini-4k-instruct's chat template, as its tokenizer_config.json ships it.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}"
    "{% endif %}"
)
# Phi-3's added tokens, in the order (and so the relative ids) of the real tokenizer: 32000 onwards there.
PHI3_ADDED_TOKENS = (
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
)

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=256,
        max_position_embeddings=4096,
        spm_vocab=1000,
    ),
    "tiny-longrope": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        max_position_embeddings=131072,
        spm_vocab=1000,
        longrope=True,
    ),
    # head_dim 64 with 75% rotary: ONNX Runtime's attention kernel needs the rotary half-width (24) to be a
    # multiple of 8, as Phi-4-mini's real one (48) is.
    "tiny-phi4": dict(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        max_position_embeddings=4096,
        spm_vocab=1000,
        partial_rotary_factor=0.75,
        tie_word_embeddings=True,
    ),
    "phi3-mini": dict(
        hidden_size=3072,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=8192,
        max_position_embeddings=4096,
        spm_vocab=32000,
    ),
}


def random_phi3(seed: int, **config: Any):
    """A `Phi3ForCausalLM` with random weights for `config` (Phi-3's norm epsilon and RoPE base unless given),
    its config marked synthetic."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    config = {"rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float32", **config}
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = Phi3ForCausalLM(Phi3Config(**config))
    model.eval()
    model.config.aipc_synthetic = True
    return model


def make_phi3(out: Path, shape: str = "tiny", *, seed: int = 0) -> Path:
    """Write a synthetic Phi-3 checkpoint folder (safetensors, config, SentencePiece tokenizer) to `out`."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: valid shapes are {', '.join(SHAPES)}")
    dims = dict(SHAPES[shape])
    spm_vocab = dims.pop("spm_vocab")
    longrope = dims.pop("longrope", False)
    out.mkdir(parents=True, exist_ok=True)
    tok = _write_tokenizer(out, spm_vocab, seed=seed)
    n_added = len(PHI3_ADDED_TOKENS)
    vocab_size = _round_up(spm_vocab + n_added, 64)
    head_dim = dims["hidden_size"] // dims["num_attention_heads"]
    rotary = int(head_dim * dims.get("partial_rotary_factor", 1.0))
    extra: dict[str, Any] = {}
    if longrope:
        rng = random.Random(seed)
        extra["rope_scaling"] = {
            "type": "longrope",
            "short_factor": [round(1.0 + 0.05 * rng.random(), 4) for _ in range(rotary // 2)],
            "long_factor": [round(1.0 + 8.0 * i / max(rotary // 2 - 1, 1), 4) for i in range(rotary // 2)],
        }
        extra["original_max_position_embeddings"] = 4096
    model = random_phi3(
        seed,
        vocab_size=vocab_size,
        bos_token_id=1,
        eos_token_id=tok["eos_id"],
        pad_token_id=tok["eos_id"],
        **dims,
        **extra,
    )
    model.generation_config.eos_token_id = [tok["eos_id"], tok["end_id"]]
    model.generation_config.bos_token_id = 1
    model.save_pretrained(out, safe_serialization=True)
    return out


_PROSE = [
    "Small language models answer questions on laptops without sending data anywhere.",
    "The neural processing unit runs matrix multiplications with little power.",
    "A tokenizer splits text into pieces that the model turns into vectors.",
    "Paris is the capital and most populous city of France.",
    "Streaming shows each word as soon as the model produces it.",
    "Quantization stores weights in fewer bits, trading a little quality for speed.",
    "She asked what time it was, and he said it was half past three.",
    "Numbers such as 42, 3.14 and 2024 appear in ordinary writing too.",
]


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _corpus(seed: int) -> list[str]:
    """Plain English sentences to train the tokenizer on: enough variety for a byte-fallback vocabulary."""
    rng = random.Random(seed)
    subjects = ["The capital of France", "A small model", "The quick brown fox", "Every answer", "The NPU", "Paris"]
    verbs = ["is", "runs", "jumps over", "helps", "streams", "answers"]
    objects = ["the lazy dog", "a question", "on the CPU", "Paris", "the user", "tokens quickly", "in the city"]
    lines = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(4000)]
    digits = [" ".join(str(rng.randint(0, 10 ** rng.randint(1, 6))) for _ in range(8)) for _ in range(200)]
    return _PROSE * 20 + lines + digits


def _write_tokenizer(out: Path, vocab: int, *, seed: int) -> dict[str, int]:
    """Train a Llama-style SentencePiece model locally, then save it as Phi-3's tokenizer files."""
    import io

    import sentencepiece as spm
    from transformers import LlamaTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(seed)),
        model_writer=buf,
        vocab_size=vocab,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
        hard_vocab_limit=False,
    )
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    tokenizer = LlamaTokenizer.from_pretrained(out, legacy=False, add_bos_token=False)
    tokenizer.add_special_tokens({"additional_special_tokens": list(PHI3_ADDED_TOKENS)})
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    tokenizer.model_max_length = 4096
    tokenizer.save_pretrained(out)
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|end|>"])
    if not (out / "tokenizer.model").is_file():  # llama.cpp's Phi-3 converter reads the SentencePiece model
        (out / "tokenizer.model").write_bytes(buf.getvalue())
    meta = {"eos_id": ids[0], "end_id": ids[1]}
    (out / "aipc-synthetic.json").write_text(json.dumps({"tokenizer": meta, "seed": seed}, indent=2) + "\n")
    return meta
