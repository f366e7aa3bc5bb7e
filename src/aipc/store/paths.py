"""Where aipc keeps models and caches: `$AIPC_HOME`, else the user's cache folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from aipc.errors import UsageError


def home() -> Path:
    """The store's root. `AIPC_HOME` overrides; otherwise `$XDG_CACHE_HOME/aipc` or `~/.cache/aipc`."""
    explicit = os.environ.get("AIPC_HOME")
    if explicit:
        path = Path(explicit).expanduser()
        if path.exists() and not path.is_dir():
            raise UsageError(f"AIPC_HOME={explicit} is a file, not a folder: point AIPC_HOME at a folder")
        return path
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "aipc"


def models_dir() -> Path:
    return home() / "models"


def cache_dir(kind: str) -> Path:
    """A folder for a runtime's own cache (compiled blobs), created on demand."""
    return make_dir(home() / "cache" / kind)


def make_dir(path: Path) -> Path:
    """`mkdir -p path`, or one line saying why the store cannot be written (not a traceback)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    return path


def cannot_write(path: Path, exc: OSError) -> Exception:
    """The one-line error for a store that cannot be written; other errors (a full disk) pass through."""
    if not isinstance(exc, (PermissionError, FileExistsError, NotADirectoryError)) and exc.errno != errno.EROFS:
        return exc
    where = "AIPC_HOME" if os.environ.get("AIPC_HOME") else "the store"
    return UsageError(
        f"cannot write {path}: {exc.strerror or exc} ({where} is {home()}: it must be a folder you can write; "
        "set AIPC_HOME to one)"
    )
