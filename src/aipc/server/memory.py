"""Memory as the model pool sees it: this process's RSS, what is free, what a model will take, and handing
freed memory back to the system after an unload.

A model's size is estimated before it loads from its files (the weights) and its KV budget (layers x KV heads
x head size x context, at 16 bits); once loaded, the pool records what the process's RSS really grew by.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

# Kept free for everything that is not a model (the runtime, requests, the system) when --max-memory is not given.
MARGIN_MIN_BYTES = 1 << 30
MARGIN_FRACTION = 0.10
# Runtimes hold more than the weights (compiled kernels, buffers): this much more, before the KV cache.
_RUNTIME_OVERHEAD = 1.25
_WEIGHT_SUFFIXES = (".gguf", ".bin", ".onnx", ".data", ".safetensors")


def rss_bytes() -> int:
    """This process's resident set size (0 where /proc is missing and psutil is not installed)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        return 0


def _meminfo() -> dict[str, int]:
    found = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                found[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return found


def available_bytes() -> int | None:
    """Memory the system can give without swapping (MemAvailable), or psutil's view, or None."""
    info = _meminfo()
    if "MemAvailable" in info:
        return info["MemAvailable"]
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:
        return None


def default_budget() -> int | None:
    """What models may take when --max-memory is not given: what is free now, less a margin (the larger of
    1 GiB and 10% of it). None when the system does not say (then only --max-loaded limits the pool)."""
    free = available_bytes()
    if free is None:
        return None
    return max(free - max(MARGIN_MIN_BYTES, int(free * MARGIN_FRACTION)), 0)


def estimate_bytes(source: Any, context_length: int | None = None) -> int:
    """Memory a model from `source` (a `ModelSource`) will take once loaded: weights plus the KV cache for
    `context_length` tokens (or the model's own), from its GGUF header or config.json."""
    path = Path(source.path)
    weights = _weights_bytes(path)
    shape = _shape(path, source.format)
    kv = 0
    if shape is not None:
        layers, kv_heads, head_dim, trained = shape
        tokens = min(x for x in (context_length, trained) if x) if (context_length or trained) else 0
        kv = 2 * layers * kv_heads * head_dim * tokens * 2
    return int(weights * _RUNTIME_OVERHEAD) + kv


def _weights_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def _shape(path: Path, fmt: str) -> tuple[int, int, int, int] | None:
    """(layers, KV heads, head size, trained context) from the model's own description, when it has one."""
    try:
        if fmt == "gguf" and path.is_file():
            from aipc.store.gguf_header import read_metadata

            meta = read_metadata(path)
            arch = meta.get("general.architecture", "")
            heads = int(meta.get(f"{arch}.attention.head_count", 0))
            kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
            width = int(meta.get(f"{arch}.embedding_length", 0))
            return (
                int(meta.get(f"{arch}.block_count", 0)),
                kv_heads,
                width // heads if heads else 0,
                int(meta.get(f"{arch}.context_length", 0)),
            )
        config = json.loads((path / "config.json").read_text())
        heads = int(config.get("num_attention_heads", 0))
        return (
            int(config.get("num_hidden_layers", 0)),
            int(config.get("num_key_value_heads") or heads),
            int(config.get("head_dim") or (config.get("hidden_size", 0) // heads if heads else 0)),
            int(config.get("max_position_embeddings", 0)),
        )
    except (OSError, ValueError, TypeError, ZeroDivisionError, AttributeError):
        return None


def give_back() -> None:
    """Free what an unloaded model left: collect cycles (the runtime's objects), then ask glibc's allocator
    to return its freed arenas to the system, which it otherwise keeps for the process's next allocations."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
