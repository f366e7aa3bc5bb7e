"""Publishing a model folder atomically: build it in a staging folder, then rename it into place.

A killed process leaves only a hidden staging folder that nothing picks up. Two processes building the same
folder take a file lock; where locks are no-ops, the rename still lets exactly one result win.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no POSIX locks here: the rename below still keeps one result
            pass
        yield


def is_published(folder: Path) -> bool:
    return folder.is_dir() and (folder / ".complete").is_file()


@contextlib.contextmanager
def staged(target: Path) -> Iterator[Path | None]:
    """Yield a staging folder to fill, or None when `target` is already published."""
    if is_published(target):
        yield None
        return
    with _lock(target.parent / f".{target.name}.lock"):
        if is_published(target):
            yield None
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".staging-{target.name}-", dir=target.parent))
        try:
            yield tmp
            (tmp / ".complete").write_text("ok\n")
            if target.exists():  # an incomplete leftover from a crash: replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
