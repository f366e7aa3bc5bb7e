"""The machine a benchmark ran on, and its memory read bandwidth (the roofline for decoding)."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

PACKAGES = ("aipc", "openvino", "openvino-genai", "onnxruntime-genai", "llama-cpp-python", "torch", "transformers")


def describe() -> dict:
    from aipc.cli.devices import cpu_description

    memory_gb = None
    try:
        with open("/proc/meminfo") as fh:
            memory_gb = round(int(fh.readline().split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu_description(),
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
    }


def memory_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Read bandwidth, best of `repeats` full passes over a buffer much larger than any cache (numpy sum)."""
    import numpy as np

    data = np.ones(megabytes * 1024 * 1024 // 8, dtype=np.float64)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best / 1e9


def weight_bytes(path: str) -> int:
    """Bytes of weights a decode step reads: the model files' sizes (tokenizers excluded)."""
    total = 0
    target = os.path.realpath(path)
    files = [target] if os.path.isfile(target) else [os.path.join(d, f) for d, _, fs in os.walk(target) for f in fs]
    for f in files:
        name = os.path.basename(f)
        if "tokenizer" in name:
            continue
        if name.endswith((".bin", ".gguf", ".onnx.data", ".onnx", ".safetensors")):
            total += os.path.getsize(f)
    return total
