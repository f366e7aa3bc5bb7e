"""One measurement, read from the event stream every backend produces: no per-backend timing code.

A worker process (`python -m aipc.bench.measure`) holds one opened model and answers JSON-line commands, so
the runner can interleave configurations while each keeps its own memory (peak RSS is per configuration).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

from aipc.engine.events import Done

FILLER = (
    "The history of computing is a story of machines that got smaller, faster and closer to the people who use "
    "them. Early computers filled rooms; today a laptop holds a processor for graphics and one for neural "
    "networks beside its CPU. Small language models run on all three. "
)


def prompt_of(model, n_tokens: int) -> tuple[str, int]:
    """Raw text of about `n_tokens` tokens for `model` (its own tokenizer counts)."""
    text = FILLER
    while len(model.tokenize(text)) < n_tokens:
        text += FILLER
    words = text.split(" ")
    lo, hi = 1, len(words)
    while lo < hi:  # the fewest words that reach n_tokens
        mid = (lo + hi) // 2
        if len(model.tokenize(" ".join(words[:mid]))) >= n_tokens:
            hi = mid
        else:
            lo = mid + 1
    prompt = " ".join(words[:lo])
    return prompt, len(model.tokenize(prompt))


def measure(model, prompt: str, gen_tokens: int) -> dict[str, Any]:
    """Time to first token, mean next-token latency and decode tokens/s of one fixed-length generation."""
    *_, done = model.stream(prompt, raw=True, max_tokens=gen_tokens, temperature=0, ignore_eos=True)
    assert isinstance(done, Done)
    return {
        "prompt_tokens": done.usage.prompt_tokens,
        "generated_tokens": done.usage.completion_tokens,
        "ttft_ms": done.timings.ttft_s * 1000,
        "next_token_ms": done.timings.next_token_s * 1000,
        "tokens_per_s": done.timings.tokens_per_s,
        "drafted": done.drafted,
        "accepted": done.accepted,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory. /proc's VmHWM starts afresh at exec; getrusage's maxrss would
    include the parent's peak from before the fork."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def serve() -> None:
    """The worker loop: {"cmd": "load" | "prompt" | "run" | "quit", ...} in, one JSON object out per line."""
    import os

    # Replies own the real stdout; anything a runtime prints there goes to stderr instead.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import aipc

    model = None
    prompts: dict[int, str] = {}
    runs = 0
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "load":
                started = time.perf_counter()
                # Speculation is off unless a configuration asks for it: comparisons of runtimes and precisions
                # measure their plain decoding.
                load = {"speculate": "off", **cmd.get("load", {})}
                model = aipc.load(cmd["model"], backend=cmd["backend"], device=cmd["device"], **load)
                reply = {
                    "load_s": time.perf_counter() - started,
                    "backend": model.info.backend,
                    "device": model.info.device,
                    "path": model.info.path,
                    "ref": model.info.ref or model.info.name,  # the variant that was opened: what is measured
                }
            elif cmd["cmd"] == "run":
                n = int(cmd["prompt_tokens"])
                runs += 1
                # A new first word each run: runtimes that keep the KV cache of a shared prompt prefix
                # (llama.cpp, OpenVINO) would otherwise skip the prefill and report a warm TTFT.
                head = f"Run {runs}:"
                body_tokens = max(1, n - len(model.tokenize(head)))
                if body_tokens not in prompts:
                    prompts[body_tokens], _ = prompt_of(model, body_tokens)
                reply = measure(model, f"{head} {prompts[body_tokens]}", int(cmd["gen_tokens"]))
            elif cmd["cmd"] == "quit":
                break
            else:
                reply = {"error": f"unknown command {cmd['cmd']!r}"}
        except Exception as exc:  # reported to the runner, which records the configuration as failed
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        reply["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(reply), file=replies, flush=True)
    if model is not None:
        model.close()


if __name__ == "__main__":
    serve()
