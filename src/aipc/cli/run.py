"""`aipc run`: one streamed answer, or an interactive chat.

Which word is the model: see `aipc.store.resolve.looks_like_model`; `--` and `-p/--prompt` override it.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Iterator
from functools import lru_cache
from typing import TextIO

from aipc.engine.config import GenerationConfig, LoadConfig
from aipc.engine.events import Done, Event, TextDelta
from aipc.errors import ModelNotFoundError, UsageError


def command(args: argparse.Namespace) -> int:
    model_name, prompt, guessed = model_and_prompt(args)
    if prompt is not None:
        prompt = _checked_text(prompt, "the prompt on the command line")
    if args.system is not None:
        _checked_text(args.system, "--system")
    # Validate every option before the (slow) load, so mistakes answer at once.
    options = generation_options(args)
    GenerationConfig().updated(**options)
    load_options = {"context_length": args.context_length, "kv_cache": args.kv_cache}
    LoadConfig(backend=args.backend, device=args.device, speculate=args.speculate, **load_options)
    _check_model(model_name, guessed)

    stdin_tty = sys.stdin is not None and sys.stdin.isatty()
    if not stdin_tty and not args.interactive:
        piped = read_piped_stdin()
        if piped:  # as Ollama: the piped text first, then the prompt words
            prompt = f"{piped}\n{prompt}" if prompt else piped
    interactive = prompt is None and (args.interactive or stdin_tty)
    if prompt is None and not interactive:
        raise UsageError("no prompt: pass one as an argument, pipe it on stdin, or run in a terminal to chat")

    model = load(model_name, args.backend, args.device, args.speculate, **load_options)
    wrap = not args.nowordwrap
    with model:
        if args.verbose:
            print(model.sampling.summary(options), file=sys.stderr)
        if interactive:
            from aipc.cli.chat import ChatSession

            session = ChatSession(
                model,
                options,
                system=args.system,
                verbose=args.verbose,
                wordwrap=wrap,
                name=model_name,
                backend=args.backend,
                device=args.device,
                speculate=args.speculate,
            )
            return session.loop()
        done = print_stream(model.stream(prompt, system=args.system, **options), sys.stdout, wordwrap=wrap)
        if args.verbose and done is not None:
            print(stats_line(done, model.load_seconds), file=sys.stderr)
    return 0


def _checked_text(text: str | bytes, where: str) -> str:
    """`text` as a str, or one line naming where it was not UTF-8. Bytes (stdin) are decoded strictly; a str
    from argv carries undecodable bytes as lone surrogates (Python's surrogateescape), which no tokenizer
    can encode."""
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"{where} is not UTF-8 text (byte 0x{text[exc.start]:02x} at offset {exc.start}): "
                "send UTF-8 (iconv -t UTF-8 converts other encodings)"
            ) from None
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            byte = f"byte 0x{ord(ch) - 0xDC00:02x}" if ch >= "\udc80" else f"U+{ord(ch):04X}"
            raise UsageError(f"{where} is not UTF-8 text ({byte} at character {i}): pass UTF-8 text")
    return text


def model_and_prompt(args: argparse.Namespace) -> tuple[str | None, str | None, bool]:
    """(model, prompt, whether the model was recognised from the first word's shape alone)."""
    from aipc.store.resolve import looks_like_model

    words = list(args.words)
    model = args.model
    explicit = [p for p in (args.prompt, " ".join(args.prompt_words or [])) if p]
    if args.prompt is not None or args.prompt_words is not None:
        if model is None and words:
            model = words.pop(0)
        if words:
            raise UsageError(
                f"with -p/--prompt or --, only the model comes before; got more words: {' '.join(words)!r}"
            )
        return model, " ".join(explicit) or None, False
    guessed = False
    if model is None and words and looks_like_model(words[0]):
        model = words.pop(0)
        guessed = True
    return model, " ".join(words) or None, guessed


def _check_model(name: str | None, guessed: bool) -> None:
    """An unknown name fails now, before loading; a first word taken for a model says how to send it as text."""
    from aipc.store.resolve import check

    try:
        check(name)
    except ModelNotFoundError as exc:
        if guessed and " " not in str(name):
            raise ModelNotFoundError(f"{exc} (to send {name!r} as the prompt: aipc run -- {name})") from None
        raise


def read_piped_stdin() -> str:
    """Text piped or redirected in; nothing from a terminal, /dev/null or a socket left open by a parent."""
    if sys.stdin is None:
        return ""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return ""
    if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
        return ""
    return _checked_text(sys.stdin.buffer.read(), "the prompt on stdin").strip()


def load(name: str | None, backend: str, device: str, speculate: str = "auto", **load_options):
    """Open the model with a spinner on the terminal (a first run's conversion shows as its own step);
    `load_options` are LoadConfig's others (context_length, kv_cache)."""
    import aipc
    from aipc import progress

    with progress.step(f"loading {name or 'the default model'}"):
        return aipc.load(name, backend=backend, device=device, speculate=speculate, **load_options)


def generation_options(args: argparse.Namespace) -> dict:
    names = {
        "max_tokens": "max_tokens",
        "temperature": "temperature",
        "top_p": "top_p",
        "top_k": "top_k",
        "min_p": "min_p",
        "seed": "seed",
        "repeat_penalty": "repetition_penalty",
        "stop": "stop",
    }
    options = {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr, None) is not None}
    fmt = getattr(args, "format", None)
    if fmt is not None:
        options["json_schema"] = json_format(fmt)
    return options


def json_format(value: str) -> str:
    """`--format`: "json" (any JSON object) or a file holding a JSON Schema, as JSON text."""
    from pathlib import Path

    if value == "json":
        return '{"type": "object"}'
    path = Path(value)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise UsageError(f"--format must be 'json' or a JSON Schema file: cannot read {value}: {reason}") from None
    try:
        json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--format file {value} is not valid JSON: {exc}") from None
    return text


def print_stream(events: Iterator[Event], out: TextIO, *, wordwrap: bool = False) -> Done | None:
    """Write text deltas as they come (word-wrapped on a terminal); return the final event. The stream is
    closed on Ctrl-C."""
    from aipc.cli.wrap import WordWrap, terminal_width

    writer = WordWrap(out, terminal_width()) if wordwrap and _isatty(out) else None
    done = None
    last = ""
    try:
        for event in events:
            if isinstance(event, TextDelta):
                if writer is not None:
                    writer.write(event.text)
                else:
                    out.write(event.text)
                    out.flush()
                last = event.text or last
            elif isinstance(event, Done):
                done = event
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # stops the runtime if we left early
        if writer is not None:
            writer.flush()
        if last and not last.endswith("\n"):
            out.write("\n")
        out.flush()
    return done


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def stats_line(done: Done, load_seconds: float | None = None) -> str:
    t = done.timings
    parts = [] if load_seconds is None else [f"load {load_seconds:.2f} s"]
    parts += [
        f"prompt {done.usage.prompt_tokens} tokens",
        f"TTFT {t.ttft_s * 1000:.0f} ms",
        f"next-token {t.next_token_s * 1000:.1f} ms",
        f"{t.tokens_per_s:.1f} tokens/s",
        f"{done.usage.completion_tokens} tokens generated ({done.finish_reason})",
        f"drafted {done.drafted}, accepted {done.accepted}"
        + (f" ({done.accepted / done.drafted:.0%})" if done.drafted else ""),
        f"{what_ran(done.model)} on {done.backend}/{done.device}" if done.model else f"{done.backend}/{done.device}",
    ]
    return " | ".join(parts)


@lru_cache(maxsize=16)
def what_ran(ref: str) -> str:
    """The variant, as users name it; the embedded model says so, with its quantization:
    `smollm2:135m@embedded (q4_1 GGUF)`."""
    from aipc.errors import AipcError
    from aipc.store.resolve import EMBEDDED, resolve_all

    if ref.partition("@")[2] != EMBEDDED:
        return ref
    try:
        precision = resolve_all(ref)[0].precision
    except (AipcError, IndexError):
        return ref
    return f"{ref} ({precision} GGUF)" if precision else ref
