"""GGUF -> Hugging Face checkpoint, and a Llama checkpoint repacked into the Phi-3 layout.

`gguf_to_hf` lets every exporter start from a GGUF file (transformers dequantizes it to fp32). `repack_as_phi3`
turns a Llama-architecture checkpoint into `Phi3ForCausalLM` losslessly (fused `qkv_proj` and `gate_up_proj`,
the same math), which gives a real, coherent model in the exact Phi-3 graph: the embedded SmolLM2 becomes the
quality fixture for every Phi-3 converter and backend.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from aipc.errors import ConversionError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "generation_config.json",
)


def gguf_to_hf(gguf: Path, out: Path) -> Path:
    """Dequantize `gguf` into a safetensors checkpoint folder at `out`, with a tokenizer rebuilt from the GGUF's
    own metadata (transformers' GGUF tokenizer conversion mislabels BPE vocabularies: wrong class, wrong EOS,
    extra tokens)."""
    import torch
    from transformers import AutoModelForCausalLM

    from aipc import progress

    quiet_unless_verbose()
    with progress.step(f"dequantizing {gguf.name} to fp32", keep=True):
        try:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ConversionError(f"transformers could not read {gguf.name}: {exc}") from None
        meta = gguf_metadata(gguf)
        model.generation_config.eos_token_id = meta.get("tokenizer.ggml.eos_token_id")
        model.generation_config.bos_token_id = meta.get("tokenizer.ggml.bos_token_id")
        model.config.eos_token_id = meta.get("tokenizer.ggml.eos_token_id")
        model.config.bos_token_id = meta.get("tokenizer.ggml.bos_token_id")
        model.save_pretrained(out, safe_serialization=True)
        tokenizer_from_gguf(meta, out)
    return out


def quiet_unless_verbose() -> None:
    """transformers' own progress bars ("Converting and de-quantizing GGUF tensors", "Writing model shards")
    are hidden: aipc reports the step itself. `--verbose` shows them."""
    import os

    from aipc import progress

    if not progress.verbose():
        os.environ["TQDM_DISABLE"] = "1"
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def gguf_metadata(gguf: Path) -> dict:
    """The GGUF file's key/value metadata (arrays as lists), tensors left unread."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


# llama.cpp's BPE pre-tokenizer names -> the Hugging Face pre-tokenizer that splits text the same way.
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "qwen2", "deepseek-coder")


def tokenizer_from_gguf(meta: dict, out: Path) -> None:
    """Write tokenizer.json + tokenizer_config.json for a GGUF `gpt2` (byte-level BPE) vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ConversionError(
            f"rebuilding a {meta.get('tokenizer.ggml.model')!r} GGUF tokenizer is not supported (only byte-level BPE)"
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if meta.get("tokenizer.ggml.pre") in _DIGITS_THEN_GPT2:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    # GGUF token types: 3 = control (special), 4 = user-defined.
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types, strict=True) if ty == 3]
    tok.add_special_tokens(specials)

    def name(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[idx] if isinstance(idx, int) and 0 <= idx < len(tokens) else None

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=name("bos"),
        eos_token=name("eos"),
        unk_token=name("unknown"),
        pad_token=name("padding"),
        clean_up_tokenization_spaces=False,
        model_max_length=int(meta.get(f"{meta.get('general.architecture')}.context_length", 2048)),
    )
    if meta.get("tokenizer.chat_template"):
        fast.chat_template = meta["tokenizer.chat_template"]
    fast.save_pretrained(out)
    # Byte-level BPE is GPT-2's tokenizer type; llama.cpp's Phi-3 converter reads this to pick its vocab path.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "GPT2Tokenizer"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def repack_as_phi3(llama_dir: Path, out: Path) -> Path:
    """Write `llama_dir` (LlamaForCausalLM) as an equivalent Phi3ForCausalLM checkpoint in `out`."""
    import torch
    from safetensors.torch import load_file, save_file

    config = json.loads((llama_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ConversionError(f"repacking needs a llama checkpoint, got model_type {config.get('model_type')!r}")
    state: dict[str, torch.Tensor] = {}
    for f in sorted(llama_dir.glob("*.safetensors")):
        state.update(load_file(f))
    n_layers = int(config["num_hidden_layers"])
    packed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".self_attn.k_proj." in key or ".self_attn.v_proj." in key or ".mlp.up_proj." in key:
            continue
        if ".self_attn.q_proj." in key:
            prefix = key.split(".self_attn.")[0]
            packed[f"{prefix}.self_attn.qkv_proj.weight"] = torch.cat(
                [value, state[f"{prefix}.self_attn.k_proj.weight"], state[f"{prefix}.self_attn.v_proj.weight"]]
            ).contiguous()
        elif ".mlp.gate_proj." in key:
            prefix = key.split(".mlp.")[0]
            packed[f"{prefix}.mlp.gate_up_proj.weight"] = torch.cat(
                [value, state[f"{prefix}.mlp.up_proj.weight"]]
            ).contiguous()
        else:
            packed[key] = value.contiguous()
    expected = {f"model.layers.{i}.self_attn.qkv_proj.weight" for i in range(n_layers)}
    if not expected <= packed.keys():
        raise ConversionError("repacking found no q/k/v projections for every layer")
    if config.get("tie_word_embeddings") and "lm_head.weight" in packed:
        del packed["lm_head.weight"]
    keep = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    )
    phi3 = {k: config[k] for k in keep if k in config}
    rope = config.get("rope_parameters") or {}
    phi3.update(
        architectures=["Phi3ForCausalLM"],
        model_type="phi3",
        hidden_act=config.get("hidden_act", "silu"),
        rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        original_max_position_embeddings=config["max_position_embeddings"],
        sliding_window=None,
        attention_dropout=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        dtype="float32",
        aipc_repacked_from="llama",
    )
    out.mkdir(parents=True, exist_ok=True)
    save_file(packed, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(phi3, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (llama_dir / name).is_file():
            shutil.copy2(llama_dir / name, out / name)
    return out
