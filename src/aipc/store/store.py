"""The local model store: `models/<name>/<variant>/`, each variant a runnable folder with a manifest.

A variant is one backend format at one precision for one device target (`openvino-int4`, `openvino-int4-npu`,
`onnx-int4`, `onnx-fp16-cuda`, `gguf-q4_k_m`). Variants are published atomically (`publish.staged`), so a
folder without its `.complete` marker is never listed or run, and removal renames before deleting.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aipc.errors import ModelNotFoundError, UsageError
from aipc.store import paths
from aipc.store.publish import is_published

MANIFEST = "aipc-manifest.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(:[A-Za-z0-9._-]{1,64})?$")
_VARIANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
FORMAT_PREFIX = {"openvino-ir": "openvino", "onnx-genai": "onnx", "gguf": "gguf"}


@dataclass(frozen=True)
class Variant:
    """One published variant of a stored model."""

    name: str
    variant: str
    path: Path
    manifest: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.variant}"

    @property
    def format(self) -> str:
        return self.manifest.get("format", "")

    @property
    def precision(self) -> str:
        return self.manifest.get("precision", "")

    @property
    def device_target(self) -> str:
        return self.manifest.get("device_target", "cpu")

    @property
    def size_bytes(self) -> int:
        return int(self.manifest.get("size_bytes", 0))

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("synthetic"))


def validate_name(name: str) -> str:
    """A model name that is safe as a folder name: letters, digits, `._-`, one optional `:tag`."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise UsageError(
            f"invalid model name {name!r}: use letters, digits, '.', '_', '-' and one optional ':tag' "
            "(no path separators, no '..')"
        )
    return name


def slug(name: str) -> str:
    return validate_name(name).replace(":", "--")


def variant_name(fmt: str, precision: str, device_target: str = "cpu") -> str:
    base = f"{FORMAT_PREFIX.get(fmt, fmt)}-{precision}".lower()
    return base if device_target in ("cpu", "", None) else f"{base}-{device_target}"


def parse_ref(ref: str) -> tuple[str, str | None]:
    """`name` or `name@variant`, validated."""
    name, _, variant = ref.partition("@")
    validate_name(name)
    if variant and not _VARIANT.match(variant):
        raise UsageError(f"invalid variant {variant!r} in {ref!r}")
    return name, variant or None


def model_dir(name: str) -> Path:
    return paths.models_dir() / slug(name)


def variant_dir(name: str, variant: str) -> Path:
    if not _VARIANT.match(variant):
        raise UsageError(f"invalid variant {variant!r}")
    return model_dir(name) / variant


def _read(folder: Path) -> dict[str, Any] | None:
    if not is_published(folder):
        return None
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def list_variants(name: str | None = None) -> list[Variant]:
    """Every published variant (of `name`, if given), sorted by model then variant."""
    root = paths.models_dir()
    if name is not None:
        dirs = [model_dir(name)]
    else:
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    found = []
    for mdir in dirs:
        if not mdir.is_dir():
            continue
        for vdir in sorted(mdir.iterdir()):
            if vdir.name.startswith(".") or not vdir.is_dir():
                continue
            manifest = _read(vdir)
            if manifest is not None:
                found.append(Variant(manifest.get("name", mdir.name.replace("--", ":")), vdir.name, vdir, manifest))
    return found


def find(ref: str) -> list[Variant]:
    name, variant = parse_ref(ref)
    variants = [v for v in list_variants(name) if variant is None or v.variant == variant]
    return variants


def get(ref: str) -> list[Variant]:
    """Like `find`, but an unknown reference is an error listing what the store has."""
    variants = find(ref)
    if not variants:
        have = sorted({v.name for v in list_variants()})
        listing = ", ".join(have) if have else "nothing yet"
        raise ModelNotFoundError(f"no model {ref!r} in the store ({paths.models_dir()}); it has: {listing}")
    return variants


def remove(ref: str) -> list[Variant]:
    """Delete a model (every variant) or one `name@variant`; nothing else is touched."""
    variants = get(ref)
    for v in variants:
        trash = v.path.parent / f".trash-{v.path.name}-{os.getpid()}-{time.time_ns()}"
        os.replace(v.path, trash)  # atomic: from here on nothing lists or runs it
        shutil.rmtree(trash, ignore_errors=True)
    mdir = model_dir(variants[0].name)
    if mdir.is_dir() and not any(p for p in mdir.iterdir() if not p.name.startswith(".")):
        shutil.rmtree(mdir, ignore_errors=True)
    return variants


def folder_size(folder: Path) -> tuple[int, list[dict[str, Any]]]:
    files = []
    total = 0
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            size = p.stat().st_size
            total += size
            files.append({"path": p.relative_to(folder).as_posix(), "size": size})
    return total, files


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Complete `manifest` with the folder's files and sizes, and write it."""
    total, files = folder_size(folder)
    full = {**manifest, "files": files, "size_bytes": total}
    full.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    (folder / MANIFEST).write_text(json.dumps(full, indent=2) + "\n")
    return full


def check_free_space(folder: Path, needed_bytes: int) -> None:
    """Refuse before starting when the disk cannot hold the result (with a 10% margin)."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes * 1.1:
        raise UsageError(
            f"not enough free disk space in {folder}: about {needed_bytes / 1e9:.1f} GB needed, "
            f"{free / 1e9:.1f} GB free (set AIPC_HOME to a larger disk)"
        )
