"""Benchmark results as a terminal table, CSV, and the seed's chart: next-token latency by input length."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

COLUMNS = (
    ("config", "configuration", "{}"),
    ("prompt_length", "input", "{}"),
    ("load_s", "load s", "{:.2f}"),
    ("ttft_ms", "TTFT ms", "{:.1f}"),
    ("next_token_ms", "next-token ms", "{:.2f}"),
    ("next_token_ms_stdev", "±", "{:.2f}"),
    ("tokens_per_s", "tokens/s", "{:.1f}"),
    ("speculate", "speculate", "{}"),
    ("acceptance", "accepted", "{}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("model_bytes", "size MB", "{}"),
    ("roofline_fraction", "of roofline", "{}"),
)


def table(report: dict[str, Any]) -> str:
    rows = [[title for _, title, _ in COLUMNS]]
    for r in report["results"]:
        if "error" in r:
            rows.append([r["config"], str(r.get("prompt_length", "")), f"failed: {r['error'][:80]}"])
            continue
        row = []
        for key, _, fmt in COLUMNS:
            value = r.get(key)
            if key == "model_bytes":
                row.append(f"{value / 1e6:.0f}" if value else "-")
            elif key == "roofline_fraction":
                row.append(f"{value:.0%}" if value else "-")
            elif key == "acceptance":
                drafted = r.get("drafted") or 0
                row.append(f"{r.get('accepted', 0)}/{drafted}" if drafted else "-")
            else:
                row.append(fmt.format(value) if value is not None else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows]
    bw = report["machine"].get("memory_bandwidth_gbs")
    lines.append(f"memory read bandwidth {bw} GB/s; roofline = weight bytes read per token / bandwidth")
    return "\n".join(lines)


def write_csv(report: dict[str, Any], path: Path) -> None:
    keys = [k for k, _, _ in COLUMNS] + [
        "backend",
        "device",
        "prompt_tokens",
        "generated_tokens",
        "roofline_next_token_ms",
        "next_token_ms_min",
        "next_token_ms_max",
        "drafted",
        "accepted",
    ]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*keys, "error"], extrasaction="ignore")
        writer.writeheader()
        for r in report["results"]:
            writer.writerow(r)


def plot(report: dict[str, Any], path: Path, title: str | None = None) -> None:
    """Next-token latency (ms) by input length, one series per configuration: the seed's chart."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from aipc.errors import UsageError

        raise UsageError("--plot needs matplotlib: pip install 'aipc[bench]'") from None
    series: dict[str, list[tuple[int, float]]] = {}
    for r in report["results"]:
        if "error" not in r:
            series.setdefault(r["config"], []).append((r["prompt_length"], r["next_token_ms"]))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    lengths = sorted({n for points in series.values() for n, _ in points})
    width = 0.8 / max(len(series), 1)
    for i, (name, points) in enumerate(sorted(series.items())):
        values = dict(points)
        xs = [j + i * width for j, n in enumerate(lengths) if n in values]
        bars = ax.bar(xs, [values[n] for n in lengths if n in values], width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(lengths))], [str(n) for n in lengths])
    ax.set_xlabel("input tokens")
    ax.set_ylabel("next-token latency (ms)")
    cpu = report["machine"]["cpu"]["model"]
    ax.set_title(title or f"Next-token latency by input length ({cpu})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
