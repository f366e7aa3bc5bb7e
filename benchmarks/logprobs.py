"""What `top_logprobs: 5` costs: tokens/s with and without log-probs, side by side per backend, in one run.

Each backend generates the same greedy, fixed-length answer (ignore_eos) with and without `logprobs=5`, the two
modes interleaved round by round so that machine noise falls on both. Two rates are reported per mode:
`decode_tps` (the runtime's own, from the `Done` event: generated tokens after the first over the time between
them) and `end_to_end_tps` (generated tokens over the wall time of the whole request, as a client sees it, which
includes what log-probs add after the runtime returns: on OpenVINO and PyTorch, the teacher-forced scoring pass).

    python benchmarks/logprobs.py --json benchmarks/results/logprobs.json

Target (issue 14): log-probs cost at most 10% of tokens/s on each backend.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

PROMPT = "Write a short story about a robot who learns to paint, in simple words."


def spec_of(backend: str, onnx: str | None, torch: str | None) -> str | None:
    return {"llamacpp": "smollm2:135m", "openvino": "smollm2:135m", "onnxruntime": onnx, "torch": torch}[backend]


def run_once(model, ids: list[int], tokens: int, logprobs: int | None) -> dict:
    from aipc.engine.events import Done

    options = {"temperature": 0, "max_tokens": tokens, "ignore_eos": True}
    if logprobs is not None:
        options["logprobs"] = logprobs
    start = time.perf_counter()
    done = None
    for event in model.stream(ids, raw=True, **options):
        if isinstance(event, Done):
            done = event
    wall = time.perf_counter() - start
    n = done.usage.completion_tokens
    return {"decode_tps": done.timings.tokens_per_s, "end_to_end_tps": n / wall, "tokens": n}


def measure(backend: str, spec: str, tokens: int, rounds: int) -> dict:
    import aipc

    with aipc.load(spec, backend=backend, device="cpu") as model:
        ids = model.tokenize(PROMPT)
        for mode in (None, 5):  # warm-ups, dropped (the first log-probs request opens the scorer)
            run_once(model, ids, 8, mode)
        runs = {"plain": [], "top_logprobs_5": []}
        for _ in range(rounds):
            runs["plain"].append(run_once(model, ids, tokens, None))
            runs["top_logprobs_5"].append(run_once(model, ids, tokens, 5))
        info = model.info
    out = {"backend": backend, "model": info.ref or info.name, "prompt_tokens": len(ids), "gen_tokens": tokens}
    for mode, items in runs.items():
        out[mode] = {key: statistics.median(r[key] for r in items) for key in ("decode_tps", "end_to_end_tps")}
    for key in ("decode_tps", "end_to_end_tps"):
        out[f"{key}_ratio"] = out["top_logprobs_5"][key] / out["plain"][key]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="llamacpp,openvino,onnxruntime,torch")
    ap.add_argument("--onnx", help="an ONNX Runtime GenAI model (name or path) for the onnxruntime row")
    ap.add_argument("--torch", help="a checkpoint folder for the PyTorch row")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows, skipped = [], []
    for backend in args.backends.split(","):
        spec = spec_of(backend, args.onnx, args.torch)
        if spec is None:
            skipped.append(f"{backend}: no model given (--{'onnx' if backend == 'onnxruntime' else backend})")
            continue
        rows.append(measure(backend, spec, args.gen_tokens, args.rounds))
        r = rows[-1]
        print(
            f"{backend:12} plain {r['plain']['decode_tps']:7.1f} tok/s  top_logprobs=5 "
            f"{r['top_logprobs_5']['decode_tps']:7.1f} tok/s (x{r['decode_tps_ratio']:.3f}); end to end "
            f"{r['plain']['end_to_end_tps']:7.1f} vs {r['top_logprobs_5']['end_to_end_tps']:7.1f} "
            f"(x{r['end_to_end_tps_ratio']:.3f})",
            flush=True,
        )
    for line in skipped:
        print("skipped", line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
