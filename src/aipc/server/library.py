"""The models a server can run, as requests name them, and the store changes some routes make.

Everything here is blocking (files, the store, the hub): the core calls it in worker threads. No HTTP types:
errors are aipc's own, mapped to statuses in errors.py.

A request's model name goes through the store's validation (`store.parse_ref`: no separators, no `..`) unless
the server was started with --allow-paths; a name that is no catalog or store entry but happens to be a file
or folder in the server's working directory is unknown, not opened. Catalog models that exist only on the hub
are unknown to requests until pulled: a chat never starts a download.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aipc.errors import AipcError, ModelNotFoundError, UsageError
from aipc.store import catalog, store
from aipc.store.resolve import ModelSource, canonical_ref, embedded_file, resolve_all

LATEST = ":latest"  # Ollama's default tag: "phi3:latest" names "phi3" here when no such tag exists


class StoreUnavailableError(AipcError):
    """A route that changes the store was called on a --read-only server."""


class HubUnreachableError(AipcError):
    """The hub that a pull needs cannot be reached."""


def check_name(name: Any, *, allow_paths: bool, pinned: tuple[str, ...] = ()) -> str:
    """The model name a request gave, validated (a `UsageError` naming what is valid otherwise)."""
    if not isinstance(name, str) or not name.strip():
        raise UsageError("model is required: give a model name such as smollm2:135m")
    name = name.strip()
    if name in pinned or (allow_paths and _looks_like_path(name)):
        return name
    try:
        store.parse_ref(name)
    except UsageError as exc:
        if _looks_like_path(name):
            message = f"{exc}; this server does not open model files or folders (start it with --allow-paths)"
            raise UsageError(message) from None
        raise
    alias = canonical_ref(name)
    if alias != name and not _stored(name):
        return alias  # `phi3` is `phi3:mini`: one pool entry, whatever name a client uses
    if name.endswith(LATEST) and not _known(name) and _known(name[: -len(LATEST)]):
        return name[: -len(LATEST)]
    return name


def _looks_like_path(name: str) -> bool:
    return os.sep in name or (os.altsep or os.sep) in name or name.startswith((".", "~")) or name.endswith(".gguf")


def _stored(name: str) -> bool:
    try:
        return bool(store.find(name))
    except UsageError:
        return False


def _known(name: str) -> bool:
    try:
        return catalog.canonical(name) is not None or bool(store.find(name))
    except UsageError:
        return False


def local_sources(name: str, *, allow_paths: bool, pinned: tuple[str, ...] = ()) -> list[ModelSource]:
    """The local sources for a checked name, best first; what is not here is a `ModelNotFoundError`."""
    entry = catalog.CATALOG.get(name)
    stored = "@" in name or _known(name)
    if entry is not None and entry.embedded is None and not store.find(name):
        raise ModelNotFoundError(
            f"model {name!r} is not in the store: pull it first (aipc pull {name}, or POST /api/pull)"
        )
    if not stored and not allow_paths and name not in pinned and Path(name).expanduser().exists():
        raise ModelNotFoundError(_unknown(name))
    try:
        return resolve_all(name)
    except ModelNotFoundError as exc:
        if "@" in name or allow_paths or name in pinned:
            raise  # the operator's own name (aipc serve MODEL): resolve's message lists the catalog
        raise ModelNotFoundError(_unknown(name)) from exc


def _unknown(name: str) -> str:
    names = [m.name for m in runnable()]
    have = f"it can run {', '.join(names)}" if names else "it has no models yet (aipc pull NAME)"
    return f"The model {name!r} does not exist on this server; {have}"


# --- what can run ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Runnable:
    """A model requests may name: an embedded catalog model, a stored model, or one variant of it."""

    name: str
    format: str
    precision: str
    size_bytes: int
    modified: float
    path: Path
    embedded: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    parameter_size: str = ""

    @property
    def digest(self) -> str:
        """A stable identity for clients that compare digests (not a hash of the weights, which is slow)."""
        key = f"{self.name}|{self.path}|{self.size_bytes}|{self.modified}"
        return hashlib.sha256(key.encode()).hexdigest()


def runnable() -> list[Runnable]:
    """Every model this server can run offline: embedded catalog models and stored models (each name, and each
    NAME@VARIANT where a model has several variants or also ships embedded). Hub-only catalog entries are not
    listed (they need a pull first), as Ollama lists only what is local."""
    found: list[Runnable] = []
    embedded_names = set()
    for entry in catalog.CATALOG.values():
        if entry.embedded is None:
            continue
        try:
            path = embedded_file(*entry.embedded)
        except ModelNotFoundError:
            continue  # the package that ships it is not installed
        from aipc.store.gguf_header import precision, read_metadata

        st = path.stat()
        meta = read_metadata(path)
        family, size = meta.get("general.architecture", ""), meta.get("general.size_label", "")
        kind = precision(meta)
        found.append(Runnable(entry.name, "gguf", kind, st.st_size, st.st_mtime, path, True, {}, family, size))
        embedded_names.add(entry.name)
    by_name: dict[str, list[store.Variant]] = {}
    for v in store.list_variants():
        by_name.setdefault(v.name, []).append(v)
    for name, variants in by_name.items():
        variants.sort(key=_rank)
        items = [(v.ref, v) for v in variants] if len(variants) > 1 or name in embedded_names else []
        if name not in embedded_names:
            items.insert(0, (name, variants[0]))
        for shown, v in items:
            modified = (v.path / store.MANIFEST).stat().st_mtime
            family, size = _family(v)
            found.append(
                Runnable(shown, v.format, v.precision, v.size_bytes, modified, v.path, False, v.manifest, family, size)
            )
    return found


def _family(v: store.Variant) -> tuple[str, str]:
    """The architecture and parameter-size label a stored variant's own files give."""
    gguf = next(v.path.glob("*.gguf"), None) if v.format == "gguf" else None
    if gguf is not None:
        from aipc.store.gguf_header import read_metadata

        try:
            meta = read_metadata(gguf)
        except (OSError, UsageError):
            return "", ""
        return str(meta.get("general.architecture", "")), str(meta.get("general.size_label", ""))
    family = _json(v.path / "config.json").get("model_type", "") or v.manifest.get("architecture", "")
    return str(family), ""


