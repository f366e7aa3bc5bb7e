"""Decode tokens/s with a JSON Schema constraint against unconstrained decoding, side by side per backend.

The same model (the embedded SmolLM2-135M), prompt and sampling settings run constrained and unconstrained in
alternation on each backend that can constrain (OpenVINO GenAI: XGrammar; llama.cpp: GBNF; ONNX Runtime GenAI:
llguidance); decode tokens/s comes from each run's `Done` event (next-token rate after the first token), and
the medians are compared. The schema leaves a long string open, so a constrained answer runs for many tokens.

    python benchmarks/constrained.py --json benchmarks/results/constrained.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["city", "history", "art", "food"]}},
        "story": {"type": "string"},
    },
    "required": ["title", "tags", "story"],
    "additionalProperties": False,
}
PROMPT = "Write a long story about a walk through Paris, as JSON with a title, tags and the story."


def decode_rate(model, constrained: bool, seed: int, tokens: int) -> tuple[float, int]:
    options = {"json_schema": SCHEMA} if constrained else {"ignore_eos": True}
    *_, done = model.stream(PROMPT, temperature=0.7, seed=seed, max_tokens=tokens, **options)
    return done.timings.tokens_per_s, done.usage.completion_tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import aipc
    from aipc.convert.api import convert

    runs = {  # label: (model, backend)
        "openvino": ("smollm2:135m", "openvino"),
        "llamacpp": ("smollm2:135m", "llamacpp"),
        "onnxruntime": (convert("smollm2:135m", "onnx", "fp32", name="smollm2-embedded").ref, "onnxruntime"),
    }
    results = {}
    for label, (ref, backend) in runs.items():
        with aipc.load(ref, backend=backend, device="cpu") as model:
            decode_rate(model, True, 0, 16)  # warm-ups: compile, first grammar
            decode_rate(model, False, 0, 16)
            free, bound, lengths = [], [], []
            for seed in range(args.rounds):
                rate, _ = decode_rate(model, False, seed, args.tokens)
                free.append(rate)
                rate, n = decode_rate(model, True, seed, args.tokens)
                bound.append(rate)
                lengths.append(n)
            unconstrained, constrained = statistics.median(free), statistics.median(bound)
            results[label] = {
                "device": model.info.device,
                "model": model.info.ref or model.info.name,
                "unconstrained_tokens_per_s": round(unconstrained, 1),
                "constrained_tokens_per_s": round(constrained, 1),
                "cost_percent": round(100 * (1 - constrained / unconstrained), 1),
                "constrained_tokens_median": statistics.median(lengths),
            }
            print(label, results[label], flush=True)
    out = {"benchmark": "constrained", "tokens": args.tokens, "rounds": args.rounds, "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
