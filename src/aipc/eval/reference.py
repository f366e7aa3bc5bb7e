"""The default reference: the fp32 PyTorch form of the checkpoint a stored variant was converted from.

A variant's manifest records its source; when that is a Hugging Face folder still on this disk, PyTorch runs it
in fp32, which is what every converter started from. Anything else (the embedded GGUF, a hub download, a model
opened from a path) has no such folder, and the user names the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

from aipc.backends.base import ModelInfo
from aipc.errors import UsageError

_ASK = "pass --reference MODEL (a Hugging Face folder with the same tokenizer) or --reference none for perplexity alone"


def default_reference(info: ModelInfo) -> str:
    """The source folder of the stored variant `info` was opened from, or an error that asks for --reference."""
    if info.backend == "torch":
        raise UsageError(f"{info.name} is a Hugging Face checkpoint, itself the fp32 reference: {_ASK}")
    manifest = _manifest(Path(info.path))
    source = manifest.get("source") if manifest else None
    if not isinstance(source, dict) or source.get("kind") != "folder" or not source.get("path"):
        why = (
            f"it was converted from a {source['kind']} source, not a local Hugging Face folder"
            if isinstance(source, dict) and source.get("kind")
            else "it is not a stored variant converted from a local Hugging Face folder"
        )
        raise UsageError(f"no fp32 reference found for {info.name}: {why}; {_ASK}")
    folder = Path(source["path"])
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise UsageError(
            f"the fp32 reference of {info.name}, its source folder {folder}, is gone or holds no safetensors: {_ASK}"
        )
    return str(folder)


def _manifest(path: Path) -> dict | None:
    """The store manifest of the variant holding `path` (a variant folder, or a GGUF file inside one)."""
    from aipc.store.store import MANIFEST

    for folder in (path, path.parent) if path.is_file() else (path,):
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and "variant" in manifest:  # the store's, not a GGUF -> IR cache's
            return manifest
    return None
