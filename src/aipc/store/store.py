"""The local model store: `models/<name>/<variant>/`, each variant a runnable folder with a manifest.

A variant is one backend format at one precision for one device target (`openvino-int4`, `openvino-int4-npu`,
`onnx-int4`, `onnx-fp16-cuda`, `gguf-q4_k_m`). Variants are published atomically (`publish.staged`), so a
folder without its `.complete` marker is never listed or run, and removal renames before deleting.

Symbolic links inside the store are never followed: a linked model or variant folder, or a variant holding a
link out of the store, is listed as damaged and never run, and `remove` deletes the link, never its target. A
published variant whose manifest is missing or corrupt is listed as damaged too, so `rm` can remove it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aipc.errors import ConversionError, ModelNotFoundError, UsageError
from aipc.store import paths
from aipc.store.publish import is_published
from aipc.units import size_text

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
    problem: str = ""  # why it is damaged (never run, only listed and removable); "" when healthy

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.variant}" if self.variant else self.name

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
    mdir = model_dir(name)
    if mdir.is_symlink():
        raise UsageError(
            f"{mdir} is a symbolic link: aipc does not write through links out of its store "
            f"(remove the link with `aipc rm {name}`)"
        )
    return mdir / variant


def _link_problem(path: Path) -> str:
    return f"a symbolic link to {os.readlink(path)}: aipc does not follow links in its store"


def _inspect(mdir: Path, vdir: Path) -> Variant | None:
    """The variant in `vdir`, damaged or not; None for what is not a published variant at all."""
    fallback = mdir.name.replace("--", ":")
    if vdir.is_symlink():
        return Variant(fallback, vdir.name, vdir, {}, _link_problem(vdir))
    if not is_published(vdir):
        return None
    try:
        manifest = json.loads((vdir / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Variant(fallback, vdir.name, vdir, {}, f"its manifest ({MANIFEST}) is missing")
    except (OSError, ValueError) as exc:
        return Variant(fallback, vdir.name, vdir, {}, f"its manifest ({MANIFEST}) is not readable JSON: {exc}")
    if not isinstance(manifest, dict):
        return Variant(fallback, vdir.name, vdir, {}, f"its manifest ({MANIFEST}) is not a JSON object")
    name = manifest.get("name")
    name = name if isinstance(name, str) and _NAME.match(name) else fallback
    outside = _link_out(vdir)
    if outside:
        return Variant(name, vdir.name, vdir, manifest, f"it holds a link out of its folder: {outside}")
    return Variant(name, vdir.name, vdir, manifest)


def _link_out(folder: Path) -> str:
    """The first file in `folder` that is a link leading outside it ("" when none): a runtime would read it."""
    home = folder.resolve()
    for root, dirs, files in os.walk(folder, followlinks=False):
        for entry in dirs + files:
            path = Path(root) / entry
            if path.is_symlink() and not path.resolve().is_relative_to(home):
                return f"{path.relative_to(folder)} -> {os.readlink(path)}"
    return ""


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(folder) if not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def list_variants(name: str | None = None, *, damaged: bool = False) -> list[Variant]:
    """Every published variant (of `name`, if given), sorted by model then variant; with `damaged`, also
    those that must not run (a link, a corrupt manifest), each with its `problem`."""
    dirs = [model_dir(name)] if name is not None else _entries(paths.models_dir())
    found = []
    for mdir in dirs:
        if mdir.is_symlink():  # never followed: its "variants" live outside the store
            found.append(Variant(mdir.name.replace("--", ":"), "", mdir, {}, _link_problem(mdir)))
            continue
        if not mdir.is_dir():
            continue
        for vdir in _entries(mdir):
            v = _inspect(mdir, vdir)
            if v is not None:
                found.append(v)
    return [v for v in found if damaged or not v.problem]


def find(ref: str, *, damaged: bool = False) -> list[Variant]:
    name, variant = parse_ref(ref)
    variants = list_variants(name, damaged=damaged)
    return [v for v in variants if variant is None or v.variant == variant]


def get(ref: str, *, damaged: bool = False) -> list[Variant]:
    """Like `find`, but an unknown reference is an error listing what the store has."""
    variants = find(ref, damaged=damaged)
    if not variants:
        have = sorted({v.name for v in list_variants()})
        listing = ", ".join(have) if have else "nothing yet"
        hint = ""
        if not damaged and find(ref, damaged=True):
            hint = f" ({ref} is damaged: see `aipc list`, and remove it with `aipc rm {ref}`)"
        raise ModelNotFoundError(f"no model {ref!r} in the store ({paths.models_dir()}){hint}; it has: {listing}")
    return variants


def remove(ref: str) -> list[Variant]:
    """Delete a model (every variant, damaged ones too) or one `name@variant`; nothing else is touched. A
    link is removed as a link: what it points to is never deleted."""
    variants = get(ref, damaged=True)
    for v in variants:
        if v.path.is_symlink():
            v.path.unlink()
            continue
        trash = v.path.parent / f".trash-{v.path.name}-{os.getpid()}-{time.time_ns()}"
        os.replace(v.path, trash)  # atomic: from here on nothing lists or runs it
        shutil.rmtree(trash, ignore_errors=True)  # rmtree removes links inside as links
    mdir = model_dir(variants[0].name)
    if not mdir.is_symlink() and mdir.is_dir() and not _entries(mdir):
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


def check_free_space_for(needs: dict[Path, int]) -> None:
    """`check_free_space` for several folders at once, adding up what lands on the same disk."""
    by_disk: dict[int, list[Any]] = {}
    for folder, needed in needs.items():
        paths.make_dir(folder)
        by_disk.setdefault(os.stat(folder).st_dev, [folder, 0])[1] += needed
    for folder, needed in by_disk.values():
        check_free_space(folder, needed)


@contextlib.contextmanager
def disk_full_is_one_line(doing: str, folder: Path) -> Iterator[None]:
    """A full disk (ENOSPC, here or in a tool's output) anywhere inside becomes one line saying so."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise _disk_full(doing, folder) from None
    except ConversionError as exc:  # a tool that died of it: its last line says so
        if "No space left on device" not in str(exc) and "Errno 28" not in str(exc):
            raise
        raise _disk_full(doing, folder) from None


def _disk_full(doing: str, folder: Path) -> ConversionError:
    try:
        free = size_text(shutil.disk_usage(folder).free)
        st = os.statvfs(folder) if hasattr(os, "statvfs") else None
        if st is not None and st.f_files and st.f_favail == 0:
            free += " but no room for another file (no inodes left)"
    except OSError:
        free = "no space"
    return ConversionError(
        f"the disk filled up while {doing}: {free} free in {folder} (free some space, or set AIPC_HOME to a "
        "larger disk); nothing was added to the store"
    )


def check_free_space(folder: Path, needed_bytes: int) -> None:
    """Refuse before starting when the disk cannot hold the result (with a 10% margin)."""
    paths.make_dir(folder)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes * 1.1:
        raise UsageError(
            f"not enough free disk space in {folder}: about {size_text(needed_bytes)} needed, "
            f"{size_text(free)} free (set AIPC_HOME to a larger disk)"
        )
