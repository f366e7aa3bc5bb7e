"""What checking drafted tokens costs on llama.cpp, per weight type: one forward pass over n tokens (the last
accepted token and n - 1 drafts, every position's logits kept, as speculation checks them) against a plain
one-token step, on the embedded model after a 97-token prompt.

Prompt lookup gains at most (tokens a step keeps) / (that step's cost in plain steps): where a check of n tokens
costs about n / 2 plain steps, even drafts that are always right cannot reach twice plain decoding's speed.
The types alternate within each round, so drift on a noisy machine hits them alike.

    python benchmarks/check_cost.py --json benchmarks/results/check_cost-zen5.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

PROMPT = "The old lighthouse stood on the edge of the cliff for more than a century. " * 6


def gguf_of(kind: str) -> str:
    """The embedded model's GGUF in weight type `kind`: its own file for q4_1, else a conversion (cached)."""
    if kind == "q4_1":
        from aipc.store import embedded

        return str(next(v.path for v in embedded.variants() if v.path.suffix == ".gguf"))
    from aipc.convert.api import convert

    return str(next(convert("smollm2:135m", "gguf", kind, name="smollm2-embedded").path.glob("*.gguf")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="q4_1,q4_0,q8_0,f16")
    ap.add_argument("--tokens", default="1,2,3,5,9,13,17,25,33", help="tokens per forward pass")
    ap.add_argument("--rounds", type=int, default=7, help="rounds; the first is a warm-up")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import llama_cpp

    from aipc.bench import machine

    kinds = args.types.split(",")
    sizes = [int(n) for n in args.tokens.split(",")]
    models = {}
    for kind in kinds:
        path = gguf_of(kind)
        models[kind] = llama_cpp.Llama(path, n_ctx=1024, n_threads=os.cpu_count(), verbose=False)
    seconds: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else reversed(kinds):
            llm = models[kind]
            ids = llm.tokenize(PROMPT.encode())
            llm.reset()
            llm.eval(ids)
            base = llm.n_tokens
            for n in sizes:
                llm._ctx.kv_cache_seq_rm(-1, base, -1)
                llm._batch.set_batch(batch=ids[:n], n_past=base, logits_all=True)
                started = time.perf_counter()
                llm._ctx.decode(llm._batch)
                if r:
                    seconds.setdefault((kind, n), []).append(time.perf_counter() - started)
        print(f"round {r} done", file=sys.stderr, flush=True)
    results = {}
    for kind in kinds:
        ms = {n: statistics.median(seconds[(kind, n)]) * 1000 for n in sizes}
        results[kind] = {
            "ms": {n: round(v, 2) for n, v in ms.items()},
            "ratio": {n: round(v / ms[1], 2) for n, v in ms.items()},
            # a check of n tokens whose drafts are all accepted keeps n tokens: the most lookup can gain
            "best_gain": {n: round(n / (v / ms[1]), 2) for n, v in ms.items()},
        }
    print("| weights | plain step ms | " + " | ".join(f"{n} tokens" for n in sizes[1:]) + " |")
    print("|---|---:|" + "---:|" * (len(sizes) - 1))
    for kind, res in results.items():
        cells = " | ".join(f"{res['ratio'][n]:.2f} ({res['best_gain'][n]:.2f}x)" for n in sizes[1:])
        print(f"| {kind} | {res['ms'][1]:.1f} | {cells} |")
    if args.json:
        report = {"machine": machine.describe(), "command": " ".join(["python", *sys.argv]), "results": results}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
