"""`aipc convert`: any Phi-3-family checkpoint into one backend's format and precision, into the store.

Order of work: validate the request and pick the recipe from config.json (seconds), check disk space, then
export into a staging folder and publish it with an atomic rename. A killed conversion leaves nothing that
`list` or `run` picks up; two concurrent conversions of one variant produce one result.
"""

from __future__ import annotations

import json
import math
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from aipc.convert import recipes, sources, targets
from aipc.errors import UsageError
from aipc.store import catalog, paths, publish, store

TOOLS = {
    "openvino": ("optimum-intel", "optimum", "nncf", "openvino", "openvino-tokenizers", "transformers", "torch"),
    "onnx": ("onnxruntime-genai", "onnxruntime", "transformers", "torch"),
    "gguf": ("gguf", "llama-cpp-python", "transformers"),
}
BYTES_PER_PARAM = {
    "int4": 0.6,
    "q4_0": 0.6,
    "q4_k_m": 0.6,
    "int8": 1.1,
    "q8_0": 1.1,
    "f16": 2.1,
    "fp16": 2.1,
    "fp32": 4.1,
}


def convert(
    source: str,
    to: str,
    precision: str | None = None,
    *,
    device_target: str = "cpu",
    name: str | None = None,
    allow_pickle: bool = False,
) -> store.Variant:
    """Convert `source` and publish it as `name@<variant>`; an existing identical variant is reused."""
    precision, device_target = recipes.check_request(to, precision, device_target)
    if name is not None:
        name = catalog.canonical(name) or store.validate_name(name)  # `--name phi3` stores phi3:mini
    if source.startswith("synthetic:"):
        return _synthetic(source.split(":", 1)[1], to, precision, name)
    with store.disk_full_is_one_line(f"converting {source}", paths.home()):
        checkpoint = sources.prepare(source, allow_pickle=allow_pickle)
        name = name or _default_name(checkpoint.name)
        variant = store.variant_name(
            {"openvino": "openvino-ir", "onnx": "onnx-genai", "gguf": "gguf"}[to], precision, device_target
        )
        target = store.variant_dir(name, variant)
        if store.find(f"{name}@{variant}"):
            return store.find(f"{name}@{variant}")[0]
        work = paths.home() / "tmp"
        if checkpoint.kind == "hf":  # the recipe is decided from config.json before any work
            recipes.recipe_for(to, precision, device_target, checkpoint.config)
        result, scratch_bytes = space_needed(checkpoint, to, precision)
        store.check_free_space_for({target.parent: result, work: scratch_bytes})
        with publish.scratch(work, "convert") as scratch:
            hf_dir, config, notes = _as_hf(checkpoint, scratch, to)
            recipe = recipes.recipe_for(to, precision, device_target, config)
            for note in (*notes, *recipe.notes):
                _say(note)
            with publish.staged(target) as tmp:
                if tmp is not None:
                    log = scratch / "convert.log"
                    _export(checkpoint, hf_dir, tmp, recipe, log, scratch, name)
                    store.write_manifest(tmp, _manifest(name, variant, to, recipe, checkpoint, config, notes))
    return store.find(f"{name}@{variant}")[0]


def space_needed(checkpoint: sources.Checkpoint, to: str, precision: str) -> tuple[int, int]:
    """Bytes the result will take, and bytes of scratch on the way, estimated before any work: from the GGUF
    header's exact tensor shapes, or a checkpoint's config.json. A GGUF source is dequantized to fp32 first
    (except GGUF -> GGUF, a requantization); llama.cpp's converter writes f16 before quantizing lower."""
    if checkpoint.kind == "gguf":
        from aipc.store.gguf_header import check

        params = sum(math.prod(t.shape) for t in check(checkpoint.path).tensors)
    else:
        params = recipes.parameter_count(checkpoint.config)
    result = int(params * BYTES_PER_PARAM[precision])
    if to == "gguf" and checkpoint.kind == "hf" and precision not in ("f16", "q8_0"):
        result += int(params * BYTES_PER_PARAM["f16"])  # the f16 file, beside the result until quantized
    scratch = int(params * BYTES_PER_PARAM["fp32"]) if checkpoint.kind == "gguf" and to != "gguf" else 0
    return result, scratch


# What `synthetic:SHAPE` can be written as: (--to, precision) -> (store format, backend, how, architecture, tools).
_SYNTHETIC = {
    ("gguf", "q4_0"): ("gguf", "llamacpp", "Q4_0 blocks, fixed scale", "llama", ("gguf",)),
    ("onnx", "int4"): (
        "onnx-genai",
        "onnxruntime",
        "the builder's int4 graph, two layers built and repeated",
        "phi3",
        TOOLS["onnx"],
    ),
}


