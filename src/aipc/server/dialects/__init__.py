"""The API dialects `aipc serve` speaks, each a thin adapter over the serving core (server/core.py).

An adapter parses its requests (pydantic, in its `*_protocol.py`), calls the core, and shapes the core's events
into its responses; it never loads models, schedules or generates itself. Each module has a
`register(app, state)` that adds its routes and its error shape; adding a dialect is one module and one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

DIALECTS = (
    "aipc.server.dialects.openai",  # /v1/...: OpenAI's chat and text completions, the model list
    "aipc.server.dialects.responses",  # /v1/responses: OpenAI's Responses API, stateless
    "aipc.server.dialects.ollama",  # /api/...: Ollama's chat and generate, and its version
    "aipc.server.dialects.ollama_models",  # /api/...: Ollama's tags, show, ps, pull, delete, copy
    "aipc.server.dialects.tokenizer",  # vLLM's /tokenizer_info, /tokenize, /detokenize
)


def register_all(app: Any, state: Any) -> None:
    for name in DIALECTS:
        importlib.import_module(name).register(app, state)
