"""The same request, the same answer: greedy and seeded requests with a cold and a warm KV cache, and what it costs.

For each backend, every prompt is answered with a cold cache (`Model.reset_cache` first), then again after all
the others (a warm cache holding other prompts with the same system prompt), then once more (the whole prompt
cached); a chat's second turn is answered with its first turn cached and again cold. Greedy (temperature 0)
and seeded sampling (seed 7) must give the same token ids every time. Speed: the second turn's time to first
token with and without the first turn's cache, the cold time to first token of a long prompt, and decode time
per token. Run it on this checkout and on an older one (PYTHONPATH) to compare before and after:

    python benchmarks/determinism.py --label after --json benchmarks/results/determinism.json
    PYTHONPATH=/old/src python benchmarks/determinism.py --label before --json benchmarks/results/determinism.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

SHORT = [
    "Write a short poem about the sea.",
    "What is 17 + 25?",
    "Translate 'Good morning, how are you?' into French.",
    "List three fruits that are red.",
    "What does the word 'ephemeral' mean?",
    "Explain in two sentences why the sky is blue.",
]
GREEDY = {"temperature": 0, "repetition_penalty": 1.1, "max_tokens": 48}
SPEED = {"temperature": 0, "repetition_penalty": 1.1}
SEEDED = {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "seed": 7, "repetition_penalty": 1.1, "max_tokens": 48}


def conversations(n_long: int) -> list[list[dict]]:
    """Short one-question chats and long ones (a few hundred tokens of history, as in a real chat)."""
    chats = [[{"role": "user", "content": p}] for p in SHORT]
    for k in range(n_long):
        text = f"My name is Ada{k}. " + "Here is some background for our conversation. " * (30 + 9 * k)
        chats.append([{"role": "user", "content": text}])
    return chats


def ids(model, messages, options) -> tuple[int, ...]:
    *_, done = model.stream_chat(messages, **options)
    return tuple(done.token_ids)


def exactness(model, chats, options) -> dict:
    cold = []
    for chat in chats:
        model.reset_cache()
        cold.append(ids(model, chat, options))
    warm = [ids(model, chat, options) for chat in chats]  # other prompts cached
    again = [ids(model, chat, options) for chat in chats]  # the same prompt cached
    turn2_warm, turn2_cold = [], []
    for chat, answer in zip(chats, cold, strict=True):
        history = [*chat, {"role": "assistant", "content": model.detokenize(answer[:-1])}]
        history.append({"role": "user", "content": "Now say that again, in other words."})
        ids(model, chat, options)  # turn 1 in the cache
        turn2_warm.append(ids(model, history, options))
        model.reset_cache()
        turn2_cold.append(ids(model, history, options))
    same = lambda a, b: sum(x == y for x, y in zip(a, b, strict=True))  # noqa: E731
    return {
        "requests": len(chats),
        "warm_equals_cold": same(warm, cold),
        "repeat_equals_cold": same(again, cold),
        "chat_turn2_warm_equals_cold": same(turn2_warm, turn2_cold),
    }


def speed(model, rounds: int) -> dict:
    long_chat = conversations(3)[-1]
    reply = model.chat(long_chat, **SPEED, max_tokens=16)
    history = [*long_chat, {"role": "assistant", "content": reply}, {"role": "user", "content": "What is my name?"}]
    with_reuse, without, cold_long, decode = [], [], [], []
    for r in range(rounds):
        model.chat(long_chat, **SPEED, max_tokens=16)  # turn 1 cached
        *_, done = model.stream_chat(history, **SPEED, max_tokens=8)
        with_reuse.append(done.timings.ttft_s * 1000)
        model.reset_cache()
        *_, done = model.stream_chat(history, **SPEED, max_tokens=8)
        without.append(done.timings.ttft_s * 1000)
        model.reset_cache()
        fresh = [{"role": "user", "content": f"Round {r}. " + long_chat[0]["content"]}]
        *_, done = model.stream_chat(fresh, **SPEED, max_tokens=64, ignore_eos=True)
        cold_long.append(done.timings.ttft_s * 1000)
        decode.append(done.timings.next_token_s * 1000)
    med = lambda xs: round(statistics.median(xs), 1)  # noqa: E731
    return {
        "history_tokens": done.usage.prompt_tokens,
        "turn2_ttft_ms_with_reuse": med(with_reuse),
        "turn2_ttft_ms_without_reuse": med(without),
        "long_prompt_ttft_ms_cold": med(cold_long),
        "decode_ms_per_token": round(statistics.median(decode), 2),
    }


def sources() -> dict[str, str]:
    from aipc.convert.api import convert

    hf = Path(os.environ.get("AIPC_HOME", Path.home() / ".cache/aipc")) / "test-fixtures" / "smollm2-llama"
    return {
        "openvino": "smollm2:135m",
        "llamacpp": "smollm2:135m",
        "onnxruntime": convert("smollm2:135m", "onnx", "fp32", name="smollm2-embedded").ref,
        "torch": str(hf),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="after")
    ap.add_argument("--backends", default="openvino,llamacpp,onnxruntime,torch")
    ap.add_argument("--long", type=int, default=3, help="long chats among the requests (default 3)")
    ap.add_argument("--rounds", type=int, default=5, help="speed rounds (default 5)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import aipc

    found = sources()
    results = {}
    for backend in args.backends.split(","):
        with aipc.load(found[backend], backend=backend, device="cpu") as model:
            chats = conversations(args.long)
            row = {"greedy": exactness(model, chats, GREEDY), "seeded": exactness(model, chats, SEEDED)}
            if backend != "torch":  # the reference keeps no cache: nothing to reuse, nothing to time
                row["speed"] = speed(model, args.rounds)
        results[backend] = row
        print(backend, json.dumps(row), flush=True)
    if args.json:
        data = json.loads(args.json.read_text()) if args.json.is_file() else {}
        data[args.label] = results
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
