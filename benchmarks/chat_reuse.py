"""Second-turn time to first token with the first turn's KV cache reused, against a fresh prefill.

The first turn carries a long context; the second asks a short question about it. With reuse the backend
only prefills the new tokens (ONNX Runtime GenAI: rewind + append; llama.cpp: its prompt cache; OpenVINO on the
CPU/GPU: paged attention's prefix caching, which aipc turns on only when asked, `prefix_cache=True`, since it
is not exact there: benchmarks/determinism.py; OpenVINO on the NPU: NPUW's prefix caching over 256-token prefill
chunks, run here on the NPU pipeline's CPU emulation). Without, the cache is dropped (`Model.reset_cache`) and
the whole history is prefilled again. Alternated, medians.

    python benchmarks/chat_reuse.py --json benchmarks/results/chat_reuse.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

CONTEXT = "Here is the background for our conversation. " * 60 + "My name is Ada."


def turn2_ttft(model, reuse: bool) -> float:
    first = [{"role": "user", "content": CONTEXT}]
    reply = model.chat(first, temperature=0, max_tokens=16)
    history = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "What is my name?"}]
    if not reuse:
        model.reset_cache()
    *_, done = model.stream_chat(history, temperature=0, max_tokens=8)
    return done.timings.ttft_s * 1000, done.usage.prompt_tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import aipc
    from aipc.convert.api import convert

    os.environ.setdefault("AIPC_EMULATE_NPU", "1")  # the NPU pipeline, on the CPU where no NPU is present
    runs = {  # label: (model, backend, device, load options)
        "onnxruntime": (convert("smollm2:135m", "onnx", "int4", name="smollm2-embedded").ref, "onnxruntime", "cpu", {}),
        "llamacpp": (convert("smollm2:135m", "gguf", "f16", name="smollm2-embedded").ref, "llamacpp", "cpu", {}),
        "openvino": ("smollm2:135m", "openvino", "cpu", {"prefix_cache": True}),
        "openvino-npu": ("smollm2:135m", "openvino", "npu", {}),
    }
    results = {}
    for label, (ref, backend, device, options) in runs.items():
        with aipc.load(ref, backend=backend, device=device, **options) as model:
            turn2_ttft(model, True)  # warm-up
            with_reuse, without = [], []
            for _ in range(args.rounds):
                ms, n = turn2_ttft(model, True)
                with_reuse.append(ms)
                without.append(turn2_ttft(model, False)[0])
            results[label] = {
                "device": model.info.device,
                "history_tokens": n,
                "turn2_ttft_ms_with_reuse": round(statistics.median(with_reuse), 1),
                "turn2_ttft_ms_without_reuse": round(statistics.median(without), 1),
            }
            r = results[label]
            r["speedup"] = round(r["turn2_ttft_ms_without_reuse"] / r["turn2_ttft_ms_with_reuse"], 2)
            r["reuses_cache"] = r["speedup"] > 2
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
