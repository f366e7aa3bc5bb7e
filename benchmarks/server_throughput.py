"""`aipc serve` throughput: aggregate tokens/s with 1, 2, 4, 8 concurrent streaming clients, and one client's
streaming over HTTP against `Model.stream` in-process.

Each server is a real `python -m aipc serve` subprocess on a free loopback port; clients are asyncio + httpx in
this process, reading the SSE stream as any client would.

1. Overhead (target >= 0.95): a `--parallel 1` server (the same LLMPipeline as in-process) and
   `Model.stream` in this process, alternating rounds. Decode tokens/s is measured the same way for both, on
   the receiving side: tokens after the first, over the time from the first text to the last event.
2. Aggregate: a `--parallel N` server (continuous batching) and N clients at once, each asking for
   `--max-tokens` tokens; aggregate tokens/s = all completion tokens / wall time of the round.
   `--compare-queue` also runs a `--parallel 1` server (requests queue) for contrast.
3. Two models (`--two-models`, or `--only-two-models`): one server holding the embedded model and a stored copy
   of it, N clients on one model, then N split between both (each model has its own `--parallel` slots).

    python benchmarks/server_throughput.py --json benchmarks/results/server_throughput.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


class Server:
    """`python -m aipc serve` on a free port, until closed."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aipc", "serve", "--port", "0", "--max-queue", "64", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("aipc: serving "):
            self.close()
            raise SystemExit(f"the server did not start: {line!r}")
        self.line = line.strip()
        self.url = line.split(" at ", 1)[1].split("/ ", 1)[0]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def stream_once(client, url: str, max_tokens: int, model: str | None = None) -> dict:
    """One streamed chat completion; times taken where the client receives the events."""
    body = {
        **({"model": model} if model else {}),
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif event["choices"] and event["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                last = time.perf_counter()
    return _timing(start, first, last, tokens)


def _timing(start: float, first: float | None, last: float | None, tokens: int) -> dict:
    decode = (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else 0.0
    return {"tokens": tokens, "ttft_ms": ((first or start) - start) * 1000, "decode_tokens_per_s": decode}


def in_process_once(model, max_tokens: int) -> dict:
    from aipc.engine.events import Done, TextDelta

    start = time.perf_counter()
    first = last = None
    tokens = 0
    for event in model.stream(PROMPT, max_tokens=max_tokens, temperature=0):
        if isinstance(event, TextDelta) and event.text:
            first = first or time.perf_counter()
            last = time.perf_counter()
        elif isinstance(event, Done):
            tokens = event.usage.completion_tokens
    return _timing(start, first, last, tokens)


async def overhead(args: argparse.Namespace) -> dict:
    import httpx

    import aipc

    server = Server("--parallel", "1", "--device", args.device)
    model = aipc.load(device=args.device)
    http, local = [], []
    try:
        async with httpx.AsyncClient(timeout=120) as client:
            for i in range(args.warmup + args.rounds):
                # Back to back, in alternating order: a pair sees the same machine load (the machine is shared).
                pair = {}
                for which in ("http", "local") if i % 2 == 0 else ("local", "http"):
                    if which == "http":
                        pair[which] = await stream_once(client, server.url, args.max_tokens)
                    else:
                        pair[which] = in_process_once(model, args.max_tokens)
                if i >= args.warmup:
                    http.append(pair["http"])
                    local.append(pair["local"])
    finally:
        model.close()
        server.close()
    http_rate = statistics.median(r["decode_tokens_per_s"] for r in http)
    local_rate = statistics.median(r["decode_tokens_per_s"] for r in local)
    pair_ratios = [h["decode_tokens_per_s"] / lo["decode_tokens_per_s"] for h, lo in zip(http, local, strict=True)]
    return {
        "server": server.line,
        "http_decode_tokens_per_s_median": round(http_rate, 1),
        "in_process_decode_tokens_per_s_median": round(local_rate, 1),
        "http_ttft_ms_median": round(statistics.median(r["ttft_ms"] for r in http), 1),
        "in_process_ttft_ms_median": round(statistics.median(r["ttft_ms"] for r in local), 1),
        "ratio_http_over_in_process": round(http_rate / local_rate, 3),
        "ratio_median_of_pairs": round(statistics.median(pair_ratios), 3),
        "target": 0.95,
        "rounds": {"http": http, "in_process": local},
    }


async def aggregate(args: argparse.Namespace, parallel: int) -> dict:
    import httpx

    server = Server("--parallel", str(parallel), "--device", args.device)
    levels = {}
    try:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            await stream_once(client, server.url, 16)  # warm-up
            for n in args.clients:
                rounds = []
                for _ in range(args.rounds_aggregate):
                    start = time.perf_counter()
                    results = await asyncio.gather(
                        *(stream_once(client, server.url, args.max_tokens) for _ in range(n))
                    )
                    wall = time.perf_counter() - start
                    tokens = sum(r["tokens"] for r in results)
                    rounds.append({"tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 1)})
                levels[str(n)] = {
                    "aggregate_tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in rounds),
                    "rounds": rounds,
                }
                print(f"  parallel {parallel}, {n} clients: {levels[str(n)]['aggregate_tokens_per_s_median']} tokens/s")
    finally:
        server.close()
    return {"server": server.line, "clients": levels}


async def two_models(args: argparse.Namespace) -> dict:
    """N clients on one model, then the same N split between two models loaded in the same server (each model
    with its own --parallel slots): aggregate tokens/s of both."""
    import httpx

    from aipc.server import library
    from aipc.store import store

    second = "smollm2-bench-b"
    if not store.find(second):
        library.copy("smollm2:135m", second)
    server = Server("--parallel", str(args.parallel), "--device", args.device, "--max-loaded", "2")
    levels = {}
    try:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            for model in ("smollm2:135m", second):  # warm-up, and the second model's load
                await stream_once(client, server.url, 16, model)
            for n in args.clients:
                if n < 2:
                    continue
                result = {}
                for label, models in (
                    ("one_model", ["smollm2:135m"] * n),
                    ("two_models", ["smollm2:135m", second] * (n // 2)),
                ):
                    rounds = []
                    for _ in range(args.rounds_aggregate):
                        start = time.perf_counter()
                        runs = await asyncio.gather(
                            *(stream_once(client, server.url, args.max_tokens, m) for m in models)
                        )
                        wall = time.perf_counter() - start
                        tokens = sum(r["tokens"] for r in runs)
                        rounds.append(
                            {"tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 1)}
                        )
                    result[label] = {
                        "aggregate_tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in rounds),
                        "rounds": rounds,
                    }
                levels[str(n)] = result
                print(
                    f"  {n} clients: one model {result['one_model']['aggregate_tokens_per_s_median']} tokens/s, "
                    f"two models {result['two_models']['aggregate_tokens_per_s_median']} tokens/s"
                )
    finally:
        server.close()
    return {"server": server.line, "second_model": second, "clients": levels}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=16, help="overhead rounds (each: one HTTP, one in-process)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds-aggregate", type=int, default=3, help="rounds per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    ap.add_argument("--parallel", type=int, default=8, help="the batching server's --parallel (default 8)")
    ap.add_argument("--compare-queue", action="store_true", help="also measure a --parallel 1 server")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--two-models", action="store_true", help="also serve two models at once (N clients split)")
    ap.add_argument("--only-two-models", action="store_true", help="measure only the two-model case")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()

    results: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }
    if args.two_models or args.only_two_models:
        print(f"two models at once: --parallel {args.parallel} each…")
        results["two_models"] = asyncio.run(two_models(args))
    if args.only_two_models:
        return _write(results, args)
    if not args.skip_overhead:
        print("overhead: HTTP streaming vs in-process Model.stream…")
        results["overhead"] = asyncio.run(overhead(args))
        o = results["overhead"]
        print(
            f"  HTTP {o['http_decode_tokens_per_s_median']} tokens/s, in-process "
            f"{o['in_process_decode_tokens_per_s_median']} tokens/s: ratio {o['ratio_http_over_in_process']} "
            f"(median of paired rounds {o['ratio_median_of_pairs']})"
        )
    print(f"aggregate: --parallel {args.parallel}…")
    results["aggregate"] = {f"parallel_{args.parallel}": asyncio.run(aggregate(args, args.parallel))}
    if args.compare_queue:
        print("aggregate: --parallel 1 (queued)…")
        results["aggregate"]["parallel_1"] = asyncio.run(aggregate(args, 1))
    return _write(results, args)


def _write(results: dict, args: argparse.Namespace) -> int:
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text if not args.json else f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
