"""Peak memory by context length: the real-scale synthetic Phi-3-mini on each CPU backend, and where it goes.

Each configuration runs in its own process: load with `context_length` (and `kv_cache`), prefill a 512-token
prompt, generate 32 tokens, and report the peak resident set (VmHWM) against the weights file. The KV cache's
share is computed from the model's dimensions (`aipc.engine.context`); llama.cpp's own log gives its buffer
sizes (model, repacked model, KV, compute). The models come from

    aipc convert synthetic:phi3-mini --to gguf --precision q4_0
    aipc convert synthetic:phi3-mini --to onnx --precision int4

and the runs take minutes and several GB each, one at a time:

    python benchmarks/memory.py --json benchmarks/results/memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MODEL = "synthetic-phi3-mini"
CONFIGS = [  # (backend, variant, context, kv_cache); the ONNX build allows 4096 at most (its genai_config)
    ("llamacpp", "gguf-q4_0", 4096, None),
    ("llamacpp", "gguf-q4_0", 32768, None),
    ("openvino", "gguf-q4_0", 4096, None),
    ("openvino", "gguf-q4_0", 32768, None),
    ("onnxruntime", "onnx-int4", 4096, None),
]

WORKER = r"""
import json, os, re, sys, time
backend, ref, context, kv = sys.argv[1], sys.argv[2], int(sys.argv[3]), (sys.argv[4] if sys.argv[4] != "-" else None)
logs = []
if backend == "llamacpp":
    import ctypes, llama_cpp
    @llama_cpp.llama_log_callback
    def _log(level, text, user_data):
        logs.append(text.decode("utf-8", "replace"))
    llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
import aipc
before = status("VmRSS")
t = time.perf_counter()
model = aipc.load(ref, backend=backend, device="cpu", context_length=context, kv_cache=kv)
load_s = time.perf_counter() - t
after_load = status("VmRSS")
prompt = [(i * 7919) % 30000 + 100 for i in range(512)]
*_, done = model.stream(prompt, raw=True, temperature=0, max_tokens=32, ignore_eos=True)
buffers = {}
for line in logs:
    m = re.search(r"(\S+) (model|KV|compute|output|RS) buffer size\s*=\s*([\d.]+) MiB", line)
    if m:
        key = f"{m.group(1)} {m.group(2)}"
        buffers[key] = buffers.get(key, 0) + float(m.group(3))
print(json.dumps({
    "rss_before_load": before, "rss_after_load": after_load, "peak_rss": status("VmHWM"),
    "load_s": round(load_s, 1), "completion_tokens": done.usage.completion_tokens,
    "context": model.info.context_length, "llamacpp_buffers_mib": buffers,
}))
"""


def kv_bytes(spec: str, backend: str, context: int, kv: str | None) -> int:
    """The KV cache at `context` tokens, from the model's dimensions, in the type the runtime keeps."""
    from aipc.engine import context as ctx
    from aipc.store.gguf_header import read_metadata
    from aipc.store.resolve import resolve_all

    source = resolve_all(spec)[0]
    if source.format == "gguf":
        dims = ctx.dims_from_gguf(read_metadata(source.path))
    else:
        dims = ctx.dims_of_folder(source.path)
    default = {"llamacpp": "q8", "openvino": "q8", "onnxruntime": "f32"}[backend]  # each runtime's default here
    return dims.kv.bytes_per_token(kv or default) * context


def weights_bytes(spec: str) -> int:
    from aipc.store.resolve import resolve_all

    path = resolve_all(spec)[0].path
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files if f.suffix in (".gguf", ".onnx", ".data", ".bin") or "onnx" in f.name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated backends")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    for backend, variant, context, kv in CONFIGS:
        if args.only and backend not in args.only.split(","):
            continue
        spec = f"{MODEL}@{variant}"
        label = f"{backend} {variant} ctx={context} kv={kv or 'default'}"
        run = subprocess.run(
            [sys.executable, "-c", WORKER, backend, spec, str(context), kv or "-"],
            capture_output=True,
            text=True,
            env=os.environ,
        )
        lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
        if run.returncode != 0 or not lines:
            print(label, "failed:", run.stderr.strip().splitlines()[-1:], flush=True)
            results[label] = {"error": (run.stderr.strip().splitlines() or ["?"])[-1]}
            continue
        row = json.loads(lines[-1])
        weights = weights_bytes(spec)
        row |= {
            "backend": backend,
            "variant": variant,
            "kv_cache": kv or "default",
            "weights_bytes": weights,
            "kv_bytes_computed": kv_bytes(spec, backend, context, kv),
            "peak_over_weights": round(row["peak_rss"] / weights, 2),
        }
        results[label] = row
        print(
            label, json.dumps({k: row[k] for k in ("peak_rss", "peak_over_weights", "kv_bytes_computed")}), flush=True
        )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
