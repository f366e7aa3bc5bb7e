"""Help text built from the code it describes: backend names from the registry, devices from LoadConfig,
precisions from the convert recipes, model names and their defaults from the catalog, sampling defaults from
GenerationConfig. Nothing here imports a runtime (`aipc --help` stays instant)."""

from __future__ import annotations

import textwrap


def backend_names() -> str:
    from aipc.backends.registry import names

    return ", ".join(names())


def backends() -> str:
    return f"auto, {backend_names()}"


def backend_help(default: str = "auto") -> str:
    return f"{backends()} (default: {default}: the fastest measured by aipc bench, else a static order)"


def devices() -> str:
    from aipc.engine.config import DEVICES

    return f"{', '.join(d if d != 'gpu' else 'gpu, gpu.N' for d in DEVICES)}, or a preference list such as npu,cpu"


def formats() -> str:
    from aipc.convert.recipes import PRECISIONS

    return ", ".join(PRECISIONS)


def precisions() -> str:
    """`openvino: int4 (default), int8, fp16; onnx: ...`"""
    from aipc.convert.recipes import DEFAULT_PRECISION, PRECISIONS

    parts = []
    for to, precs in PRECISIONS.items():
        shown = [f"{p} (default)" if p == DEFAULT_PRECISION[to] else p for p in precs]
        parts.append(f"{to}: {', '.join(shown)}")
    return "; ".join(parts)


def device_targets() -> str:
    from aipc.convert.recipes import DEVICE_TARGETS

    return "; ".join(f"{to}: {', '.join(targets)}" for to, targets in DEVICE_TARGETS.items())


def default_value(option: str) -> str:
    """A GenerationConfig default as the help shows it."""
    from aipc.engine.config import GenerationConfig

    value = getattr(GenerationConfig(), option)
    return "none" if value is None else str(value)


def catalog_table(indent: str = "  ") -> str:
    """The catalog: each name, the other names it answers to, and what it is."""
    from aipc.store import catalog

    rows = [(e.name, ", ".join(e.aliases), e.description) for e in catalog.CATALOG.values()]
    width = max(len(r[0]) for r in rows)
    lines = []
    for name, aliases, description in rows:
        lines.append(f"{indent}{name.ljust(width)}  {description}")
        if aliases:
            lines.append(f"{indent}{' ' * width}  also: {aliases}")
    return "\n".join(lines)


def model_defaults(indent: str = "  ") -> str:
    """The sampling defaults each catalog model's authors recommend, and aipc's own for everything else."""
    from aipc.engine.config import GenerationConfig
    from aipc.store import catalog

    base = GenerationConfig()
    lines = [
        f"{indent}{e.name}: {', '.join(f'{k} {v}' for k, v in e.defaults.items())}"
        for e in catalog.CATALOG.values()
        if e.defaults
    ]
    lines.append(
        f"{indent}other models: temperature {base.temperature}, top_p {base.top_p}, top_k {base.top_k} (0: off), "
        f"repeat penalty {base.repetition_penalty}, max tokens {base.max_tokens}"
    )
    return "\n".join(lines)


def wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent)


MODEL_FORMS = (
    "MODEL is a catalog name or one of its Ollama-style tags (below), a stored or created model (aipc list), "
    "NAME@VARIANT for one stored variant, or a path: a .gguf file, an OpenVINO IR folder, an ONNX Runtime GenAI "
    "folder (genai_config.json, as its model builder writes it) or a Hugging Face folder with safetensors "
    "(run by PyTorch, the reference)."
)
