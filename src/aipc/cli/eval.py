"""`aipc eval`: perplexity on a text, and KL divergence and top-1 agreement against a reference."""

from __future__ import annotations

import argparse
from pathlib import Path

from aipc import progress
from aipc.cli.progress import messages_into
from aipc.errors import UsageError


def command(args: argparse.Namespace) -> int:
    from aipc.eval import report, runner

    out = Path(args.json).expanduser() if args.json else None
    if out is not None and not out.parent.is_dir():
        raise UsageError(f"cannot write --json {args.json}: no such folder {out.parent}")
    with progress.step("evaluating") as step:
        result = runner.evaluate(
            args.model,
            args.text,
            reference=args.reference or "auto",
            max_tokens=args.max_tokens,
            window=args.window,
            backend=args.backend,
            device=args.device,
            reference_backend=args.reference_backend,
            progress=messages_into(step),
        )
    print(report.table(result))
    if out is not None:
        out.write_text(result.to_json())
    return 0
