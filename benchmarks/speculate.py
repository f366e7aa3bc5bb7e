"""Speculative decoding: plain decoding (`speculate=off`) against `auto`, per backend, alternated in one run.

One worker process per backend holds the model opened twice, plain and `auto`; runs alternate between the two
(the order rotating every round) so drift on a noisy machine hits both alike. Tasks are chat prompts, greedy:

- copy-heavy: copy a paragraph; rewrite it in another tense; answer with quotes from a pasted text;
- open-ended: a story; a list of ideas.

Per task and configuration: decode tokens/s (first to last token), time to first token, drafted and accepted
tokens, and how many answers are token-for-token those of plain decoding (speculation checks drafts in
batches, which round differently at reduced precision, like any change of batch shape). The first run of each
task is a warm-up, reported apart: `auto` has measured nothing yet then and plans from its prior.

    python benchmarks/speculate.py --json benchmarks/results/speculate.json
    python benchmarks/speculate.py --model synthetic-phi3-mini --backends llamacpp,openvino,onnxruntime \\
        --tasks copy,story --repeats 2 --max-tokens 32 --json benchmarks/results/speculate-phi3-mini.json

Targets (issue 15): copy-heavy decode tokens/s >= 2.0x plain; open-ended >= 0.97x; Phi-3-mini's random
weights (nothing is accepted) near 1.0x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PARAGRAPH = (
    "The old lighthouse stood on the edge of the cliff for more than a century. Sailors trusted its light on "
    "stormy nights, and children from the village climbed its spiral stairs every summer. When the keeper "
    "retired, the town decided to repair the lamp, paint the walls white again, and open a small museum about "
    "the ships that had passed the rocks below. Volunteers collected old maps, ropes and photographs, and the "
    "first visitors arrived in the spring."
)
REPORT = (
    "Minutes of the garden club, March meeting. The treasurer said that the club has 412 dollars in its account "
    "after buying new tools. Maria proposed that the club plant tomatoes, beans and sunflowers along the south "
    "fence. Tom said the water tank leaks and must be fixed before May. The group agreed to meet every second "
    "Saturday at nine in the morning. The next meeting will choose a date for the plant sale."
)
TASKS = {
    "copy": ("copy-heavy", f"Repeat this paragraph exactly, word for word:\n\n{PARAGRAPH}"),
    "tense": ("copy-heavy", f"Rewrite this paragraph in the present tense, changing nothing else:\n\n{PARAGRAPH}"),
    "quotes": (
        "copy-heavy",
        f"{REPORT}\n\nQuoting the minutes word for word, what did the treasurer say, what did Maria propose, "
        "and what did Tom say?",
    ),
    "story": ("open-ended", "Write a story about a robot who learns to paint."),
    "ideas": ("open-ended", "Give me a list of ten ideas for a rainy weekend with children."),
}
# What each backend runs by default for the embedded model, and the variant made for it.
EMBEDDED = {
    "openvino": ("smollm2:135m", None),
    "llamacpp": ("smollm2:135m", None),
    "onnxruntime": ("smollm2-embedded@onnx-int4", ("onnx", "int4")),
}


def worker() -> None:
    """A worker process: {"load": ..., "as": name} then {"run": task, "on": name} (or {"run": name, "prompt":
    text}) lines in, one JSON reply per line out. It may hold several models ("as"/"on" name them; one model
    needs no name)."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import aipc

    models: dict[str, object] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if "load" in cmd:
                load = dict(cmd["load"])
                # speculate_switch.py's ablation: no mid-answer move on OpenVINO (class-wide: a worker of its own)
                if load.pop("no_switch", False):
                    from aipc.backends.openvino_speculate import Speculator

                    Speculator.MAX_SWITCHES = 0
                started = time.perf_counter()
                model = models[cmd.get("as", "")] = aipc.load(**load)
                reply = {"load_s": time.perf_counter() - started, "path": model.info.path}
            elif "run" in cmd:
                model = models[cmd.get("on", "")]
                prompt = cmd.get("prompt") or TASKS[cmd["run"]][1]
                started = time.perf_counter()
                *_, done = model.stream(prompt, temperature=0, max_tokens=cmd["max_tokens"])
                reply = {
                    "seconds": time.perf_counter() - started,
                    "ttft_ms": done.timings.ttft_s * 1000,
                    "tokens_per_s": done.timings.tokens_per_s,
                    "tokens": done.usage.completion_tokens,
                    "prompt_tokens": done.usage.prompt_tokens,
                    "drafted": done.drafted,
                    "accepted": done.accepted,
                    "ids": list(done.token_ids),
                }
            else:
                break
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), file=replies, flush=True)


