"""How many tokens an opened model holds (prompt + answer) when the user does not say.

The default is the model's trained context, capped so that its KV cache fits in the memory that is free: a
128k-token Phi-3 would otherwise ask llama.cpp or ONNX Runtime for tens of GB of KV cache up front. The KV
bytes per token come from the model's own dimensions (layers x KV heads x head size x 2 for keys and values x
bytes per element), read from the GGUF header, `config.json` or `genai_config.json`. When the cap applies, one
line on stderr says so and how to ask for more (`--context-length`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("aipc")

# Used when a model's files do not state its trained context.
FALLBACK_CONTEXT = 4096
# A capped context is never made smaller than this (or the trained context, if smaller).
MIN_CONTEXT = 2048
# Of the memory free at load time, the share the KV cache may take: the weights, the runtime's compute buffers
# and the rest of the system need the remainder.
KV_SHARE = 0.5
# Bytes per cached element by KV-cache type. q8 is llama.cpp's q8_0 (34 bytes per 32 values) or OpenVINO's u8
# (one byte, plus a scale and zero point per group).
ELEMENT_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8": 34 / 32}
SYSROOT_ENV = "AIPC_SYSROOT"  # the doctor's fixture root; /proc/meminfo is read under it


@dataclass(frozen=True)
class KVShape:
    """The dimensions that size a KV cache."""

    layers: int
    kv_heads: int
    head_dim: int

    def bytes_per_token(self, kv_type: str) -> int:
        return int(self.layers * self.kv_heads * self.head_dim * 2 * ELEMENT_BYTES[kv_type])


@dataclass(frozen=True)
class ModelDims:
    """What the model's files say about its context: the trained length and the KV shape (each may be None)."""

    trained: int | None
    kv: KVShape | None


def dims_from_gguf(meta: dict[str, Any]) -> ModelDims:
    arch = meta.get("general.architecture")

    def get(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        return int(value) if isinstance(value, int) and value > 0 else None

    layers, heads = get("block_count"), get("attention.head_count")
    kv_heads = get("attention.head_count_kv") or heads
    head_dim = get("attention.key_length") or (
        get("embedding_length") // heads if heads and get("embedding_length") else None
    )
    kv = KVShape(layers, kv_heads, head_dim) if layers and kv_heads and head_dim else None
    return ModelDims(get("context_length"), kv)


def dims_from_config(config: dict[str, Any]) -> ModelDims:
    """From a Hugging Face config.json (also in optimum's OpenVINO IR folders)."""
    config = config.get("text_config", config) if isinstance(config.get("text_config"), dict) else config

    def get(key: str) -> int | None:
        value = config.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    layers, heads, hidden = get("num_hidden_layers"), get("num_attention_heads"), get("hidden_size")
    kv_heads = get("num_key_value_heads") or heads
    head_dim = get("head_dim") or (hidden // heads if hidden and heads else None)
    kv = KVShape(layers, kv_heads, head_dim) if layers and kv_heads and head_dim else None
    return ModelDims(get("max_position_embeddings"), kv)


def dims_from_genai(genai: dict[str, Any]) -> ModelDims:
    """From ONNX Runtime GenAI's genai_config.json."""
    model = genai.get("model") if isinstance(genai.get("model"), dict) else {}
    decoder = model.get("decoder") if isinstance(model.get("decoder"), dict) else {}

    def get(d: dict, key: str) -> int | None:
        value = d.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    layers, heads = get(decoder, "num_hidden_layers"), get(decoder, "num_attention_heads")
    kv_heads = get(decoder, "num_key_value_heads") or heads
    head_dim = get(decoder, "head_size") or (
        get(decoder, "hidden_size") // heads if heads and get(decoder, "hidden_size") else None
    )
    kv = KVShape(layers, kv_heads, head_dim) if layers and kv_heads and head_dim else None
    return ModelDims(get(model, "context_length"), kv)


def dims_of_folder(folder: Path) -> ModelDims:
    """A model folder's dims: genai_config.json, else config.json; nothing readable gives ModelDims(None, None)."""
    for name, reader in (("genai_config.json", dims_from_genai), ("config.json", dims_from_config)):
        try:
            data = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return reader(data)
    return ModelDims(None, None)


def free_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (under AIPC_SYSROOT when set), or None where there is none."""
    return _meminfo("MemAvailable")


def total_memory_bytes() -> int | None:
    """MemTotal from /proc/meminfo (under AIPC_SYSROOT when set), or None where there is none."""
    return _meminfo("MemTotal")


def _meminfo(field: str) -> int | None:
    root = Path(os.environ.get(SYSROOT_ENV) or "/")
    try:
        text = (root / "proc" / "meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            try:
                return int(parts[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


def choose(
    asked: int | None,
    dims: ModelDims,
    kv_type: str,
    *,
    name: str = "the model",
    reserve_bytes: int = 0,
    free_bytes: int | None = None,
    total_bytes: int | None = None,
) -> int:
    """The context to open with: `asked` when given; else the trained context (or FALLBACK_CONTEXT), capped so
    its KV cache (at `kv_type`) takes at most KV_SHARE of the free memory left after `reserve_bytes` (weights
    not loaded yet). A cap is said in one line; `asked` is checked by `check_asked`."""
    if asked is not None:
        check_asked(asked, dims, kv_type, name=name, total_bytes=total_bytes)
        return asked
    trained = dims.trained or FALLBACK_CONTEXT
    if dims.kv is None:
        return trained
    free = free_memory_bytes() if free_bytes is None else free_bytes
    if free is None:
        return trained
    per_token = dims.kv.bytes_per_token(kv_type)
    budget = max(0, int((free - reserve_bytes) * KV_SHARE))
    fits = budget // per_token // 1024 * 1024
    if fits >= trained:
        return trained
    context = max(fits, min(trained, MIN_CONTEXT))
    log.warning(
        "context capped to %d tokens: %s's trained %d would need %.1f GiB of %s KV cache, and %.1f GiB of memory "
        "is free (--context-length N asks for more)",
        context,
        name,
        trained,
        trained * per_token / 2**30,
        kv_type,
        free / 2**30,
    )
    return context


def check_asked(
    asked: int, dims: ModelDims, kv_type: str, *, name: str = "the model", total_bytes: int | None = None
) -> None:
    """An asked context is honoured (as llama.cpp and Ollama honour n_ctx / num_ctx), with one line when it is
    past the trained context, and refused when its KV cache could never fit in this machine's memory (a
    mistyped 20-digit length once made llama.cpp take all of it)."""
    from aipc.errors import InvalidConfigError

    total = total_memory_bytes() if total_bytes is None else total_bytes
    need = asked * dims.kv.bytes_per_token(kv_type) if dims.kv is not None else 0
    if total is not None and need > total:
        raise InvalidConfigError(
            f"context length {asked} needs {need / 2**30:.1f} GiB of {kv_type} KV cache for {name}, more than this "
            f"machine's {total / 2**30:.1f} GiB of memory: ask for fewer tokens"
        )
    if dims.trained is not None and asked > dims.trained:
        log.warning(
            "context length %d is over %s's trained context of %d tokens: positions past it were never trained, "
            "and answers that reach them may be poor",
            asked,
            name,
            dims.trained,
        )
