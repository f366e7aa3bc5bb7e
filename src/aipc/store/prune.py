"""Reclaiming what killed or crashed writers left in the store: staging folders, scratch folders, removals
cut short, unused lock files, uploads no model was made from. `aipc prune` shows and frees them; every store
write reclaims them quietly.

"Stale" is decided by locks, not by age: a staging folder is stale when its target's lock file can be taken
(the process that was building it is gone), a scratch folder in `tmp/` when its own lock file can be taken. An
upload is the exception: an Ollama client's blob (or partial one) untouched for an hour. Nothing here follows
a symbolic link: a link is removed as a link, never its target.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from aipc.store import paths
from aipc.store.publish import STAGING_PREFIX, hold, lock_path, staging_target

log = logging.getLogger("aipc.store")


@dataclass(frozen=True)
class StaleItem:
    """Something `prune` would remove: where, how many bytes it holds, and why it is litter."""

    path: Path
    bytes: int
    why: str


def _places(home: Path) -> list[Path]:
    """The folders writers stage, scratch or remove in (never through a link)."""
    places = [home / "models", home / "cache", home / "downloads", home / "tmp"]
    for parent in (home / "models", home / "cache"):
        places += [p for p in _entries(parent) if p.is_dir() and not p.is_symlink()]
    return [p for p in places if p.is_dir() and not p.is_symlink()]


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(folder))
    except OSError:
        return []


def stale_items() -> list[StaleItem]:
    """What `prune` would remove now, with sizes. Safe to call any time: it takes no lock for longer than a
    check, and removes nothing."""
    return [item for item, _ in _candidates(paths.home())]


def prune(*, dry_run: bool = False, quiet: bool = False) -> list[StaleItem]:
    """Remove stale items (unless `dry_run`) and return them. Each is removed while holding its lock, so a
    writer starting at the same moment waits, then makes its own fresh folder. `quiet` (a store write's own
    reclaiming) skips what it cannot remove instead of raising."""
    removed = []
    for item, lock in _candidates(paths.home()):
        if dry_run:
            removed.append(item)
            continue
        try:
            with hold(lock, wait=False) if lock is not None else contextlib.nullcontext(True) as mine:
                if mine and _remove(item.path, lock):
                    removed.append(item)
        except OSError:
            if not quiet:
                raise
    if removed and not dry_run:
        log.info("reclaimed %d bytes left by killed or crashed writers", sum(i.bytes for i in removed))
    return removed


def _candidates(home: Path) -> list[tuple[StaleItem, Path | None]]:
    found: list[tuple[StaleItem, Path | None]] = []
    for place in _places(home):
        scratch_place = place == home / "tmp"
        for entry in _entries(place):
            name = entry.name
            if name.startswith(STAGING_PREFIX):
                target = staging_target(name)
                lock = place / f".{target}.lock" if target else None
                if lock is None or _free(lock):
                    found.append((StaleItem(entry, _size(entry), "a staging folder a killed writer left"), lock))
            elif name.startswith(".trash-"):
                found.append((StaleItem(entry, _size(entry), "a removal that was cut short"), None))
            elif scratch_place and not name.startswith(".") and entry.is_dir() and not entry.is_symlink():
                if _free(lock_path(entry)):
                    why = "a scratch folder a killed conversion left"
                    found.append((StaleItem(entry, _size(entry), why), lock_path(entry)))
            elif name.startswith(".") and name.endswith(".lock") and entry.is_file() and not entry.is_symlink():
                owner = place / name[1 : -len(".lock")]
                if not os.path.lexists(owner) and not _staging_for(place, owner.name) and _free(entry):
                    found.append((StaleItem(entry, _size(entry), "a lock file nothing uses"), entry))
    return found + [(item, None) for item in _unused_uploads(home / "blobs")]


def _unused_uploads(folder: Path) -> list[StaleItem]:
    from aipc.store.blobs import UNUSED_AFTER_S

    if not folder.is_dir() or folder.is_symlink():
        return []
    old = time.time() - UNUSED_AFTER_S
    return [
        StaleItem(entry, entry.lstat().st_size, "an upload no model was made from")
        for entry in _entries(folder)
        if entry.is_file() and not entry.is_symlink() and entry.lstat().st_mtime < old
    ]


def _staging_for(place: Path, target: str) -> bool:
    return any(staging_target(p.name) == target for p in _entries(place) if p.name.startswith(STAGING_PREFIX))


def _free(lock: Path) -> bool:
    """Whether nobody holds `lock` (a missing lock file is free: nobody can hold it)."""
    if not lock.exists():
        return True
    with hold(lock, wait=False) as mine:
        return mine


def _remove(path: Path, lock: Path | None) -> bool:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        if not path.name.startswith(".trash-"):  # renamed first (atomic): nothing half-removed keeps its name
            trash = path.parent / f".trash-{path.name.lstrip('.')}-{os.getpid()}-{time.time_ns()}"
            os.replace(path, trash)
            path = trash
        shutil.rmtree(path)
    else:
        return False
    if lock is not None and lock.exists():  # held by us now: remove it too if it guards nothing any more
        owner = lock.parent / lock.name[1 : -len(".lock")]
        if not os.path.lexists(owner) and not _staging_for(lock.parent, owner.name):
            lock.unlink(missing_ok=True)
    return True


def _size(path: Path) -> int:
    """Bytes under `path`, links counted as links (never followed)."""
    try:
        if path.is_symlink() or not path.is_dir():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for root, _dirs, files in os.walk(path, followlinks=False):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total
