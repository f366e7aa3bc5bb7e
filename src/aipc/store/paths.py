"""Where aipc keeps models and caches: `$AIPC_HOME`, else the user's cache folder."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The store's root. `AIPC_HOME` overrides; otherwise `$XDG_CACHE_HOME/aipc` or `~/.cache/aipc`."""
    explicit = os.environ.get("AIPC_HOME")
    if explicit:
        return Path(explicit).expanduser()
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "aipc"


def models_dir() -> Path:
    return home() / "models"


def cache_dir(kind: str) -> Path:
    """A folder for a runtime's own cache (compiled blobs), created on demand."""
    path = home() / "cache" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
