"""The evaluation as a small table for the terminal (JSON comes from `Evaluation.to_json`)."""

from __future__ import annotations

from pathlib import Path

from aipc.eval.runner import Evaluated, Evaluation


def table(result: Evaluation) -> str:
    """Model and reference side by side: perplexity, KL(reference || model), top-1 agreement."""
    head = ("", "model", "backend/device", "perplexity", "KL(ref||model)", "top-1 agree")
    rows = [_row("model", result.model, result)]
    if result.reference is not None:
        rows.append(_row("reference", result.reference, None))
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = [
        f"text: {Path(result.text).name}, {result.tokens_scored} tokens scored in {result.window}-token windows "
        f"(stride {result.stride}), {result.seconds:.1f} s"
    ]
    for r in (head, *rows):
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2])]
        cells += [c.rjust(w) for c, w in zip(r[3:], widths[3:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def _row(label: str, m: Evaluated, result: Evaluation | None) -> tuple[str, ...]:
    kl = agree = "-"
    if result is not None and result.kl_mean is not None:
        kl = f"{result.kl_mean:.5f}"
        agree = f"{100 * (result.agreement or 0):.2f}%"
    name = Path(m.model).name if "/" in m.model or "\\" in m.model else m.model
    return (label, name, f"{m.backend}/{m.device}", f"{m.perplexity:.3f}", kl, agree)