def _synthetic(shape: str, to: str, precision: str, name: str | None) -> store.Variant:
    """`synthetic:phi3-mini`: random weights in a real model's exact dimensions, for speed at real scale."""
    from aipc.convert.synthetic import SHAPES
    from aipc.convert.synthetic_gguf import NAME_PREFIX, write_random_gguf

    if shape not in SHAPES:
        raise UsageError(f"unknown synthetic shape {shape!r}: valid shapes are {', '.join(SHAPES)}")
    if (to, precision) not in _SYNTHETIC:
        valid = " or ".join(f"--to {t} --precision {p}" for t, p in _SYNTHETIC)
        raise UsageError(f"synthetic models are written straight to GGUF q4_0 or ONNX int4 (CPU): use {valid}")
    fmt, backend, how, architecture, tools = _SYNTHETIC[(to, precision)]
    variant = store.variant_name(fmt, precision)
    name = name if name and name.startswith(NAME_PREFIX) else f"{NAME_PREFIX}{name or shape}"
    store.validate_name(name)
    target = store.variant_dir(name, variant)
    dims = SHAPES[shape]
    # Q4_0 blocks take 0.5625 bytes a parameter; the builder's int4 graph 0.72 (blocks of 32 and an fp32 embedding).
    per_parameter = 0.5625 if to == "gguf" else 0.72
    store.check_free_space(target.parent, int(recipes.parameter_count({**dims, "vocab_size": 32064}) * per_parameter))
    work = paths.home() / "tmp"
    with (
        store.disk_full_is_one_line(f"writing synthetic:{shape}", paths.home()),
        publish.scratch(work, "synthetic") as scratch,
        publish.staged(target) as tmp,
    ):
        if tmp is not None:
            _say(f"writing random weights with {shape}'s dimensions (not a real model)")
            if to == "gguf":
                write_random_gguf(tmp / f"{name}.q4_0.gguf", shape)
            else:
                from aipc.convert.synthetic_onnx import write_random_onnx

                write_random_onnx(tmp, shape, scratch, scratch / "convert.log")
            store.write_manifest(
                tmp,
                {
                    "name": name,
                    "variant": variant,
                    "format": fmt,
                    "backend": backend,
                    "precision": precision,
                    "device_target": "cpu",
                    "recipe": {"random": how, "seed": 0},
                    "notes": [f"SYNTHETIC: random weights in {shape}'s exact dimensions, for speed measurements only"],
                    "source": {"kind": "synthetic", "shape": shape},
                    "architecture": f"{architecture} ({shape} dimensions)",
                    "context_length": dims["max_position_embeddings"],
                    "synthetic": True,
                    "tools": _versions(tools),
                },
            )
    return store.find(f"{name}@{variant}")[0]


def _as_hf(checkpoint: sources.Checkpoint, scratch: Path, to: str) -> tuple[Path | None, dict[str, Any], list[str]]:
    """The Hugging Face folder exporters read (a GGUF source is dequantized first, except GGUF -> GGUF)."""
    if checkpoint.kind == "hf":
        return checkpoint.path, checkpoint.config, []
    if to == "gguf":
        return None, {}, [f"requantizing {checkpoint.path.name} directly with llama.cpp"]
    from aipc.convert.from_gguf import gguf_to_hf

    hf = gguf_to_hf(checkpoint.path, scratch / "hf")
    return hf, json.loads((hf / "config.json").read_text()), [f"dequantized {checkpoint.path.name} to fp32 first"]


def _export(checkpoint, hf_dir, out: Path, recipe: recipes.Recipe, log: Path, scratch: Path, name: str) -> None:
    if recipe.to == "openvino":
        targets.export_openvino(hf_dir, out, recipe, log)
    elif recipe.to == "onnx":
        targets.export_onnx(hf_dir, out, recipe, log, scratch / "onnx-cache")
    elif hf_dir is None:  # GGUF -> GGUF: requantize
        targets.quantize_gguf(
            checkpoint.path, out / f"{store.slug(name)}-{recipe.precision}.gguf", recipe.precision, log
        )
    else:
        targets.export_gguf(hf_dir, out, recipe, log, store.slug(name))
        targets.copy_tokenizer_files(hf_dir, out)


def _manifest(name, variant, to, recipe, checkpoint, config, notes) -> dict[str, Any]:
    fmt = {"openvino": "openvino-ir", "onnx": "onnx-genai", "gguf": "gguf"}[to]
    return {
        "name": name,
        "variant": variant,
        "format": fmt,
        "backend": {"openvino": "openvino", "onnx": "onnxruntime", "gguf": "llamacpp"}[to],
        "precision": recipe.precision,
        "device_target": recipe.device_target,
        "recipe": recipe.options,
        "notes": [*notes, *recipe.notes],
        "source": checkpoint.origin,
        "architecture": (config.get("architectures") or [None])[0],
        "context_length": config.get("max_position_embeddings"),
        "synthetic": bool(config.get("aipc_synthetic")),
        "tools": _versions(TOOLS[to]),
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _versions(packages) -> dict[str, str]:
    found = {}
    for p in packages:
        try:
            found[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    return found


def _default_name(hint: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-:" else "-" for c in hint.lower()).strip("-.") or "model"
    try:
        return store.validate_name(cleaned[:64])
    except UsageError:
        return "model"


def _say(note: str) -> None:
    import sys

    print(f"note: {note}", file=sys.stderr)
