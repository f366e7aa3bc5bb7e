"""Benchmark configurations side by side: one worker process per configuration, runs interleaved round-robin
(so drift on a noisy machine hits every configuration alike), warm-up runs discarded, medians reported."""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aipc.bench import machine


@dataclass(frozen=True)
class Config:
    """One thing to measure: a model reference (name, name@variant or path) on a backend and device."""

    model: str
    backend: str
    device: str = "cpu"
    label: str = ""
    load: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.label or f"{self.model} {self.backend}/{self.device}"


class Worker:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aipc.bench.measure"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            return {"error": "the worker exited"}
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, ValueError):
                self.ask(cmd="quit")
            self.proc.wait(30)


def run(
    configs: list[Config],
    prompt_lengths: list[int],
    gen_tokens: int = 64,
    repeats: int = 3,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every configuration at every prompt length; the result is JSON-ready."""
    say = progress or (lambda _msg: None)
    workers, results = [], []
    bandwidth = machine.memory_bandwidth_gbs()
    for config in configs:  # loaded one after another: two loads at once would skew both load times
        say(f"loading {config.name}")
        worker = Worker(config)
        loaded = worker.ask(
            cmd="load", model=config.model, backend=config.backend, device=config.device, load=config.load
        )
        if "error" in loaded:
            results.append({"config": config.name, "error": loaded["error"]})
            worker.close()
            continue
        workers.append((worker, loaded))
    try:
        total = len(prompt_lengths) * len(workers) * (warmup + repeats)
        done = 0
        for n in prompt_lengths:
            samples: dict[int, list[dict]] = {i: [] for i in range(len(workers))}
            failed: dict[int, str] = {}
            for r in range(warmup + repeats):
                order = list(range(len(workers)))
                order = order[r % len(order) :] + order[: r % len(order)] if order else order  # rotate
                for i in order:
                    if i in failed:
                        continue
                    done += 1
                    say(f"[{done}/{total}] {workers[i][0].config.name}, {n}-token prompt")
                    reply = workers[i][0].ask(cmd="run", prompt_tokens=n, gen_tokens=gen_tokens)
                    if "error" in reply:
                        failed[i] = reply["error"]
                    elif r >= warmup:
                        samples[i].append(reply)
            for i, (worker, loaded) in enumerate(workers):
                if i in failed:
                    results.append({"config": worker.config.name, "prompt_length": n, "error": failed[i]})
                    continue
                results.append(_summarize(worker.config, loaded, samples[i], n, bandwidth))
    finally:
        for worker, _ in workers:
            worker.close()
    return {
        "machine": {**machine.describe(), "memory_bandwidth_gbs": round(bandwidth, 2)},
        "gen_tokens": gen_tokens,
        "repeats": repeats,
        "warmup": warmup,
        "results": results,
    }


def _summarize(config: Config, loaded: dict, samples: list[dict], n: int, bandwidth: float) -> dict[str, Any]:
    nt = [s["next_token_ms"] for s in samples]
    weights = machine.weight_bytes(loaded["path"])
    bound_ms = weights / (bandwidth * 1e9) * 1000 if weights else None
    next_ms = statistics.median(nt)
    return {
        "config": config.name,
        "model": loaded.get("ref") or config.model,  # what ran: the variant the worker opened
        "backend": loaded["backend"],
        "device": loaded["device"],
        "path": loaded["path"],
        "prompt_length": n,
        "prompt_tokens": samples[0]["prompt_tokens"],
        "generated_tokens": samples[0]["generated_tokens"],
        "load_s": round(loaded["load_s"], 3),
        "ttft_ms": round(statistics.median(s["ttft_ms"] for s in samples), 2),
        "next_token_ms": round(next_ms, 3),
        "next_token_ms_stdev": round(statistics.stdev(nt), 3) if len(nt) > 1 else 0.0,
        "next_token_ms_min": round(min(nt), 3),
        "next_token_ms_max": round(max(nt), 3),
        "tokens_per_s": round(statistics.median(s["tokens_per_s"] for s in samples), 2),
        "speculate": config.load.get("speculate", "off"),
        "drafted": sum(s.get("drafted", 0) for s in samples),
        "accepted": sum(s.get("accepted", 0) for s in samples),
        "peak_rss_mb": round(max(s["peak_rss_mb"] for s in samples), 1),
        "model_bytes": weights,
        "roofline_next_token_ms": round(bound_ms, 3) if bound_ms else None,
        "roofline_fraction": round(bound_ms / next_ms, 3) if bound_ms and next_ms else None,
    }
