"""`aipc convert`, `pull`, `list`, `show`, `rm`: the model store from the command line."""

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
    print(f"{variant.ref}  {_size(variant.size_bytes)}  {variant.path}")
    return 0


def pull_command(args: argparse.Namespace) -> int:
    """Fetch a catalog model for the best local device: a pre-converted repository where one fits, else the
    original checkpoint converted here."""
    entry = catalog.CATALOG.get(args.name)
    if entry is None:
        raise UsageError(
            f"unknown model {args.name!r}: pull takes a catalog name ({', '.join(catalog.names())}); "
            "for a folder, file or hub id use aipc convert"
        )
    if entry.embedded is not None:
        print(f"{entry.name} is embedded in aipc (no download needed)")
        return 0
    device = _best_openvino_device(args.device)
    if device != "npu" and entry.openvino_repo:
        from aipc.store import hub, paths

        with store.disk_full_is_one_line(f"pulling {entry.name}", paths.home()):
            variant = hub.fetch_openvino(entry)
    else:
        from aipc.convert.api import convert

        variant = convert(entry.name, "openvino", "int4", device_target=device, name=entry.name)
    print(f"{variant.ref}  {_size(variant.size_bytes)}  {variant.path}")
    return 0


def _best_openvino_device(wanted: str) -> str:
    if wanted != "auto":
        return wanted.split(".")[0]
    from aipc.backends import registry

    kinds = {d.name.split(".")[0] for d in registry.get("openvino").devices() if not d.emulated}
    return next(k for k in registry.DEVICE_PREFERENCE if k in kinds or k == "cpu")


def list_command(args: argparse.Namespace) -> int:
    everything = store.list_variants(damaged=True)
    variants = [v for v in everything if not v.problem]
    damaged = [v for v in everything if v.problem]
    if args.json:
        print(json.dumps([_summary(v) for v in everything], indent=2))
        return 0
    if not everything:
        print("No models in the store yet: try `aipc convert` or `aipc pull` (the embedded smollm2:135m needs none).")
        return 0
    for v in damaged:
        print(f"damaged: {v.ref}: {v.problem} (remove it with `aipc rm {v.ref}`)")
    if not variants:
        return 0
    rows = [("NAME", "VARIANT", "BACKEND", "PRECISION", "TARGET", "SIZE", "CREATED")]
    for v in variants:
        m = v.manifest
        name = v.name + (" (synthetic)" if v.synthetic else "")
        created = m.get("created", "")
        rows.append((name, v.variant, m.get("backend", ""), v.precision, v.device_target, _size(v.size_bytes), created))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def show_command(args: argparse.Namespace) -> int:
    variants = store.get(args.name, damaged=True)
    if args.json:
        print(
            json.dumps([{**v.manifest, "path": str(v.path), "damaged": v.problem or None} for v in variants], indent=2)
        )
        return 0
    for v in variants:
        if v.problem:
            print(f"{v.ref}\n  DAMAGED     {v.problem}\n  path        {v.path}\n  remove it   aipc rm {v.ref}")
            continue
        m = v.manifest
        source = m.get("source", {})
        src = source.get("repo") or source.get("path") or source.get("name") or source.get("shape") or "?"
        lines = [
            f"{v.ref}",
            f"  source      {source.get('kind', '?')}: {src}",
            f"  source hash {source.get('sha256') or source.get('commit') or '-'}",
            f"  backend     {m.get('backend')} ({m.get('format')})",
            f"  precision   {v.precision} for {v.device_target}",
            f"  recipe      {json.dumps(m.get('recipe', {}))}",
            f"  size        {_size(v.size_bytes)} in {len(m.get('files', []))} files",
            f"  created     {m.get('created', '?')}",
            f"  path        {v.path}",
        ]
        if v.synthetic:
            lines.insert(1, "  SYNTHETIC   random weights for tests and benchmarks: not a real model")
        for note in m.get("notes", []):
            lines.append(f"  note        {note}")
        tools = ", ".join(f"{k} {val}" for k, val in m.get("tools", {}).items())
        if tools:
            lines.append(f"  tools       {tools}")
        print("\n".join(lines))
    return 0


def rm_command(args: argparse.Namespace) -> int:
    for ref in args.names:
        store.get(ref, damaged=True)  # every name is checked before anything is removed
    for ref in args.names:
        for v in store.remove(ref):
            print(f"removed {v.ref}")
    return 0


def prune_command(args: argparse.Namespace) -> int:
    from aipc.store import prune

    items = prune.prune(dry_run=args.dry_run)
    verb = "would free" if args.dry_run else "freed"
    for item in items:
        print(f"{verb} {_size(item.bytes):>9}  {item.path}  ({item.why})")
    total = sum(i.bytes for i in items)
    print(f"{verb} {_size(total)} in {len(items)} item(s)" if items else "nothing to free: no litter in the store")
    return 0


def _summary(v: store.Variant) -> dict:
    m = v.manifest
    if v.problem:
        return {"name": v.name, "variant": v.variant, "ref": v.ref, "damaged": v.problem, "path": str(v.path)}
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
        "path": str(v.path),
    }


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