def _rank(v: store.Variant) -> int:
    from aipc.store.resolve import _PRECISION_ORDER

    return _PRECISION_ORDER.index(v.precision) if v.precision in _PRECISION_ORDER else len(_PRECISION_ORDER)


def describe(name: str, *, allow_paths: bool, pinned: tuple[str, ...] = ()) -> dict[str, Any]:
    """What Ollama's /api/show tells, for the best local source of `name`, without loading it."""
    source = local_sources(name, allow_paths=allow_paths, pinned=pinned)[0]
    facts: dict[str, Any] = {
        "name": name,
        "ref": source.ref,
        "format": source.format,
        "precision": source.precision,
        "defaults": dict(source.defaults),
        "path": source.path,
        "modified": Path(source.path).stat().st_mtime,
        "template": "",
        "license": "",
        "family": "",
        "parameter_size": "",
        "context_length": None,
        "model_info": {},
    }
    folder = source.path if source.path.is_dir() else source.path.parent
    manifest = _manifest(folder)
    if source.format == "gguf":
        from aipc.store.gguf_header import read_metadata

        meta = read_metadata(source.path)
        arch = meta.get("general.architecture", "")
        facts |= {
            "template": meta.get("tokenizer.chat_template", "") or "",
            "license": meta.get("general.license", "") or "",
            "family": arch,
            "parameter_size": meta.get("general.size_label", "") or "",
            "context_length": meta.get(f"{arch}.context_length"),
        }
        facts["model_info"] = {
            k: v for k, v in meta.items() if isinstance(v, (int, float, str)) and not k.startswith("tokenizer.")
        }
    else:
        from aipc.backends.base import folder_chat_template

        config = _json(folder / "config.json")
        facts |= {
            "template": folder_chat_template(folder) or "",
            "family": config.get("model_type", "") or manifest.get("architecture", ""),
            "context_length": manifest.get("context_length") or config.get("max_position_embeddings"),
        }
        facts["model_info"] = {
            f"general.{k}": v for k, v in config.items() if isinstance(v, (int, float, str)) and not k.startswith("_")
        }
    if source.template:  # a created model's own template, system prompt and context cap
        facts["template"] = source.template
    facts["system"] = source.system or ""
    facts["num_ctx"] = source.context_length
    if source.context_length:
        facts["context_length"] = min(source.context_length, facts["context_length"] or source.context_length)
    facts["manifest"] = manifest
    return facts


def _manifest(folder: Path) -> dict[str, Any]:
    return _json(folder / store.MANIFEST)


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# --- changing the store ------------------------------------------------------------------------------------
def check_deletable(name: str) -> None:
    """Raise what `delete` would: an embedded model cannot be removed; an unknown one is not found."""
    entry = catalog.CATALOG.get(name)
    if entry is not None and entry.embedded is not None and not store.find(name):
        raise UsageError(f"{name} is embedded in aipc (it ships in a Python package) and cannot be deleted")
    store.get(name)


def delete(name: str) -> list[str]:
    """Remove a stored model (every variant) or one NAME@VARIANT with the caches derived from it, as `aipc rm`
    does; embedded models cannot be removed."""
    from aipc.store import caches

    check_deletable(name)
    mine = caches.owned_by(name)
    removed = [v.ref for v in store.remove(name)]
    caches.remove(mine)
    return removed


