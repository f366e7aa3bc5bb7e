"""aipc's streaming overhead over the raw OpenVINO GenAI pipeline, on the same IR and properties.

Both run in this process on the embedded model: `aipc.Model.stream` (template, thread + queue bridge, events)
and a bare `openvino_genai.LLMPipeline.generate` with a minimal streamer callback. Rounds alternate which goes
first, so drift on a noisy machine hits both alike. Decode tokens/s is computed the same way for both: tokens
after the first, divided by the time from the first streamed text to the end of generation.

    python benchmarks/openvino_overhead.py --rounds 12 --json benchmarks/results/openvino_overhead.json

Target (issue 2): aipc's median decode tokens/s >= 0.97 x the raw pipeline's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model (default: the embedded smollm2:135m)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()

    import openvino_genai as ov_genai

    import aipc
    from aipc.backends import registry
    from aipc.backends.openvino import pipeline_properties
    from aipc.engine.config import LoadConfig
    from aipc.engine.events import Done

    model = aipc.load(args.model, backend="openvino", device=args.device)
    device = next(d for d in registry.get("openvino").devices() if model.info.device.startswith(d.name))
    props = pipeline_properties(LoadConfig(device=args.device), device, Path(model.info.path))
    raw = ov_genai.LLMPipeline(model.info.path, device.runtime_name, **props)
    prompt_text = model.format([{"role": "user", "content": PROMPT}])
    inputs = raw.get_tokenizer().encode(prompt_text, add_special_tokens=False)
    raw_cfg = raw.get_generation_config()
    raw_cfg.max_new_tokens = args.max_tokens
    raw_cfg.apply_chat_template = False
    raw_cfg.do_sample = False

    def run_raw() -> dict:
        first = []

        def on_text(_text: str) -> bool:
            if not first:
                first.append(time.perf_counter())
            return False

        start = time.perf_counter()
        result = raw.generate(inputs, raw_cfg, on_text)
        end = time.perf_counter()
        n = len(result.tokens[0])
        pm = result.perf_metrics
        return {
            "tokens": n,
            "ttft_ms": (first[0] - start) * 1000,
            "decode_tokens_per_s": (n - 1) / (end - first[0]),
            "runtime_reported_tokens_per_s": pm.get_throughput().mean,
        }

    def run_aipc() -> dict:
        *_, done = model.stream(PROMPT, max_tokens=args.max_tokens, temperature=0)  # Done is always last
        assert isinstance(done, Done)
        return {
            "tokens": done.usage.completion_tokens,
            "ttft_ms": done.timings.ttft_s * 1000,
            "decode_tokens_per_s": done.timings.tokens_per_s,
        }

    for _ in range(args.warmup):
        run_raw()
        run_aipc()
    rounds = []
    for i in range(args.rounds):
        order = (("raw", run_raw), ("aipc", run_aipc)) if i % 2 == 0 else (("aipc", run_aipc), ("raw", run_raw))
        rounds.append({name: fn() for name, fn in order})

    def med(name: str, key: str) -> float:
        return statistics.median(r[name][key] for r in rounds)

    raw_tps, aipc_tps = med("raw", "decode_tokens_per_s"), med("aipc", "decode_tokens_per_s")
    per_round = [r["aipc"]["decode_tokens_per_s"] / r["raw"]["decode_tokens_per_s"] for r in rounds]
    report = {
        "benchmark": "openvino_overhead",
        "model": model.info.name,
        "ir": model.info.path,
        "device": model.info.device,
        "properties": props,
        "prompt_tokens": len(model.tokenize(prompt_text)),
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "raw_decode_tokens_per_s_median": round(raw_tps, 2),
        "aipc_decode_tokens_per_s_median": round(aipc_tps, 2),
        "ratio_of_medians": round(aipc_tps / raw_tps, 4),
        "ratio_per_round_median": round(statistics.median(per_round), 4),
        "raw_ttft_ms_median": round(med("raw", "ttft_ms"), 2),
        "aipc_ttft_ms_median": round(med("aipc", "ttft_ms"), 2),
        "target_ratio": 0.97,
        "meets_target": aipc_tps / raw_tps >= 0.97,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "processor": _cpu_model(),
            "cpus": os.cpu_count(),
            "openvino_genai": ov_genai.__version__,
        },
        "per_round": rounds,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    model.close()
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
