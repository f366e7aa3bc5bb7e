"""The default reference: the model's own weights at full precision, run by a runtime that computes them exactly.

- A stored variant converted from a Hugging Face folder still on this disk: that folder, in PyTorch fp32.
- A GGUF file (the embedded model, a file given by path), or a model made from one (the OpenVINO IR aipc builds
  from a GGUF, a stored variant converted from one): the GGUF file's own weights dequantized to f32.
  llama.cpp requantizes the file to F32 (which writes exactly the dequantized weights) and runs that; without
  llama.cpp, PyTorch runs the checkpoint transformers dequantizes the file into. Either is made once and kept in
  the store, so the second evaluation starts at once.
- Anything else has no reference: perplexity alone, with one line saying why there is no KL.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from aipc.backends.base import ModelInfo
from aipc.errors import AipcError, UsageError
from aipc.store import paths
from aipc.store.publish import staged

_ASK = "pass --reference MODEL (with the same tokenizer) to compare with one"


@dataclass(frozen=True)
class Reference:
    """What to compare with: `spec` opened on `backend`, or none (`spec` None) and `why` says why not."""

    spec: str | None
    backend: str
    why: str


def default_reference(info: ModelInfo) -> Reference:
    """The reference for the model `info` describes (see the module's docstring)."""
    if info.backend == "torch":
        return Reference(None, "", f"{info.name} runs in PyTorch fp32, which is itself the reference; {_ASK}")
    path = Path(info.path)
    manifest = _manifest(path)
    source = manifest.get("source") if manifest else None
    if isinstance(source, dict) and source.get("kind") == "folder" and source.get("path"):
        folder = Path(source["path"])
        if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            return Reference(str(folder), "torch", "the fp32 checkpoint it was converted from, in PyTorch")
        return Reference(None, "", f"its source folder {folder} is gone or holds no safetensors; {_ASK}")
    gguf = _source_gguf(path, source)
    if gguf is not None:
        return dequantized(gguf)
    why = (
        f"it was converted from a {source['kind']} source, not a local Hugging Face folder or GGUF file"
        if isinstance(source, dict) and source.get("kind")
        else "it is neither a GGUF file nor a stored variant converted from a local folder or GGUF file"
    )
    return Reference(None, "", f"{why}; {_ASK}")


def dequantized(gguf: Path) -> Reference:
    """`gguf`'s weights dequantized to f32, on llama.cpp, else in PyTorch, else none (with the reason)."""
    from aipc.store.gguf_header import precision, read_metadata

    if precision(read_metadata(gguf)) == "f32":
        return Reference(str(gguf), "llamacpp", "the file itself: its weights are already f32")
    reasons = []
    for make, backend, what in (
        (_f32_gguf, "llamacpp", "its weights dequantized to f32 (an F32 GGUF), in llama.cpp"),
        (_dequantized_checkpoint, "torch", "its weights dequantized to f32 (a checkpoint), in PyTorch"),
    ):
        try:
            return Reference(str(make(gguf)), backend, what)
        except AipcError as exc:
            reasons.append(str(exc))
    return Reference(None, "", f"{gguf.name} could not be dequantized ({'; '.join(reasons)}); {_ASK}")


def _cache_folder(kind: str, gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return paths.home() / "cache" / kind / f"{gguf.stem}-{key}"


def _made_from(tmp: Path, gguf: Path) -> None:
    """Record the file a reference was made from (`aipc-cache.json`), so the store can attribute and prune it."""
    (tmp / "aipc-cache.json").write_text(json.dumps({"source": str(gguf.resolve())}) + "\n")


def _check_room(gguf: Path, folder: Path) -> None:
    """Refuse, before writing, a dequantized copy the disk cannot hold: 4 bytes per weight (15 GB for 3.8B)."""
    import shutil

    from aipc.store.gguf_header import tensor_infos

    need = 4 * sum(math.prod(t.shape) for t in tensor_infos(gguf))
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need * 1.1 > free:
        raise UsageError(f"its f32 copy needs {need / 1e9:.1f} GB and {folder} has {free / 1e9:.1f} GB free")


def _f32_gguf(gguf: Path) -> Path:
    """llama.cpp's requantization of `gguf` to F32, once."""
    from aipc.convert.targets import quantize_gguf

    target = _cache_folder("gguf-f32", gguf)
    with staged(target) as tmp:
        if tmp is not None:
            _check_room(gguf, tmp)
            _made_from(tmp, gguf)
            quantize_gguf(gguf, tmp / "model-f32.gguf", "f32", tmp / "quantize.log")
            (tmp / "quantize.log").unlink(missing_ok=True)
    return target / "model-f32.gguf"


def _dequantized_checkpoint(gguf: Path) -> Path:
    """transformers' dequantization of `gguf` into a safetensors checkpoint, once."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise UsageError("PyTorch is not installed: pip install 'aipc[convert]'")
    from aipc.convert.from_gguf import gguf_to_hf

    target = _cache_folder("gguf-hf", gguf)
    with staged(target) as tmp:
        if tmp is not None:
            _check_room(gguf, tmp)
            gguf_to_hf(gguf, tmp)
            _made_from(tmp, gguf)
    return target


def _source_gguf(path: Path, source) -> Path | None:
    """The GGUF file the model at `path` was converted from (a stored variant's source, or the source of an IR
    aipc built from a GGUF file), else the GGUF file it is; None when none is on this disk."""
    found: Path | None = None
    if isinstance(source, dict) and source.get("kind") == "gguf" and source.get("path"):
        found = Path(source["path"])
    elif isinstance(source, dict) and source.get("kind") == "catalog":
        from aipc.store import catalog
        from aipc.store.resolve import embedded_file

        entry = catalog.CATALOG.get(source.get("name", ""))
        if entry is not None and entry.embedded is not None:
            try:
                found = embedded_file(*entry.embedded)
            except AipcError:
                found = None
    elif path.is_file() and path.suffix.lower() == ".gguf":
        found = path
    elif path.is_dir():
        made = _json(path / "aipc-manifest.json")  # an IR aipc built from a GGUF file (not a stored variant)
        if made and made.get("recipe", {}).get("from") == "gguf" and isinstance(made.get("source"), str):
            found = Path(made["source"])
    return found if found is not None and found.is_file() else None


def _manifest(path: Path) -> dict | None:
    """The store manifest of the variant holding `path` (a variant folder, or a GGUF file inside one)."""
    from aipc.store.store import MANIFEST

    for folder in (path, path.parent) if path.is_file() else (path,):
        manifest = _json(folder / MANIFEST)
        if manifest and "variant" in manifest:  # the store's, not a GGUF -> IR cache's
            return manifest
    return None


def _json(file: Path) -> dict | None:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
