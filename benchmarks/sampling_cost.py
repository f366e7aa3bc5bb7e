"""What min_p costs: decode speed of the embedded model sampling with and without it, on every backend.

OpenVINO GenAI and transformers apply min_p in their own samplers; llama.cpp samples in aipc's sampler (numpy
over one vocabulary row per token); ONNX Runtime GenAI has no min_p, so each step reads the logits, masks all
but the draw's candidates and sets them back, which also turns prompt-lookup speculation off for the request.
Each backend decodes a fixed 128 tokens (ignore_eos) at temperature 0.8, with min_p 0 and 0.05 alternated in
one process, and reports next-token latency (median over repeats) and the ratio.

    python benchmarks/sampling_cost.py --json benchmarks/results/sampling_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

PROMPT = "Write a short story about a lighthouse keeper."
TOKENS = 128


def measure(backend: str, spec: str, repeats: int) -> dict:
    import aipc

    opts = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "max_tokens": TOKENS, "ignore_eos": True}
    gaps: dict[float, list[float]] = {0.0: [], 0.05: []}
    with aipc.load(spec, backend=backend, device="cpu", speculate="off") as model:
        model.generate(PROMPT, max_tokens=8)  # warm-up
        for r in range(repeats):
            for min_p in (0.0, 0.05) if r % 2 == 0 else (0.05, 0.0):
                *_, done = model.stream(PROMPT, seed=r, min_p=min_p, **opts)
                assert done.usage.completion_tokens == TOKENS
                gaps[min_p].append(done.timings.next_token_s * 1000)
    plain, masked = statistics.median(gaps[0.0]), statistics.median(gaps[0.05])
    return {
        "backend": backend,
        "next_token_ms": {"min_p 0": round(plain, 2), "min_p 0.05": round(masked, 2)},
        "tokens_per_s_ratio": round(plain / masked, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--backends", default="openvino,llamacpp,onnxruntime,torch")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from stop_rate import sources

    specs = sources()
    rows = [measure(b, specs[b], args.repeats) for b in args.backends.split(",")]
    for row in rows:
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps({"prompt": PROMPT, "tokens": TOKENS, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
