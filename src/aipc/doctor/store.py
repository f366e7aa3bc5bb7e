"""The compiled-model cache in the store (`$AIPC_HOME/cache/openvino`): OpenVINO writes a blob per model and
device there, so the second load skips compiling (minutes on the NPU). Nothing here is fatal: without the
cache every load compiles again, and a stale or broken blob is recompiled."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from aipc.doctor.check import OK, WARN, Check

AREA = "cache"
LOW_SPACE = 2 << 30  # a Phi-3-mini NPU blob alone is over a gigabyte


def checks() -> list[Check]:
    from aipc.store import paths

    folder = paths.home() / "cache" / "openvino"
    name = "compiled-model cache"
    if not folder.is_dir():
        parent = next((p for p in folder.parents if p.is_dir()), None)
        if parent is not None and os.access(parent, os.W_OK):
            return [Check(AREA, name, OK, f"{folder}: not created yet ({parent} is writable)")]
        return [_unwritable(name, folder)]
    files = [p for p in folder.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    if not _writable(folder):
        return [_unwritable(name, folder)]
    free = shutil.disk_usage(folder).free
    out = [Check(AREA, name, OK, f"{folder}: {_size(size)} in {len(files)} files, writable, {_size(free)} free")]
    empty = [p for p in files if p.stat().st_size == 0]
    if empty:
        out.append(
            Check(
                AREA,
                "empty cache files",
                WARN,
                f"{len(empty)} empty files (an interrupted compile); OpenVINO compiles those models again",
                f"remove them: find {folder} -type f -empty -delete",
            )
        )
    if free < LOW_SPACE:
        out.append(Check(AREA, "cache disk space", WARN, f"only {_size(free)} free", "free space, or move AIPC_HOME"))
    return out


def _writable(folder: Path) -> bool:
    """Really create (and remove) a file: permission bits do not tell about read-only mounts or quotas."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".aipc-doctor-"):
            return True
    except OSError:
        return False


def _unwritable(name: str, folder: Path) -> Check:
    return Check(
        AREA,
        name,
        WARN,
        f"{folder} is not writable: every load compiles the model again (slow, above all on the NPU)",
        f"make it writable (sudo chown -R $USER {folder}), or point AIPC_HOME at a writable folder",
    )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
