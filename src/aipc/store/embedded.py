"""The models shipped inside Python packages, shown as the store shows its own: `smollm2:135m@embedded`.

They are not in `models/` and cannot be removed, but they run, own derived caches (their GGUF converted to
OpenVINO IR, compiled blobs) and answer `list` and `show` like any stored variant.
"""

from __future__ import annotations

from aipc.errors import ModelNotFoundError
from aipc.store import catalog
from aipc.store.resolve import EMBEDDED, embedded_file
from aipc.store.store import Variant


def variants(name: str | None = None) -> list[Variant]:
    """The embedded models (of catalog name `name`, if given) whose package is installed."""
    found = []
    for entry in catalog.CATALOG.values():
        if entry.embedded is None or (name is not None and entry.name != name):
            continue
        try:
            path = embedded_file(*entry.embedded)
        except ModelNotFoundError:
            continue
        found.append(Variant(entry.name, EMBEDDED, path, _manifest(entry, path)))
    return found


def _manifest(entry: catalog.CatalogEntry, path) -> dict:
    from importlib import metadata

    from aipc.store.gguf_header import context_length, precision, read_metadata

    package = entry.embedded[0].replace("_", "-")
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        version = ""
    meta = read_metadata(path)
    return {
        "name": entry.name,
        "variant": EMBEDDED,
        "format": "gguf",
        "backend": "",
        "precision": precision(meta),
        "device_target": "any",
        "size_bytes": path.stat().st_size,
        "created": "",
        "embedded": True,
        "architecture": meta.get("general.architecture"),
        "context_length": context_length(meta),
        "source": {"kind": "embedded", "package": package, "version": version, "path": str(path)},
        "notes": [f"ships inside the {package} package{f' {version}' if version else ''}; not removable"],
        "files": [{"path": path.name, "size": path.stat().st_size}],
    }
