"""Each model's default sampling settings, and where each one came from.

Small instruct models loop without a repetition penalty ("Lumina, ahem, ahem, ..." to the token limit), so
aipc starts from Ollama's defaults, which carry one, and lets better-informed values win, in this order:

1. the catalog's curated values for the model (`aipc.store.catalog`, the authors' published recommendations);
2. the model's own files: `generation_config.json` in a model folder, or the `general.sampling.*` keys that
   llama.cpp's converter writes into a GGUF file;
3. Ollama's defaults: temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1, min_p 0 (off).

`for_source(source)` is what `aipc.load` applies and what `aipc show` can print; `resolve` says where each value
came from, for `--verbose`. Model files are untrusted: a value that is not a valid setting is ignored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aipc.errors import InvalidConfigError, UsageError

log = logging.getLogger("aipc")

# The sampling options a model's defaults may set (GenerationConfig names), in the order they are shown.
OPTIONS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
# Ollama's api.DefaultOptions (temperature, top_k, top_p, repeat_penalty), checked against its source.
OLLAMA = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1}
ORIGIN_BASE = "Ollama's defaults"

# generation_config.json key -> option
_HF_KEYS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
}
# GGUF general.sampling.* key -> option (llama.cpp's names)
_GGUF_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_k": "top_k",
    "general.sampling.top_p": "top_p",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_repeat": "repetition_penalty",
}
# How the command line and Ollama name the options, for the one-line summary.
_SHOWN = {"repetition_penalty": "repeat_penalty"}


@dataclass(frozen=True)
class SamplingDefaults:
    """A model's default sampling values (GenerationConfig names) and, per option, where the value came from."""

    values: dict[str, Any]
    origins: dict[str, str] = field(default_factory=dict)
    model: str = ""
    set_at_load: dict[str, Any] = field(default_factory=dict)  # `aipc.load(sampling=...)`, `serve --repeat-penalty`

    def summary(self, overrides: dict[str, Any] | None = None) -> str:
        """One line, e.g. `sampling: temperature 0.2, top_k 40, top_p 0.9, repeat_penalty 1.1 (smollm2:135m
        defaults)`; options the user set are listed as such."""
        overrides = {**self.set_at_load, **(overrides or {})}
        overrides = {k: v for k, v in overrides.items() if k in OPTIONS and v is not None}
        values = {**self.values, **overrides}
        if values.get("temperature") == 0:
            shown = ["greedy (temperature 0)"] + [
                f"{_SHOWN.get(k, k)} {values[k]:g}" for k in ("repetition_penalty",) if k in values
            ]
        else:
            # min_p 0 is off, as it is unless a model or a request sets it: not worth a mention
            shown = [
                f"{_SHOWN.get(k, k)} {values[k]:g}" for k in OPTIONS if k in values and (values[k] or k != "min_p")
            ]
        where = sorted({self.origins.get(k, ORIGIN_BASE) for k in self.values if k not in overrides})
        note = f"{self.model or 'model'} defaults" if where else ""
        if where and where != [ORIGIN_BASE]:
            note += ": " + ", ".join(where)
        if overrides:
            note += ("; " if note else "") + "set: " + ", ".join(_SHOWN.get(k, k) for k in OPTIONS if k in overrides)
        return "sampling: " + ", ".join(shown) + (f" ({note})" if note else "")


def for_source(source) -> dict[str, Any]:
    """The effective default sampling values for a `ModelSource`: what `aipc.load` applies to every request
    that does not set them (GenerationConfig option names: temperature, top_k, top_p, min_p, repetition_penalty)."""
    return dict(resolve(source).values)


def resolve(source) -> SamplingDefaults:
    """`for_source`, with where each value came from."""
    values = dict(OLLAMA)
    origins = dict.fromkeys(OLLAMA, ORIGIN_BASE)
    found, where = _from_files(Path(source.path), source.format)
    for key, value in found.items():
        values[key], origins[key] = value, where
    from aipc.store import catalog

    # The catalog's curated values, or a created model's PARAMETERs over its base's (`aipc create`).
    where = "aipc's catalog" if catalog.lookup(source.name) else "its Modelfile"
    for key, value in _valid(dict(source.defaults or {}), f"{where} ({source.name})").items():
        values[key], origins[key] = value, where
    return SamplingDefaults(values, origins, source.name)


def _from_files(path: Path, fmt: str) -> tuple[dict[str, Any], str]:
    """Sampling values the model's own files recommend, and which file said so."""
    if fmt == "gguf":
        from aipc.store.gguf_header import read_metadata

        gguf = path if path.is_file() else next(path.glob("*.gguf"), None)
        if gguf is None:
            return {}, ""
        try:
            meta = read_metadata(gguf)
        except (OSError, ValueError, UsageError):  # a damaged header is the runtime's to report
            return {}, ""
        found = {opt: meta[key] for key, opt in _GGUF_KEYS.items() if key in meta}
        return _valid(found, f"{gguf.name} (general.sampling.*)"), "the GGUF's general.sampling"
    config = path / "generation_config.json"
    if not config.is_file():
        return {}, ""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, ""
    if not isinstance(data, dict):
        return {}, ""
    found = {opt: data[key] for key, opt in _HF_KEYS.items() if key in data}
    if data.get("do_sample") is False:
        # The authors ask for greedy decoding; their temperature (transformers ignores it then) is not used.
        found["temperature"] = 0.0
    return _valid(found, "generation_config.json"), "generation_config.json"


def _valid(found: dict[str, Any], where: str) -> dict[str, Any]:
    """The values that are valid settings; others are named in one line and ignored."""
    from aipc.engine.config import GenerationConfig

    good = {}
    for key, value in found.items():
        if key not in OPTIONS:
            continue
        if key == "top_k" and isinstance(value, float) and value.is_integer():
            value = int(value)
        try:
            GenerationConfig().updated(**{key: value})
        except InvalidConfigError as exc:
            log.warning("ignoring %s from %s: %s", key, where, exc)
            continue
        good[key] = value
    return good
