"""Decode speed of the IR made from a GGUF file: OpenVINO's reader as it is against aipc's exact weights.

Four IRs of the same GGUF (default: the embedded Q4_1 SmolLM2), made in one run by the same converter:
`reader` (the reader's own IR, mended: what aipc made before exact weights), `reader-merged` (the same with
matmuls that share an input merged), `exact` (exact scales and zero points, matmuls as the reader made them) and
`exact-merged` (what aipc makes now). Each round decodes 128 tokens on every IR in turn, rotating which goes
first, through `openvino_genai.LLMPipeline` with aipc's properties. A new word starts every prompt so that no run
reuses another's prefix cache. Decode tokens/s: tokens after the first over the time from the first to the end.
Quality: each IR scored by `aipc eval` against llama.cpp on the same GGUF file (KL, top-1 agreement, perplexity).

    python benchmarks/gguf_exact.py --rounds 12 --json benchmarks/results/gguf_exact.json

Target (issue 11): exact-merged decodes at >= 0.95x the reader's tokens/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "reader": {"exact": False, "merge": False},
    "reader-merged": {"exact": False, "merge": True},
    "exact": {"exact": True, "merge": False},
    "exact-merged": {"exact": True, "merge": True},
}
WORDS = ("amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "kestrel")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, help="GGUF file (default: the embedded model's)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--kl-tokens", type=int, default=512, help="tokens scored for KL against llama.cpp (0: skip)")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()

    import openvino_genai as ov_genai

    from aipc.backends.base import DeviceInfo
    from aipc.backends.openvino import pipeline_properties
    from aipc.convert.gguf_openvino import _convert
    from aipc.engine.config import LoadConfig
    from aipc.store.resolve import resolve

    gguf = args.gguf or resolve(None).path
    props = pipeline_properties(LoadConfig(device="cpu"), DeviceInfo("cpu", "CPU", "CPU"))
    with tempfile.TemporaryDirectory(prefix="aipc-gguf-exact-") as tmp:
        pipes, seconds = {}, {}
        for name, options in VARIANTS.items():
            out = Path(tmp) / name
            out.mkdir()
            started = time.perf_counter()
            _convert(gguf, out, fold_weights=False, **options)
            seconds[name] = round(time.perf_counter() - started, 2)
            pipes[name] = ov_genai.LLMPipeline(str(out), "CPU", **props)
        runs = {name: [] for name in pipes}
        names = list(pipes)
        for i in range(args.warmup + args.rounds):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                tps = _decode(pipes[name], f"{WORDS[i % len(WORDS)]} {i}", args.max_tokens)
                if i >= args.warmup:
                    runs[name].append(tps)
        del pipes
        quality = {n: _quality(Path(tmp) / n, gguf, args.kl_tokens) for n in VARIANTS if args.kl_tokens}
    medians = {name: statistics.median(r) for name, r in runs.items()}
    base = medians["reader"]
    report = {
        "benchmark": "gguf_exact",
        "gguf": str(gguf),
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "properties": props,
        "conversion_seconds": seconds,
        "decode_tokens_per_s_median": {n: round(v, 2) for n, v in medians.items()},
        "ratio_to_reader": {n: round(v / base, 4) for n, v in medians.items()},
        "ratio_per_round_median": {
            n: round(statistics.median(a / b for a, b in zip(runs[n], runs["reader"], strict=True)), 4) for n in runs
        },
        "target_ratio": 0.95,
        "meets_target": medians["exact-merged"] / base >= 0.95,
        "kl_tokens": args.kl_tokens,
        "quality_vs_llamacpp": quality,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "processor": _cpu_model(),
            "openvino_genai": ov_genai.__version__,
        },
        "per_round": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


def _quality(ir: Path, gguf: Path, tokens: int) -> dict:
    """KL(llama.cpp || this IR), top-1 agreement and both perplexities on the shipped text."""
    from aipc.eval.runner import evaluate

    result = evaluate(
        str(ir), reference=str(gguf), backend="openvino", reference_backend="llamacpp", device="cpu", max_tokens=tokens
    )
    return {
        "kl_mean": round(result.kl_mean, 5),
        "agreement": round(result.agreement, 4),
        "perplexity": round(result.model.perplexity, 3),
        "reference_perplexity": round(result.reference.perplexity, 3),
    }


def _decode(pipe, word: str, max_tokens: int) -> float:
    """Decode tokens/s of one greedy generation of `max_tokens` tokens (end of sequence ignored)."""
    config = pipe.get_generation_config()
    config.max_new_tokens = max_tokens
    config.ignore_eos = True
    config.do_sample = False
    config.apply_chat_template = False
    first: list[float] = []

    def on_text(_text: str) -> bool:
        if not first:
            first.append(time.perf_counter())
        return False

    prompt = f"<|im_start|>user\n{word}: write a long story about a lighthouse keeper.<|im_end|>\n"
    prompt += "<|im_start|>assistant\n"
    result = pipe.generate([prompt], config, on_text)
    end = time.perf_counter()
    n = result.perf_metrics.get_num_generated_tokens()
    return (n - 1) / (end - first[0])


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
