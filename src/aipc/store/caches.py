"""Derived caches: what aipc builds from a model to load it faster, counted and attributed to that model.

These live under `$AIPC_HOME/cache/`:

- `gguf-openvino/<file>-<key>-compressed/`: a GGUF file converted once to OpenVINO IR (OpenVINO loads IR faster
  than GGUF); `...-npu/` is the NPU copy, its weights folded to fp16. Each folder's `aipc-manifest.json`
  records the GGUF it was made from (`source`).
- `openvino/<key>/`: OpenVINO's compiled blobs for one IR (the pipeline's CACHE_DIR, one folder per IR), so the
  next load skips compiling. `aipc-cache.json` records the IR folder it was compiled from.
- `gguf-f32/<file>-<key>/` and `gguf-hf/<file>-<key>/`: a GGUF file's weights dequantized to f32 (an F32 GGUF
  for llama.cpp, or a checkpoint for PyTorch), `aipc eval`'s default reference; `aipc-cache.json` records the
  GGUF it was made from (`source`).
- `openvino/*.blob` at the top: blobs from before per-IR folders. OpenVINO names them by a hash of the model
  and device, which cannot be traced back to a model: they count as shared, and nothing reads them any more.

A cache belongs to the stored (or embedded) variant its source is; one whose source is gone, and the old shared
blobs, are unused: `aipc prune` removes them (`unused()`), and `aipc rm` removes a model's own (`owned_by()`).
Everything here is rebuilt on the next load if removed, so removing never loses a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from aipc.store import paths

GGUF_IR = "gguf-openvino"
COMPILED = "openvino"
REFERENCES = ("gguf-f32", "gguf-hf")  # eval/reference.py's dequantized copies
_SOURCE_FILE = "aipc-manifest.json"  # in gguf-openvino folders
_IR_FILE = "aipc-cache.json"  # in compiled-blob folders ("ir") and reference folders ("source")
KINDS = {
    "ir": "GGUF converted to OpenVINO IR",
    "ir-npu": "NPU copy of the IR (fp16 weights)",
    "compiled": "compiled blobs",
    "shared": "compiled blobs of unknown models",
    "eval-ref": "f32 reference for aipc eval",
}


@dataclass(frozen=True)
class DerivedCache:
    """One cache folder (or, for `shared`, the old blobs together): its kind, size and what it was made from."""

    kind: str
    path: Path
    size_bytes: int
    source: str  # the file or folder it was made from ("" when unknown)
    owner: str = ""  # the variant it belongs to (`smollm2:135m@embedded`); "" for files outside the store
    source_exists: bool = True

    @property
    def unused(self) -> bool:
        """Nothing can use it again: its source is gone, or it is an old shared blob nothing reads."""
        return self.kind == "shared" or not self.source_exists


def compiled_dir(ir: Path) -> Path:
    """The compiled-blob folder for the IR folder `ir` (OpenVINO's CACHE_DIR), recording which IR it serves."""
    ir = Path(ir).resolve()
    folder = paths.cache_dir(COMPILED) / hashlib.sha256(str(ir).encode()).hexdigest()[:16]
    mark = folder / _IR_FILE
    if not mark.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{_IR_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps({"ir": str(ir), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        os.replace(tmp, mark)
    return folder


def scan() -> list[DerivedCache]:
    """Every derived cache in the store, each attributed to the variant it belongs to where it has one."""
    root = paths.home() / "cache"
    owners = _owners()
    found: list[DerivedCache] = []
    ir_owner: dict[str, tuple[str, bool]] = {}
    for folder in _subfolders(root / GGUF_IR):
        source = _read_json(folder / _SOURCE_FILE).get("source", "")
        key = _key(source) if source else ""
        exists = bool(source) and Path(source).exists()
        owner = owners.get(key, "") if exists else ""
        kind = "ir-npu" if folder.name.endswith("-npu") else "ir"
        found.append(DerivedCache(kind, folder, _size(folder), source, owner, exists))
        ir_owner[_key(str(folder))] = (owner, exists)
    for folder in (f for kind in REFERENCES for f in _subfolders(root / kind)):
        source = _read_json(folder / _IR_FILE).get("source", "")
        exists = bool(source) and Path(source).exists()
        owner = owners.get(_key(source), "") if exists else ""
        found.append(DerivedCache("eval-ref", folder, _size(folder), source, owner, exists))
    compiled = root / COMPILED
    for folder in _subfolders(compiled):
        ir = _read_json(folder / _IR_FILE).get("ir", "")
        if not ir:
            found.append(DerivedCache("shared", folder, _size(folder), ""))
            continue
        key = _key(ir)
        owner, exists = ir_owner.get(key, (owners.get(key, ""), Path(ir).exists()))
        found.append(DerivedCache("compiled", folder, _size(folder), ir, owner, exists and Path(ir).exists()))
    loose = [p for p in compiled.iterdir() if p.is_file() and not p.name.startswith(".")] if compiled.is_dir() else []
    if loose:
        found.append(DerivedCache("shared", compiled, sum(_file_size(p) for p in loose), ""))
    return found


def owned_by(ref: str, found: list[DerivedCache] | None = None) -> list[DerivedCache]:
    """The caches of `name@variant`, or of every variant of `name`."""
    found = scan() if found is None else found
    if "@" in ref:
        return [c for c in found if c.owner == ref]
    return [c for c in found if c.owner.partition("@")[0] == ref]


def unused(found: list[DerivedCache] | None = None) -> list[DerivedCache]:
    """What `aipc prune` may free: caches nothing can use again."""
    return [c for c in (scan() if found is None else found) if c.unused]


def remove(caches: list[DerivedCache]) -> int:
    """Delete caches (renamed aside first, so a half-deleted folder is never read); the bytes freed."""
    freed = 0
    for c in caches:
        if c.kind == "shared" and c.path.name == COMPILED:  # the old loose blobs, not the folder of every model
            for p in list(c.path.iterdir()):
                if p.is_file() and not p.name.startswith("."):
                    freed += _file_size(p)
                    p.unlink(missing_ok=True)
            continue
        if not c.path.is_dir():
            continue
        trash = c.path.parent / f".trash-{c.path.name}-{os.getpid()}-{time.time_ns()}"
        try:
            os.replace(c.path, trash)
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
        freed += c.size_bytes
    return freed


def _owners() -> dict[str, str]:
    """Resolved paths of every stored and embedded variant (folders, and the GGUF files inside) -> its ref."""
    from aipc.errors import AipcError
    from aipc.store import embedded, store

    owners: dict[str, str] = {}
    try:
        variants = [*store.list_variants(), *embedded.variants()]
    except (OSError, AipcError):
        return owners
    for v in variants:
        owners[_key(str(v.path))] = v.ref
        if v.path.is_dir():
            for f in v.path.glob("*.gguf"):
                owners[_key(str(f))] = v.ref
    return owners


def _subfolders(folder: Path) -> list[Path]:
    """Published cache folders (hidden ones are staging, trash or locks: not caches)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _key(path: str) -> str:
    try:
        return str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError):
        return path


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _file_size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _size(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        total += sum(_file_size(Path(dirpath) / f) for f in files)
    return total
