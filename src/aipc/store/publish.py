"""Publishing a model folder atomically: build it in a staging folder, then rename it into place.

A killed process leaves only a hidden staging folder that nothing picks up, and `store.prune` reclaims it at
the next store write: a staging folder is alive exactly while its target's lock file is held (by the process
building it), and a scratch folder (`scratch`) while its own lock file is. Two processes building the same
folder take the lock in turn; where locks are no-ops, the rename still lets exactly one result win.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from aipc.store.paths import cannot_write, make_dir

STAGING_PREFIX = ".staging-"
_SUFFIX_LEN = 8  # tempfile's random part: ".staging-<target>-XXXXXXXX"


def lock_path(folder: Path) -> Path:
    """The lock file that says `folder` (a publish target or a scratch folder) has a live owner."""
    return folder.parent / f".{folder.name}.lock"


def staging_target(name: str) -> str | None:
    """The target a staging folder's name was made for ("" when it is not a staging folder)."""
    if not name.startswith(STAGING_PREFIX) or len(name) <= len(STAGING_PREFIX) + _SUFFIX_LEN + 1:
        return None
    return name[len(STAGING_PREFIX) : -(_SUFFIX_LEN + 1)]


def _flock(fh: IO[bytes], *, wait: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # no POSIX locks here: the rename in `staged` still keeps one result
        return True
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # a filesystem without locks
        return True
    return True


def _same_file(fh: IO[bytes], path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
    except OSError:
        return False


@contextlib.contextmanager
def hold(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock file `path` (created if missing); yields False when `wait` is false and it is taken.

    `prune` deletes lock files nobody holds, so after taking one this checks it is still the file at `path`
    (else someone deleted it meanwhile, and the lock would guard nothing) and takes the new one instead."""
    make_dir(path.parent)
    while True:
        try:
            fh = open(path, "a+b")  # noqa: SIM115 (closed by the with below)
        except OSError as exc:
            raise cannot_write(path, exc) from None
        with fh:
            if not _flock(fh, wait=wait):
                yield False
                return
            if _same_file(fh, path):
                yield True
                return


def is_published(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and (folder / ".complete").is_file()


@contextlib.contextmanager
def staged(target: Path) -> Iterator[Path | None]:
    """Yield a staging folder to fill, or None when `target` is already published."""
    if is_published(target):
        yield None
        return
    with hold(lock_path(target)):
        if is_published(target):
            yield None
            return
        _reclaim_litter(target)
        tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}-", dir=target.parent))
        try:
            yield tmp
            (tmp / ".complete").write_text("ok\n")
            if target.is_symlink():
                target.unlink()
            elif target.exists():  # an incomplete leftover from a crash: replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            # Done, either way: the lock file goes too (a writer waiting on it notices, and takes a new one).
            lock_path(target).unlink(missing_ok=True)


@contextlib.contextmanager
def scratch(parent: Path, prefix: str) -> Iterator[Path]:
    """A scratch folder `parent/<prefix>-XXXXXXXX`, removed on exit; its lock file is held all along, so a
    crash leaves a folder `prune` can tell from one in use. The lock is taken before the folder exists."""
    make_dir(parent)
    while True:
        folder = parent / f"{prefix}-{secrets.token_hex(4)}"
        if not folder.exists() and not lock_path(folder).exists():
            break
    with hold(lock_path(folder)):
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            lock_path(folder).unlink(missing_ok=True)


def _reclaim_litter(target: Path) -> None:
    """At a store write, reclaim what killed or crashed writers left (never what a live process holds)."""
    from aipc.store import paths, prune

    try:
        inside = target.resolve().is_relative_to(paths.home().resolve())
    except OSError:
        return
    if inside:
        prune.prune(quiet=True)
