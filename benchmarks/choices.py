"""n choices of one prompt: sampled in one generation (`Model.stream_choices`, OpenVINO's num_return_sequences)
against n generations one after another (what `--parallel 1` does with a seed), alternated in one process.

Each run samples n answers of exactly `--max-tokens` tokens (ignore_eos, so both sides decode the same number of
tokens) to the same chat prompt; the order of the two ways turns every round. Reported per n: the median seconds
for all n answers each way, and their ratio (sequential / together: how many times faster one generation is).

    python benchmarks/choices.py --json benchmarks/results/choices.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

PROMPT = [{"role": "user", "content": "Write a short poem about the sea."}]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--n", default="2,4")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import aipc
    from aipc.bench.machine import describe

    model = aipc.load(args.model, backend="openvino", device="cpu", speculate="off")
    ids = model.encode(PROMPT)
    options = {"temperature": 0.8, "max_tokens": args.max_tokens, "ignore_eos": True}

    def together(n: int, seed: int) -> float:
        started = time.perf_counter()
        events = model.stream_choices(ids, n, seed=seed, **options)
        if events is None:
            raise SystemExit(f"{model.where} cannot sample {n} choices in one generation")
        done = [e for _, e in events if type(e).__name__ == "Done"]
        assert len(done) == n and all(d.usage.completion_tokens == args.max_tokens for d in done)
        return time.perf_counter() - started

    def one_by_one(n: int, seed: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            *_, done = model.stream(ids, raw=True, seed=seed + i, **options)
            assert done.usage.completion_tokens == args.max_tokens
        return time.perf_counter() - started

    together(2, 0)  # warm-up: first inference of both shapes
    one_by_one(1, 0)
    rows = []
    for n in (int(v) for v in args.n.split(",")):
        times: dict[str, list[float]] = {"together": [], "one_by_one": []}
        for r in range(args.repeats):
            order = (("together", together), ("one_by_one", one_by_one))
            for name, run in order if r % 2 == 0 else reversed(order):
                times[name].append(run(n, 100 + r))
        a, b = statistics.median(times["together"]), statistics.median(times["one_by_one"])
        rows.append(
            {
                "n": n,
                "tokens_each": args.max_tokens,
                "together_s": round(a, 3),
                "one_by_one_s": round(b, 3),
                "speedup": round(b / a, 2),
                "runs": {k: [round(t, 3) for t in v] for k, v in times.items()},
            }
        )
        print(f"n={n}: together {a:.2f} s, one by one {b:.2f} s, {b / a:.2f}x", file=sys.stderr)
    result = {"machine": describe(), "model": args.model, "where": model.where, "command": " ".join(sys.argv)}
    result["results"] = rows
    model.close()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