class Worker:
    """A worker process; given `load`, holding that one model (else `load` them, named)."""

    def __init__(self, load: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.loaded = self.ask({"load": load}) if load is not None else {}

    def load(self, name: str, load: dict) -> dict:
        return self.ask({"load": load, "as": name})

    def ask(self, cmd: dict) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        return json.loads(line) if line else {"error": "the worker exited"}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(60)


def measure(
    backend: str, model: str, tasks: list[str], repeats: int, max_tokens: int, say, sampling: dict | None = None
) -> dict:
    """off and auto on one backend, alternated in one worker process (separate processes ran 5-12% apart on
    identical plain decoding here); per task: medians, acceptance and agreement. `sampling` overrides the
    model's own defaults (the runs are greedy either way: temperature 0)."""
    w = Worker()
    loaded = {}
    for setting in ("off", "auto"):  # loaded one after the other
        say(f"{backend}: loading {model} speculate={setting}")
        load = {"model": model, "backend": backend, "device": "cpu", "speculate": setting, "sampling": sampling}
        loaded[setting] = w.load(setting, load)
        if "error" in loaded[setting]:
            w.close()
            return {"backend": backend, "model": model, "error": loaded[setting]["error"]}
    runs: dict[tuple[str, str], list[dict]] = {}
    try:
        for r in range(1 + repeats):
            for task in tasks:
                order = ["off", "auto"] if (r + tasks.index(task)) % 2 == 0 else ["auto", "off"]
                for setting in order:
                    say(f"{backend}: round {r}, {task}, speculate={setting}")
                    reply = w.ask({"run": task, "on": setting, "max_tokens": max_tokens})
                    if "error" in reply:
                        raise RuntimeError(f"{backend} {task} {setting}: {reply['error']}")
                    runs.setdefault((task, setting), []).append(reply)
    finally:
        w.close()
    out = {"backend": backend, "model": model, "path": loaded["off"]["path"], "tasks": {}}
    for task in tasks:
        plain, auto = runs[(task, "off")], runs[(task, "auto")]
        out["tasks"][task] = {
            "kind": TASKS[task][0],
            "plain": _summary(plain[1:]),
            "auto": _summary(auto[1:]),
            "speedup": round(_median(auto[1:], "tokens_per_s") / _median(plain[1:], "tokens_per_s"), 3),
            "ttft_ratio": round(_median(auto[1:], "ttft_ms") / _median(plain[1:], "ttft_ms"), 3),
            "first_run": {
                "speedup": round(auto[0]["tokens_per_s"] / plain[0]["tokens_per_s"], 3),
                "drafted": auto[0]["drafted"],
                "accepted": auto[0]["accepted"],
            },
            "same_tokens_as_plain": f"{sum(a['ids'] == p['ids'] for a, p in zip(auto, plain, strict=True))}"
            f"/{len(auto)}",
        }
    return out


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _summary(runs: list[dict]) -> dict:
    drafted = sum(r["drafted"] for r in runs)
    accepted = sum(r["accepted"] for r in runs)
    return {
        "tokens_per_s": round(_median(runs, "tokens_per_s"), 2),
        "ttft_ms": round(_median(runs, "ttft_ms"), 2),
        "tokens": round(_median(runs, "tokens")),
        "prompt_tokens": runs[0]["prompt_tokens"],
        "drafted": drafted,
        "accepted": accepted,
        "acceptance": round(accepted / drafted, 3) if drafted else None,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| backend | task | kind | plain tok/s | auto tok/s | speedup | plain TTFT ms | auto TTFT ms | "
        "accepted/drafted | same tokens | first run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        if "error" in res:
            lines.append(f"| {res['backend']} | failed: {res['error'][:80]} |")
            continue
        for task, t in res["tasks"].items():
            a, p = t["auto"], t["plain"]
            rate = f"{a['accepted']}/{a['drafted']} ({a['acceptance']:.0%})" if a["drafted"] else "0/0"
            lines.append(
                f"| {res['backend']} | {task} | {t['kind']} | {p['tokens_per_s']:.1f} | {a['tokens_per_s']:.1f} | "
                f"**{t['speedup']:.2f}x** | {p['ttft_ms']:.0f} | {a['ttft_ms']:.0f} | {rate} | "
                f"{t['same_tokens_as_plain']} | {t['first_run']['speedup']:.2f}x |"
            )
    return "\n".join(lines)


def main() -> int:
    if "--worker" in sys.argv:
        worker()
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="openvino,llamacpp,onnxruntime")
    ap.add_argument("--model", help="one model for every backend (default: the embedded model's variants)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--repeats", type=int, default=4, help="measured rounds after one warm-up round")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument(
        "--repeat-penalty",
        type=float,
        help="the repetition penalty for every run (default: the model's own, 1.1 for the embedded model)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sampling = {"repetition_penalty": args.repeat_penalty} if args.repeat_penalty is not None else None
    tasks = [t for t in args.tasks.split(",") if t]

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from aipc.bench import machine

    results = []
    for backend in args.backends.split(","):
        model, variant = (args.model, None) if args.model else EMBEDDED[backend]
        if variant:
            from aipc.convert.api import convert

            convert("smollm2:135m", *variant, name="smollm2-embedded")
        results.append(measure(backend, model, tasks, args.repeats, args.max_tokens, say, sampling))
    report = {
        "machine": machine.describe(),
        "command": " ".join(["python", *sys.argv]),
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "repeat_penalty": args.repeat_penalty if sampling else "the model's own",
        "results": results,
    }
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
