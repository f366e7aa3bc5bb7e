"""Models made from models: `aipc create NAME -f Modelfile` and `aipc cp SRC DST`.

A created model is `models/NAME/alias/`, a manifest and no weights: its base (FROM), and the defaults, system
prompt, chat template and context cap it sets. `resolve.resolve_all(NAME)` returns the base's sources with those
applied, so `run`, `serve` and the API use it like any model. A copy duplicates every variant of a stored model
under a new name, hard-linking its files (no extra space on one file system), published atomically per variant.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from aipc.errors import ModelNotFoundError, UsageError
from aipc.store import catalog, store
from aipc.store.modelfile import Modelfile, render
from aipc.store.publish import staged
from aipc.store.resolve import _CREATED as CREATED
from aipc.store.resolve import EMBEDDED, canonical_ref, check

__all__ = ["CREATED", "copy", "create", "from_blob", "new_name"]


def new_name(name: str) -> str:
    """A name a new model may take: valid, and not a catalog name or alias (those stay the catalog's). Ollama's
    default tag is the bare name (`mine:latest` is `mine`, and requests find it by either)."""
    store.validate_name(name)
    if name.endswith(":latest") and len(name) > len(":latest"):
        name = name[: -len(":latest")]
    if catalog.canonical(name) is not None:
        raise UsageError(
            f"{name!r} is a catalog name (of {catalog.canonical(name)}): choose another name for your model"
        )
    return name


def create(name: str, mf: Modelfile) -> store.Variant:
    """Publish `name` as `mf` describes; an earlier created model of that name is replaced, weights never are."""
    name = new_name(name)
    if mf.base.partition("@")[0] == name:
        raise UsageError(f"{name!r} cannot be made FROM itself")
    check(mf.base)
    replaced = _replaceable(name)
    _check_no_cycle(name, mf.base)
    if replaced:
        store.remove(f"{name}@{CREATED}")
    manifest = {
        "name": name,
        "variant": CREATED,
        "format": "alias",
        "backend": "",
        "precision": "",
        "device_target": "any",
        "from": mf.base,
        "parameters": mf.parameters,
        "context_length": mf.context_length,
        "system": mf.system,
        "template": mf.template,
        "license": mf.license,
        "messages": mf.messages,
        "modelfile": render(mf),
    }
    with staged(store.variant_dir(name, CREATED)) as tmp:
        if tmp is not None:
            store.write_manifest(tmp, manifest)
    return store.find(f"{name}@{CREATED}")[0]


def from_blob(name: str, blob: Path, mf: Modelfile, source: dict[str, str]) -> store.Variant:
    """A stored model made from an uploaded GGUF file (Ollama's /api/create with `files`): the file checked as
    any GGUF is, hard-linked into a `gguf-<precision>` variant, with the Modelfile's settings (system prompt,
    template, parameters, context cap) in its manifest, which `resolve` applies as it does a created model's.
    An earlier created model of that name is replaced; weights never are."""
    from aipc.store.gguf_header import context_length, precision, read_metadata
    from aipc.store.resolve import checked_gguf

    name = new_name(name)
    replaced = _replaceable(name)
    meta = read_metadata(checked_gguf(blob))
    variant = store.variant_name("gguf", precision(meta))
    if replaced:
        store.remove(f"{name}@{CREATED}")
    manifest = {
        "name": name,
        "variant": variant,
        "format": "gguf",
        "backend": "",
        "precision": precision(meta),
        "device_target": "cpu",
        "architecture": meta.get("general.architecture"),
        "context_length": context_length(meta),
        "source": source,
        "parameters": mf.parameters,
        "system": mf.system,
        "template": mf.template,
        "license": mf.license,
        "messages": mf.messages,
        "num_ctx": mf.context_length,
    }
    with staged(store.variant_dir(name, variant)) as tmp:
        if tmp is not None:
            _link_or_copy(blob, tmp / "model.gguf")
            store.write_manifest(tmp, {k: v for k, v in manifest.items() if v not in (None, {}, [])})
    return store.find(f"{name}@{variant}")[0]


def _replaceable(name: str) -> bool:
    """Whether an earlier created model of `name` is there to be replaced; a stored model with weights under the
    name is an error (weights are never replaced)."""
    existing = _find(name)
    if any(v.variant != CREATED for v in existing):
        raise UsageError(f"{name!r} is a stored model with weights: aipc rm {name} first, or choose another name")
    return bool(existing)


def _check_no_cycle(name: str, base: str) -> None:
    seen = {name}
    current = base.partition("@")[0]
    while current:
        if current in seen:
            raise UsageError(f"{name!r} FROM {base} would make a loop ({' -> '.join([*seen, current])})")
        seen.add(current)
        found = [v for v in _find(current) if v.variant == CREATED]
        current = found[0].manifest.get("from", "").partition("@")[0] if found else ""


def _find(name: str) -> list[store.Variant]:
    try:
        return store.find(name)
    except UsageError:
        return []


def copy(src: str, dst: str) -> list[store.Variant]:
    """Every variant of `src` (or one `src@variant`) as `dst`; the embedded model becomes a stored GGUF variant."""
    from aipc.store import embedded

    dst = new_name(dst)
    if _find(dst):
        raise UsageError(f"{dst!r} already exists in the store: aipc rm {dst} first, or choose another name")
    src = canonical_ref(src)
    name, _, variant = src.partition("@")
    sources = list(_find(src))
    if variant in ("", EMBEDDED):
        sources += embedded.variants(name)
        if variant == EMBEDDED:
            sources = [v for v in sources if v.variant == EMBEDDED]
    if not sources:
        raise ModelNotFoundError(f"no model {src!r} to copy: aipc list shows what the store has")
    made = []
    for v in sources:
        made.append(_copy_variant(v, dst))
    return made


def _copy_variant(v: store.Variant, dst: str) -> store.Variant:
    target_variant = v.variant if v.variant != EMBEDDED else store.variant_name("gguf", v.precision or "gguf")
    with staged(store.variant_dir(dst, target_variant)) as tmp:
        if tmp is not None:
            if v.path.is_file():  # the embedded GGUF, inside its package
                _link_or_copy(v.path, tmp / v.path.name)
                manifest = {**v.manifest, "device_target": "cpu", "embedded": None, "notes": []}
            else:
                for f in sorted(v.path.rglob("*")):
                    rel = f.relative_to(v.path)
                    if f.name == store.MANIFEST or any(part.startswith(".") for part in rel.parts):
                        continue
                    if f.is_dir():
                        (tmp / rel).mkdir(parents=True, exist_ok=True)
                    elif f.is_file():
                        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                        _link_or_copy(f, tmp / rel)
                manifest = dict(v.manifest)
            manifest = {k: val for k, val in manifest.items() if val is not None and k not in ("files", "size_bytes")}
            manifest.update(name=dst, variant=target_variant, copied_from=v.ref)
            base = catalog.CATALOG.get(v.name)
            if base is not None and base.defaults:  # the catalog's curated sampling values go with the copy
                manifest["defaults"] = dict(base.defaults)
            manifest.pop("created", None)
            store.write_manifest(tmp, manifest)
    return store.find(f"{dst}@{target_variant}")[0]


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where both are on one file system (instant, no space: store files are never edited in place),
    else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
