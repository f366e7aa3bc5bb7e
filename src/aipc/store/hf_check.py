"""A Hugging Face checkpoint folder checked before any reader opens it: its config.json and the headers of its
safetensors files. A damaged or hostile folder is one line naming what is wrong, not a traceback from
transformers, safetensors or a converter (a list for a config, zero heads, a tensor said to be 25 GB in a
small file)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from aipc.errors import UsageError

# The dimensions every decoder aipc runs has, with bounds far above any real model's.
REQUIRED = {
    "hidden_size": 1 << 17,
    "num_hidden_layers": 1 << 11,
    "num_attention_heads": 1 << 11,
    "intermediate_size": 1 << 20,
    "vocab_size": 1 << 22,
}
OPTIONAL = {"num_key_value_heads": 1 << 11, "head_dim": 1 << 13, "max_position_embeddings": 1 << 24}
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
_ITEM_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def checked_config(folder: Path) -> dict[str, Any]:
    """`folder`'s config.json, refused in one line unless it is an object whose dimensions are sane."""
    path = folder / "config.json"

    def bad(what: str) -> UsageError:
        return UsageError(f"{path} is not a usable model config: {what}")

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, RecursionError) as exc:
        raise bad(f"it is not JSON ({str(exc)[:80]})") from None
    if not isinstance(config, dict):
        raise bad(f"it holds {type(config).__name__}, not an object")
    text = config.get("text_config")
    dims = text if isinstance(text, dict) else config  # a multimodal config keeps the decoder's apart
    for key, high in (REQUIRED | OPTIONAL).items():
        value = dims.get(key)
        if value is None and key in OPTIONAL:
            continue
        if value is None:
            raise bad(f"{key} is missing")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise bad(f"{key} is {value!r:.40}, not an integer from 1 to {high}")
    heads, kv_heads = dims["num_attention_heads"], dims.get("num_key_value_heads", dims["num_attention_heads"])
    if heads % kv_heads:
        raise bad(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    if "head_dim" not in dims and dims["hidden_size"] % heads:
        raise bad(f"hidden_size {dims['hidden_size']} is not a multiple of num_attention_heads {heads}")
    return config


def check_safetensors(path: Path) -> None:
    """Refuse in one line a safetensors file whose header does not describe the file: a header longer than the
    file, not JSON, an unknown dtype, or a tensor whose bytes fall outside the data or disagree with its shape."""

    def bad(what: str) -> UsageError:
        return UsageError(f"{path} is not a valid safetensors file: {what}")

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"it has {size} bytes, fewer than a header needs")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise bad(f"its header claims {n} bytes and the file has {size}")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError):
            raise bad("its header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not an object")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise bad(f"tensor {name!r:.60} is not described by an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _ITEM_BYTES:
            raise bad(f"tensor {name!r:.60} has dtype {dtype!r:.20}")
        if not (isinstance(shape, list) and all(_count(d) for d in shape)):
            raise bad(f"tensor {name!r:.60} has shape {shape!r:.40}")
        ok = isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) for o in offsets)
        if not ok or not 0 <= offsets[0] <= offsets[1] <= data:
            raise bad(f"tensor {name!r:.60} lies at {offsets!r:.40}, outside the file's {data} bytes of data")
        if math.prod(shape) * _ITEM_BYTES[dtype] != offsets[1] - offsets[0]:
            raise bad(f"tensor {name!r:.60} of shape {shape} and dtype {dtype} does not fill its {offsets} bytes")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def checked_folder(folder: Path) -> dict[str, Any]:
    """`checked_config`, and every safetensors file's header checked; the config."""
    config = checked_config(folder)
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors(path)
    return config