def copy(source: str, destination: str) -> list[str]:
    """Copy a model under a new name, as `aipc cp` does (`store.create.copy`: files hard-linked where the disk
    allows; the embedded model becomes a stored GGUF variant). The destination must be new."""
    from aipc.store import create

    return [v.ref for v in create.copy(source, destination)]


def create(name: str, mf: Any) -> str:
    """Make `name` from a base model as `aipc create` does (`store.create.create`; `mf` a checked Modelfile):
    the name it is stored under (Ollama's `:latest` is the bare name)."""
    from aipc.store import create as creating

    return creating.create(name, mf).name


def create_from_blob(name: str, filename: str, digest: str, mf: Any) -> str:
    """Make `name` from an uploaded GGUF file (`store.create.from_blob`): the name it is stored under."""
    from aipc.store import blobs
    from aipc.store import create as creating

    blob = blobs.path(digest)
    if not blob.is_file():
        raise UsageError(f"files.{filename}: no blob {digest}: upload it first with POST /api/blobs/{digest}")
    source = {"kind": "upload", "file": filename, "digest": digest}
    made = creating.from_blob(name, blob, mf, source).name
    blob.unlink(missing_ok=True)  # the model holds the file now (a hard link, or its own copy)
    return made


def pull(name: str, device: str = "auto") -> Iterator[dict[str, Any]]:
    """Fetch a catalog model into the store, as `aipc pull` does, yielding Ollama-style progress objects:
    pulling (with completed/total bytes while files arrive), converting (when it must be converted here),
    success. The hub being unreachable is a `HubUnreachableError` before anything is written."""
    from aipc.store import hub

    entry = catalog.lookup(name)
    if entry is None:
        raise ModelNotFoundError(
            f"unknown model {name!r}: pull takes a catalog name ({', '.join(catalog.names())}); "
            f"convert other models with aipc convert"
        )
    if entry.embedded is not None:
        yield {"status": "success"}  # shipped inside aipc: nothing to fetch
        return
    wanted = device.split(",")[0].split(".")[0]
    if not hub.reachable():
        raise HubUnreachableError(
            f"the hub ({hub.endpoint()}) cannot be reached to pull {name!r}: on a connected machine run "
            f"`aipc pull {name}` and copy its store folder ({store.model_dir(name)}) here"
        )
    yield {"status": "pulling manifest"}
    if wanted != "npu" and entry.openvino_repo:
        yield from _download(entry)
    else:
        yield {"status": "converting"}
        from aipc.convert.api import convert

        convert(entry.name, "openvino", "int4", device_target=wanted if wanted != "auto" else "cpu", name=entry.name)
    yield {"status": "success"}


def _download(entry: catalog.CatalogEntry) -> Iterator[dict[str, Any]]:
    """The pre-converted repository, fetched in a thread; progress from the bytes in its staging folder."""
    from aipc.store import hub

    repo = entry.openvino_repo
    total = _repo_size(repo)
    digest = f"sha256:{hashlib.sha256(repo.encode()).hexdigest()}"
    target = store.variant_dir(entry.name, "openvino-int4")
    outcome: list[BaseException | None] = []

    def fetch() -> None:
        try:
            hub.fetch_openvino(entry)
        except BaseException as exc:  # reported to the caller below
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=fetch, name="aipc-pull", daemon=True)
    worker.start()
    status = f"pulling {repo}"
    while worker.is_alive():
        worker.join(0.25)
        done = sum(p.stat().st_size for s in target.parent.glob(f".staging-{target.name}-*") for p in _files(s))
        yield {"status": status, "digest": digest, "total": total, "completed": min(done, total or done)}
    if outcome and outcome[0] is not None:
        raise outcome[0]
    yield {"status": status, "digest": digest, "total": total, "completed": total}
    yield {"status": "writing manifest"}


def _files(folder: Path) -> Iterator[Path]:
    try:
        yield from (p for p in folder.rglob("*") if p.is_file())
    except OSError:  # the folder was renamed into place while we looked
        return


def _repo_size(repo: str) -> int:
    try:
        from huggingface_hub import HfApi

        from aipc.store import hub

        info = HfApi(endpoint=hub.endpoint()).model_info(repo, files_metadata=True)
        return sum(s.size or 0 for s in info.siblings or [] if _wanted(s.rfilename))
    except Exception:  # sizes are only for the progress display
        return 0


def _wanted(filename: str) -> bool:
    from fnmatch import fnmatch

    from aipc.store.hub import ALLOWED_FILES

    return any(fnmatch(filename, pattern) for pattern in ALLOWED_FILES)
