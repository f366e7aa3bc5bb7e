"""`aipc eval`: perplexity on a text, and KL divergence and top-1 agreement against a reference."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aipc.errors import UsageError


def command(args: argparse.Namespace) -> int:
    from aipc.eval import report, runner

    out = Path(args.json).expanduser() if args.json else None
    if out is not None and not out.parent.is_dir():
        raise UsageError(f"cannot write --json {args.json}: no such folder {out.parent}")
    say = _progress_printer()
    try:
        result = runner.evaluate(
            args.model,
            args.text,
            reference=args.reference or "auto",
            max_tokens=args.max_tokens,
            window=args.window,
            backend=args.backend,
            device=args.device,
            reference_backend=args.reference_backend,
            progress=say,
        )
    finally:
        say(None)
    print(report.table(result))
    if out is not None:
        out.write_text(result.to_json())
    return 0


def _progress_printer():
    """Progress on one rewritten stderr line, on a terminal only."""
    tty = sys.stderr.isatty()

    def say(message: str | None) -> None:
        if tty:
            sys.stderr.write("\r\033[K" + (message or ""))
            sys.stderr.flush()

    return say
