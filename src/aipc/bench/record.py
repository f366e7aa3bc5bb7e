"""What `aipc bench` measured fastest on this machine, kept in the store so `--backend auto` can use it.

Without a record, auto follows its static order (int4 first, OpenVINO first); with one, the measured
fastest (backend, variant) for that model and device comes first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aipc.store import paths


def _file() -> Path:
    return paths.home() / "bench" / "fastest.json"


def remember_fastest(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model and device kind, the configuration with the best median decode tokens/s (over input lengths)."""
    by_config: dict[str, list[dict]] = {}
    for r in report["results"]:
        if "error" not in r:
            by_config.setdefault(r["config"], []).append(r)
    best: dict[str, dict[str, Any]] = {}
    for rows in by_config.values():
        first = rows[0]
        name, _, variant = first["model"].partition("@")
        key = f"{name}|{first['device'].split(' ')[0].split('.')[0]}"
        speed = sum(r["tokens_per_s"] for r in rows) / len(rows)
        if key not in best or speed > best[key]["tokens_per_s"]:
            best[key] = {
                "config": first["config"],
                "backend": first["backend"],
                "variant": variant,
                "path": first["path"],
                "tokens_per_s": round(speed, 2),
            }
    if best:
        stored = _load()
        stored.update(best)
        _file().parent.mkdir(parents=True, exist_ok=True)
        _file().write_text(json.dumps(stored, indent=2) + "\n")
    return {k.replace("|", " on "): v for k, v in best.items()}


def _load() -> dict[str, Any]:
    try:
        return json.loads(_file().read_text())
    except (OSError, ValueError):
        return {}


def preferred(model: str, device_kind: str) -> tuple[str, str] | None:
    """(backend, variant) measured fastest for `model` on `device_kind` here, if any ("" variant: not stored)."""
    entry = _load().get(f"{model}|{device_kind}")
    return (entry["backend"], entry["variant"]) if entry else None
