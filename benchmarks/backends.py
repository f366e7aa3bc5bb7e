"""Every backend at int4 and at its 16/32-bit format, on the embedded model in the Phi-3 layout, and how close
`--backend auto` comes to the fastest.

Prepares (once, cached in the store) the embedded SmolLM2 repacked into Phi3ForCausalLM and converted to
openvino int4/fp16, onnx int4/fp32 and gguf q4_0/f16; adds the PyTorch reference on the checkpoint itself;
measures them interleaved with `aipc.bench.runner` (time to first token, next-token latency, tokens/s, peak
RSS); and reports which configuration auto picks, before (static order) and after (measured) the record.

    python benchmarks/backends.py --json benchmarks/results/backends.json

Target (issue 4): auto's choice within 5% of the fastest configuration's tokens/s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "smollm2-phi3"
VARIANTS = [
    ("openvino", "int4"),
    ("openvino", "fp16"),
    ("onnx", "int4"),
    ("onnx", "fp32"),
    ("gguf", "q4_0"),
    ("gguf", "f16"),
]
BACKEND_OF = {"openvino": "openvino", "onnx": "onnxruntime", "gguf": "llamacpp"}


def prepare(workdir: Path) -> Path:
    from aipc.convert.api import convert
    from aipc.convert.from_gguf import gguf_to_hf, repack_as_phi3
    from aipc.store.resolve import resolve

    llama, phi3 = workdir / "smollm2-llama", workdir / "smollm2-phi3"
    if not (phi3 / "model.safetensors").is_file():
        if not (llama / "model.safetensors").is_file():
            gguf_to_hf(resolve(None).path, llama)
        repack_as_phi3(llama, phi3)
    for to, precision in VARIANTS:
        convert(str(phi3), to, precision, name=NAME)
    return phi3


def auto_choice() -> dict:
    import aipc

    with aipc.load(NAME, device="cpu") as model:
        return {"backend": model.info.backend, "path": model.info.path}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-lengths", default="32,256")
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path, help="the seed's chart: next-token latency by input length")
    args = ap.parse_args()

    from aipc.bench import record, report, runner
    from aipc.bench.runner import Config
    from aipc.store import paths

    phi3 = prepare(paths.home() / "bench-fixtures")
    configs = [Config(f"{NAME}@{to}-{p}", BACKEND_OF[to], "cpu", f"{BACKEND_OF[to]} {p}") for to, p in VARIANTS]
    configs.append(Config(str(phi3), "torch", "cpu", "torch fp32"))
    static = auto_choice()  # before any record: int4 first, OpenVINO first
    result = runner.run(
        configs,
        [int(n) for n in args.prompt_lengths.split(",")],
        gen_tokens=args.gen_tokens,
        repeats=args.repeats,
        progress=lambda m: print(m, file=sys.stderr),
    )
    print(report.table(result))
    if args.plot:
        report.plot(result, args.plot, "Next-token latency, SmolLM2-135M in the Phi-3 layout, 2-core CPU")
    speeds: dict[str, list[float]] = {}
    paths_of: dict[str, str] = {}
    for r in result["results"]:
        if "error" not in r:
            speeds.setdefault(r["config"], []).append(r["tokens_per_s"])
            paths_of[r["config"]] = r["path"]
    mean = {k: sum(v) / len(v) for k, v in speeds.items()}
    fastest = max(mean, key=mean.get)
    record.remember_fastest(result)
    measured = auto_choice()

    def speed_of(choice: dict) -> tuple[str, float]:
        name = next(k for k, p in paths_of.items() if p == choice["path"])
        return name, mean[name]

    static_name, static_speed = speed_of(static)
    auto_name, auto_speed = speed_of(measured)
    summary = {
        "fastest": {"config": fastest, "tokens_per_s": round(mean[fastest], 2)},
        "auto_without_measurements": {
            "config": static_name,
            "tokens_per_s": round(static_speed, 2),
            "ratio_to_fastest": round(static_speed / mean[fastest], 4),
        },
        "auto_with_measurements": {
            "config": auto_name,
            "tokens_per_s": round(auto_speed, 2),
            "ratio_to_fastest": round(auto_speed / mean[fastest], 4),
        },
        "target_ratio": 0.95,
        "meets_target": auto_speed / mean[fastest] >= 0.95,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result, "auto": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
