"""aipc: run small language models on the AI PC you have (NPU, GPU or CPU), one API for every runtime.

    import aipc
    with aipc.load() as model:            # the embedded default model, best device
        for event in model.stream("What is the capital of France?"):
            ...

Heavy runtimes are imported only when a model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Done", "GenerationConfig", "LoadConfig", "Model", "TextDelta", "ToolCall", "__version__", "load"]

if TYPE_CHECKING:
    from aipc.engine.config import GenerationConfig, LoadConfig
    from aipc.engine.events import Done, TextDelta, ToolCall
    from aipc.engine.model import Model

_LAZY = {
    "Model": "aipc.engine.model",
    "load": "aipc.engine.model",
    "GenerationConfig": "aipc.engine.config",
    "LoadConfig": "aipc.engine.config",
    "TextDelta": "aipc.engine.events",
    "ToolCall": "aipc.engine.events",
    "Done": "aipc.engine.events",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aipc' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def load(model: str | None = None, backend: str = "auto", device: str = "auto", **load_options: Any) -> Model:
    """Open `model` (a catalog name such as "phi3:mini", a .gguf file or an OpenVINO IR folder; None is the
    embedded default, smollm2:135m) with `backend` on `device` ("auto", "cpu", "gpu" or "npu")."""
    from aipc.engine.model import load as _load

    return _load(model, backend=backend, device=device, **load_options)
