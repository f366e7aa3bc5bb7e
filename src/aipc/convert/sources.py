"""Turning what `aipc convert` was given into a safe local checkpoint folder, or a GGUF file.

Safety rules live here, before any converter runs:
- weights load from safetensors or GGUF only; pickle checkpoints (`.bin`, `.pt`, `.pth`, `.ckpt`) are refused
  unless the user passes `--allow-pickle`, and then they are loaded once with `torch.load(weights_only=True)`
  and re-saved as safetensors, so no converter ever opens a pickle;
- `trust_remote_code` is never used: a config whose architecture transformers does not know natively, and that
  asks for code of its own (`auto_map`), is refused. Phi-3, Phi-3.5 and Phi-4-mini are native.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aipc.errors import ModelNotFoundError, UsageError
from aipc.store import catalog, hub, paths
from aipc.store.publish import staged

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class Checkpoint:
    """A local source ready for converters: a Hugging Face folder (`hf`) or a GGUF file (`gguf`)."""

    kind: str
    path: Path
    name: str
    origin: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text()) if self.kind == "hf" else {}


def prepare(source: str, *, allow_pickle: bool = False) -> Checkpoint:
    """A catalog name, hub id, Hugging Face folder or GGUF file, as a local checkpoint."""
    entry = catalog.lookup(source)  # a catalog name or one of its aliases (phi3, smollm2)
    if entry is not None and entry.embedded is not None:
        from aipc.store.resolve import embedded_file

        gguf = embedded_file(*entry.embedded)
        return Checkpoint("gguf", gguf, entry.name, {"kind": "catalog", "name": entry.name, "sha256": sha256(gguf)})
    if entry is not None:
        return _from_hub(entry.hub_id or "", entry.name, allow_pickle)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        from aipc.store.resolve import checked_gguf

        checked_gguf(path)  # before transformers' or llama.cpp's reader sees it
        return Checkpoint(
            "gguf", path, path.stem, {"kind": "gguf", "path": str(path.resolve()), "sha256": sha256(path)}
        )
    if path.is_dir():
        return _from_folder(path, allow_pickle, {"kind": "folder", "path": str(path.resolve())})
    if path.exists():
        raise UsageError(f"cannot convert {path}: expected a Hugging Face folder, a .gguf file, or a hub id")
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return _from_hub(source, source.split("/")[1].lower(), allow_pickle)
    raise ModelNotFoundError(
        f"no such source {source!r}: give a Hugging Face folder, a .gguf file, a hub id (owner/name) "
        f"or a catalog name ({', '.join(catalog.names())})"
    )


def _from_hub(repo: str, name: str, allow_pickle: bool) -> Checkpoint:
    if not hub.reachable():
        folder = repo.split("/")[-1]
        raise ModelNotFoundError(
            f"the hub ({hub.endpoint()}) cannot be reached to fetch {repo}: on a connected machine run "
            f"`hf download {repo} --local-dir {folder}` (pip install huggingface_hub), copy {folder} here, then "
            f"`aipc convert {folder} --name {name}`"
        )
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise UsageError("fetching from the hub needs huggingface-hub: pip install 'aipc[hub]'") from None
    info = HfApi(endpoint=hub.endpoint()).model_info(repo)
    files = [s.rfilename for s in info.siblings or []]
    patterns = list(HUB_PATTERNS)
    if not any(f.endswith(".safetensors") for f in files):
        if not allow_pickle:
            raise UsageError(f"{repo} has no safetensors weights, only pickle files: pass --allow-pickle to load them")
        patterns += ["*.bin"]
    target = paths.home() / "downloads" / f"{repo.replace('/', '--')}--{info.sha}"
    with staged(target) as tmp:
        if tmp is not None:
            hub.download(repo, revision=info.sha, local_dir=tmp, allow_patterns=patterns)
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
    origin = {"kind": "hub", "repo": repo, "commit": info.sha, "endpoint": hub.endpoint()}
    return _from_folder(target, allow_pickle, origin, name=name)


def _from_folder(folder: Path, allow_pickle: bool, origin: dict[str, Any], name: str | None = None) -> Checkpoint:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UsageError(f"{folder} is not a Hugging Face checkpoint: it has no config.json")
    from aipc.store.hf_check import check_safetensors, checked_config

    config = checked_config(folder)
    check_no_remote_code(config, folder)
    weights = sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not weights and pickles:
        if not allow_pickle:
            raise UsageError(
                f"{folder} holds only pickle weights ({', '.join(pickles[:3])}): pickle can run code when loaded; "
                "pass --allow-pickle if you trust it, or use a safetensors checkpoint"
            )
        folder = _resave_as_safetensors(folder)
        weights = sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors")
    if not weights:
        raise UsageError(f"{folder} has no weights: expected *.safetensors files")
    for weight in weights:
        check_safetensors(folder / weight)
    origin = {**origin, "sha256": folder_digest(folder)}
    return Checkpoint("hf", folder, name or folder.name.lower(), origin)


def check_no_remote_code(config: dict[str, Any], where: Path | str) -> None:
    """Refuse a config that needs code from the checkpoint; native architectures may keep a stale auto_map."""
    model_type = config.get("model_type")
    if "auto_map" not in config:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        raise UsageError(
            f"{where} asks for remote code (auto_map, model_type {model_type!r} unknown to transformers): "
            "aipc never runs code shipped with a model; use an architecture transformers supports natively"
        )


def _resave_as_safetensors(folder: Path) -> Path:
    """Load pickle weights once, restricted to tensors (`weights_only=True`), and save them as safetensors."""
    import torch
    from safetensors.torch import save_file

    from aipc.store import store

    target = paths.home() / "downloads" / f"safetensors-{folder_digest(folder)[:16]}"
    pickles = [p for p in sorted(folder.iterdir()) if p.suffix in PICKLE_SUFFIXES]
    store.check_free_space(target.parent, sum(p.stat().st_size for p in pickles))
    with staged(target) as tmp:
        if tmp is not None:
            tensors: dict[str, Any] = {}
            for p in sorted(folder.iterdir()):
                if p.suffix in PICKLE_SUFFIXES:
                    state = _load_tensors(p)
                    tensors.update({k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)})
                elif p.is_file():
                    os.link(p, tmp / p.name) if _same_fs(p, tmp) else (tmp / p.name).write_bytes(p.read_bytes())
            _untie_shared(tensors)
            save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    return target


def _load_tensors(path: Path) -> dict[str, Any]:
    """A pickle checkpoint's state dict, read with `weights_only=True`: PyTorch's restricted unpickler builds
    tensors and plain containers and refuses anything else before it runs (a malicious pickle is refused)."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UsageError(
            f"{path} holds objects other than tensors, which could run code when loaded: aipc refused it "
            "(nothing in it ran); use a safetensors checkpoint"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise UsageError(f"{path} is not a readable PyTorch checkpoint: {last}") from None
    if not isinstance(state, dict):
        raise UsageError(f"{path} holds a {type(state).__name__}, not a state dict of named tensors")
    return state


def _untie_shared(tensors: dict[str, Any]) -> None:
    seen: dict[int, str] = {}
    for k, v in list(tensors.items()):
        ptr = v.data_ptr()
        if ptr in seen:
            tensors[k] = v.clone()
        seen[ptr] = k


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_digest(folder: Path) -> str:
    """One hash over a checkpoint folder's files (names and contents)."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            h.update(p.name.encode() + b"\0" + sha256(p).encode())
    return h.hexdigest()
