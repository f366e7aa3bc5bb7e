"""OpenVINO's mid-answer switch: `auto` against `auto` planned per request alone, and plain decoding.

OpenVINO GenAI fixes a generation's draft width, so `auto` plans each request from earlier answers of its kind
and, mid-answer, moves it to the other pipeline when the answer's own tokens say that repays the move's prefill
(aipc.backends.openvino_speculate). This measures what the move is worth where the plan is wrong: a session of
long prompts whose answers copy (a paragraph) and whose answers do not (a new story after a pasted text), in an
order that makes each kind follow the other. Three worker processes hold the embedded model on OpenVINO:
`off`, `auto`, and `auto` with the move disabled (`Speculator.MAX_SWITCHES = 0`, an ablation only this benchmark
makes). Every round sends the session to the three in turn, the order rotating. Per request: wall seconds from
the request to the last token (what a user waits, prefill included); medians over the rounds after a warm-up
round, and ratios to plain decoding.

    python benchmarks/speculate_switch.py --rounds 4 --json benchmarks/results/speculate_switch.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from speculate import PARAGRAPH, TASKS, Worker

SESSION = [
    ("copy", TASKS["copy"][1]),
    ("new story", f"{PARAGRAPH}\n\nNow forget that text and write a new story about a robot who learns to paint."),
    ("new story", f"{PARAGRAPH}\n\nNow forget that text and write a new poem about a cat who learns to fly."),
    ("copy", TASKS["copy"][1].replace("Repeat", "Copy")),
]
SETTINGS = ("off", "auto", "auto-no-switch")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="measured rounds (>= 1) after one warm-up round")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from aipc.bench import machine

    base = {"model": "smollm2:135m", "backend": "openvino", "device": "cpu"}
    workers = {
        "off": Worker({**base, "speculate": "off"}),
        "auto": Worker({**base, "speculate": "auto"}),
        "auto-no-switch": Worker({**base, "speculate": "auto", "no_switch": True}),
    }
    runs: dict[tuple[int, str], list[dict]] = {}
    try:
        for r in range(1 + args.rounds):
            order = SETTINGS[r % 3 :] + SETTINGS[: r % 3]
            for setting in order:
                for i, (task, prompt) in enumerate(SESSION):
                    print(f"round {r}, {setting}, request {i}", file=sys.stderr, flush=True)
                    reply = workers[setting].ask({"run": task, "prompt": prompt, "max_tokens": args.max_tokens})
                    if "error" in reply:
                        raise RuntimeError(f"{setting}, request {i}: {reply['error']}")
                    if r:
                        runs.setdefault((i, setting), []).append(reply)
    finally:
        for w in workers.values():
            w.close()
    rows = []
    for i, (task, _) in enumerate(SESSION):
        row = {"request": i, "task": task}
        for setting in SETTINGS:
            got = runs[(i, setting)]
            row[setting] = {
                "seconds": round(statistics.median(g["seconds"] for g in got), 3),
                "tokens": round(statistics.median(g["tokens"] for g in got)),
                "drafted": sum(g["drafted"] for g in got),
                "accepted": sum(g["accepted"] for g in got),
            }
        for setting in SETTINGS[1:]:
            row[f"{setting} vs off"] = round(row["off"]["seconds"] / row[setting]["seconds"], 3)
        rows.append(row)
    total = {s: round(sum(row[s]["seconds"] for row in rows), 3) for s in SETTINGS}
    lines = [
        "| request | task | off s | auto s | auto without the move s | auto speedup | without the move |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['request']} | {row['task']} | {row['off']['seconds']:.2f} | {row['auto']['seconds']:.2f} | "
            f"{row['auto-no-switch']['seconds']:.2f} | **{row['auto vs off']:.2f}x** | "
            f"{row['auto-no-switch vs off']:.2f}x |"
        )
    lines.append(
        f"| all | session | {total['off']:.2f} | {total['auto']:.2f} | {total['auto-no-switch']:.2f} | "
        f"**{total['off'] / total['auto']:.2f}x** | {total['off'] / total['auto-no-switch']:.2f}x |"
    )
    print("\n".join(lines))
    if args.json:
        report = {
            "machine": machine.describe(),
            "command": " ".join(["python", *sys.argv]),
            "rounds": args.rounds,
            "max_tokens": args.max_tokens,
            "requests": rows,
            "session_seconds": total,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
