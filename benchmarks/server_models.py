"""`aipc serve` with several models: switching between two loaded models, and the cold load of a model.

1. Switching (target: ratio >= 0.95, no reload): a server holding two models (the embedded smollm2:135m and
   a stored copy of it) answers requests alternating A, B, A, B...; a single-model server answers the same
   requests to A. Time to first token is taken by the client (streamed chat, a fresh prompt prefix per request
   so no prompt cache helps); ratio = single-model median TTFT / switching median TTFT. "No reload" is read
   from the server's own /metrics: each model loaded once.
2. Cold load with a warm compiled-model cache (target: under 2 s): in a fresh process, the time of each step
   of `aipc.load()` (import of the runtime, resolving the name, the GGUF -> IR cache check, opening the
   pipeline from CACHE_DIR, the tokenizer facts) and, in a running server, how long a request waits for a
   model to load (`load_duration` of Ollama's load-only request).

    python benchmarks/server_models.py --json benchmarks/results/server_models.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_throughput import PROMPT, Server

SECOND = "smollm2-bench-b"
COLD_LOAD = r"""
import json, sys, time
t0 = time.perf_counter()
import openvino_genai  # noqa: F401  (the runtime's import)
t1 = time.perf_counter()
from aipc.store.resolve import resolve_all
from aipc.backends import registry
from aipc.engine.config import LoadConfig
config = LoadConfig(device="cpu")
sources = resolve_all(None)
choice = next(iter(registry.candidates(sources, config)))
t2 = time.perf_counter()
from aipc.backends.openvino import ir_path
ir = ir_path(choice[2], choice[1])
t3 = time.perf_counter()
import openvino_genai as ov
from aipc.backends.openvino import pipeline_properties
pipe = ov.LLMPipeline(str(ir), "CPU", **pipeline_properties(config, choice[1]))
t4 = time.perf_counter()
del pipe
import aipc
t5 = time.perf_counter()
model = aipc.load(device="cpu")
t6 = time.perf_counter()
print(json.dumps({"import_runtime_s": t1 - t0, "resolve_and_choose_s": t2 - t1,
                  "gguf_ir_cache_check_s": t3 - t2, "open_pipeline_from_cache_s": t4 - t3,
                  "aipc_load_s": t6 - t5, "model_load_seconds": model.load_seconds, "total_process_s": t6 - t0}))
"""


def ensure_second_model() -> str:
    from aipc.server import library
    from aipc.store import store

    if not store.find(SECOND):
        library.copy("smollm2:135m", SECOND)
    return SECOND


def ttft_ms(client, url: str, model: str, max_tokens: int) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"[{uuid.uuid4().hex[:8]}] {PROMPT}"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    first = None
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if first is None and line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter()
    if first is None:
        raise RuntimeError("no token came")
    return (first - start) * 1000


def loads(client, url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(client.get(url + "/metrics").text):
        for s in family.samples:
            if s.name == "aipc_model_loads_total" and s.labels["outcome"] == "loaded":
                found[s.labels["model"]] = s.value
    return found


def switching(args: argparse.Namespace) -> dict:
    import httpx

    second = ensure_second_model()
    single = Server("--device", args.device)
    double = Server("--device", args.device, "--max-loaded", "2")
    rounds: dict[str, list[float]] = {"single": [], "switching": [], "switching_a": [], "switching_b": []}
    try:
        with httpx.Client(timeout=300) as client:
            for server, model in ((single, "smollm2:135m"), (double, "smollm2:135m"), (double, second)):
                for _ in range(args.warmup):
                    ttft_ms(client, server.url, model, 8)
            for i in range(args.rounds):
                order = ("single", "double") if i % 2 == 0 else ("double", "single")
                for which in order:
                    if which == "single":
                        for _ in range(2):
                            rounds["single"].append(ttft_ms(client, single.url, "smollm2:135m", args.max_tokens))
                    else:
                        a = ttft_ms(client, double.url, "smollm2:135m", args.max_tokens)
                        b = ttft_ms(client, double.url, second, args.max_tokens)
                        rounds["switching_a"].append(a)
                        rounds["switching_b"].append(b)
                        rounds["switching"] += [a, b]
            loaded = loads(client, double.url)
    finally:
        single.close()
        double.close()
    single_ms = statistics.median(rounds["single"])
    switching_ms = statistics.median(rounds["switching"])
    return {
        "servers": {"single": single.line, "two_models": double.line},
        "single_ttft_ms_median": round(single_ms, 1),
        "switching_ttft_ms_median": round(switching_ms, 1),
        "switching_a_ttft_ms_median": round(statistics.median(rounds["switching_a"]), 1),
        "switching_b_ttft_ms_median": round(statistics.median(rounds["switching_b"]), 1),
        "ratio_single_over_switching": round(single_ms / switching_ms, 3),
        "target": 0.95,
        "loads_per_model": loaded,
        "no_reload": all(v == 1 for v in loaded.values()) and len(loaded) == 2,
        "rounds_ms": {k: [round(v, 1) for v in vs] for k, vs in rounds.items()},
    }


def cold_load(args: argparse.Namespace) -> dict:
    import httpx

    runs = []
    for _ in range(args.cold_runs + 1):  # the first run warms the compiled-model cache
        out = subprocess.run([sys.executable, "-c", COLD_LOAD], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    warm = runs[1:]
    in_server = []
    second = ensure_second_model()
    server = Server("--device", args.device)
    try:
        with httpx.Client(timeout=300) as client:
            for _ in range(args.cold_runs + 1):
                r = client.post(server.url + "/api/generate", json={"model": second, "keep_alive": 0})
                r.raise_for_status()
                load = client.post(server.url + "/api/generate", json={"model": second}).json()
                in_server.append(load["load_duration"] / 1e9)
                client.post(server.url + "/api/generate", json={"model": second, "keep_alive": 0})
    finally:
        server.close()
    steps = {k: round(statistics.median(r[k] for r in warm), 3) for k in warm[0]}
    return {
        "process_cold_load_median_s": steps,
        "first_run_s": {k: round(v, 3) for k, v in runs[0].items()},
        "in_server_load_s": [round(s, 3) for s in in_server],
        "in_server_load_median_s": round(statistics.median(in_server[1:]), 3),
        "target_s": 2.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }
    print("switching between two loaded models…")
    results["switching"] = switching(args)
    s = results["switching"]
    print(
        f"  single {s['single_ttft_ms_median']} ms, switching {s['switching_ttft_ms_median']} ms TTFT: ratio "
        f"{s['ratio_single_over_switching']}; loads {s['loads_per_model']}"
    )
    print("cold load with a warm compiled-model cache…")
    results["cold_load"] = cold_load(args)
    c = results["cold_load"]
    print(
        f"  aipc.load {c['process_cold_load_median_s']['aipc_load_s']} s; in a server {c['in_server_load_median_s']} s"
    )
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text if not args.json else f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
