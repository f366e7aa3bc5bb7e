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
    """Dequantize `gguf` into a safetensors checkpoint folder at `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ConversionError(f"transformers could not read {gguf.name}: {exc}") from None
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _fix_bytelevel_decoder(out / "tokenizer.json")
    return out


def _fix_bytelevel_decoder(path: Path) -> None:
    """transformers writes a SentencePiece-style decoder chain for GGUF BPE tokenizers; byte-level BPE needs
    plain ByteLevel (OpenVINO's detokenizer conversion fails on the chain)."""
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    pre = json.dumps(data.get("pre_tokenizer") or {})
    if data.get("model", {}).get("type") == "BPE" and "ByteLevel" in pre:
        data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        path.write_text(json.dumps(data, ensure_ascii=False))


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
