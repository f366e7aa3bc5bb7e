"""Quality of every backend and precision against the fp32 reference: perplexity, KL(reference || model) and
top-1 agreement on the shipped text, for the embedded model in the Phi-3 layout.

Prepares (once, cached in the store) the embedded SmolLM2 repacked into Phi3ForCausalLM and converted to
openvino int4/fp16, onnx int4/fp32 and gguf q4_0/f16 (as benchmarks/backends.py does), then runs `aipc eval`'s
`evaluate` on each, against the repacked checkpoint run by PyTorch in fp32. The embedded Q4_1 GGUF itself, on
llama.cpp and on OpenVINO, is added against the same reference (it is what that checkpoint was dequantized from).

    AIPC_HOME=/tmp/aipc-eval python benchmarks/eval_table.py --json benchmarks/results/eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from backends import BACKEND_OF, NAME, VARIANTS, prepare


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=2000)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from aipc.bench.machine import describe
    from aipc.eval.runner import evaluate
    from aipc.store import paths

    phi3 = prepare(paths.home() / "bench-fixtures")
    runs = [(f"{NAME}@{to}-{p}", BACKEND_OF[to], f"{BACKEND_OF[to]} {p}", "auto") for to, p in VARIANTS]
    runs += [("smollm2:135m", b, f"{b} q4_1 (embedded GGUF)", str(phi3)) for b in ("llamacpp", "openvino")]
    rows = []
    reference = None
    for spec, backend, label, ref in runs:
        print(f"evaluating {label}", file=sys.stderr)
        started = time.perf_counter()
        result = evaluate(
            spec, reference=ref, backend=backend, device="cpu", max_tokens=args.max_tokens, window=args.window
        )
        reference = result.reference
        rows.append({"config": label, **result.as_dict(), "wall_s": round(time.perf_counter() - started, 1)})
    table = [
        "| backend / precision | perplexity | KL(ref‖model) mean | KL max | top-1 agreement |",
        "|---|---:|---:|---:|---:|",
        f"| torch fp32 (reference) | {reference.perplexity:.2f} | 0 | 0 | 100% |",
    ]
    for r in rows:
        table.append(
            f"| {r['config']} | {r['model']['perplexity']:.2f} | {_nats(r['kl_mean'])} | {_nats(r['kl_max'])} "
            f"| {100 * r['agreement']:.1f}% |"
        )
    print("\n".join(table))
    print(f"\n{rows[0]['tokens_scored']} tokens of {Path(rows[0]['text']).name}, {rows[0]['window']}-token windows")
    if args.json:
        out = {"machine": describe(), "max_tokens": args.max_tokens, "window": args.window, "results": rows}
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _nats(x: float) -> str:
    return f"{x:.4f}" if x >= 1e-3 else f"{x:.1e}"


if __name__ == "__main__":
    raise SystemExit(main())
