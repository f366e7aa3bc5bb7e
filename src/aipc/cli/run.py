"""`aipc run`: one streamed answer, or an interactive chat."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import TextIO

from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.engine.events import Done, Event, TextDelta


def command(args: argparse.Namespace) -> int:
    from aipc.store.resolve import looks_like_model

    words = list(args.words)
    model_name = args.model
    if model_name is None and words and looks_like_model(words[0]):
        model_name = words.pop(0)
    prompt = " ".join(words) or None
    # Validate every option before the (slow) load, so mistakes answer at once.
    options = generation_options(args)
    GenerationConfig().updated(**options)
    load_options = {"context_length": args.context_length, "kv_cache": args.kv_cache}
    LoadConfig(backend=args.backend, device=args.device, **load_options)

    interactive = prompt is None and (args.interactive or sys.stdin.isatty())
    if prompt is None and not interactive:
        prompt = sys.stdin.read().strip()
        if not prompt:
            from aipc.errors import UsageError

            raise UsageError("no prompt: pass one as an argument, pipe it on stdin, or run in a terminal to chat")

    import aipc

    with _status(f"loading {model_name or 'the default model'}…"):
        model = aipc.load(model_name, backend=args.backend, device=args.device, **load_options)
    with model:
        if args.verbose:
            print(model.sampling.summary(options), file=sys.stderr)
        if interactive:
            from aipc.cli.chat import ChatSession

            return ChatSession(model, options, system=args.system, verbose=args.verbose).loop()
        done = print_stream(model.stream(prompt, system=args.system, **options), sys.stdout)
        if args.verbose and done is not None:
            print(stats_line(done, model.load_seconds), file=sys.stderr)
    return 0


def generation_options(args: argparse.Namespace) -> dict:
    names = {n: n for n in ("max_tokens", "temperature", "top_p", "top_k", "seed")}
    names["repetition_penalty"] = "repeat_penalty"
    return {n: getattr(args, a) for n, a in names.items() if getattr(args, a) is not None}


def print_stream(events: Iterator[Event], out: TextIO) -> Done | None:
    """Write text deltas as they come; return the final event. The stream is closed on Ctrl-C."""
    done = None
    last = ""
    try:
        for event in events:
            if isinstance(event, TextDelta):
                out.write(event.text)
                out.flush()
                last = event.text or last
            elif isinstance(event, Done):
                done = event
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # stops the runtime if we left early
        if not last.endswith("\n"):
            out.write("\n")
        out.flush()
    return done


def stats_line(done: Done, load_seconds: float | None = None) -> str:
    t = done.timings
    parts = [] if load_seconds is None else [f"load {load_seconds:.2f} s"]
    parts += [
        f"prompt {done.usage.prompt_tokens} tokens",
        f"TTFT {t.ttft_s * 1000:.0f} ms",
        f"next-token {t.next_token_s * 1000:.1f} ms",
        f"{t.tokens_per_s:.1f} tokens/s",
        f"{done.usage.completion_tokens} tokens generated ({done.finish_reason})",
        f"{done.backend}/{done.device}",
    ]
    return " | ".join(parts)


class _status:
    """A transient status line on a terminal's stderr; nothing when stderr is not a terminal."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tty = sys.stderr.isatty()

    def __enter__(self) -> None:
        if self.tty:
            sys.stderr.write(self.text)
            sys.stderr.flush()

    def __exit__(self, *exc: object) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
