"""Fetching catalog models from the Hugging Face hub, when it can be reached, or importing a copied folder.

Only pre-converted OpenVINO repositories are fetched here (no code, no pickle: .xml/.bin/.json files only);
converting original checkpoints is the converter's job. Offline, the error names the repository to download
on a connected machine and `aipc pull NAME --from FOLDER` imports the copied folder (`import_openvino`).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from aipc import progress
from aipc.errors import BackendUnavailableError, ModelNotFoundError, UsageError
from aipc.store import catalog
from aipc.store.publish import staged

ALLOWED_FILES = ["*.xml", "*.bin", "*.json", "*.txt", "*.md"]


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def download(repo: str, *, revision: str, local_dir: Path, allow_patterns: list[str]) -> None:
    """`snapshot_download`, its progress shown as aipc's own bar (huggingface_hub's bars only with --verbose)."""
    from huggingface_hub import snapshot_download

    if progress.verbose():
        snapshot_download(
            repo, revision=revision, local_dir=local_dir, allow_patterns=allow_patterns, endpoint=endpoint()
        )
        return
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    with progress.step(f"downloading {repo}", unit="B", keep=True) as step:
        snapshot_download(
            repo,
            revision=revision,
            local_dir=local_dir,
            allow_patterns=allow_patterns,
            endpoint=endpoint(),
            tqdm_class=_bar_for(step),
        )


def _bar_for(step: progress.Step) -> type:
    """A tqdm stand-in that huggingface_hub drives: its byte counter feeds `step`, nothing is drawn."""

    class Bar:
        def __init__(self, iterable=None, *args, total=None, initial=0, unit="it", **kwargs) -> None:
            self._iterable = iterable
            self._bytes = unit == "B"
            self._total = total or 0
            self.n = initial
            if self._bytes:
                progress.advance(step, initial, total=self._total or None)

        @property
        def total(self) -> float:
            return self._total

        @total.setter
        def total(self, value: float) -> None:  # huggingface_hub grows the total as it learns file sizes
            self._total = value
            if self._bytes:
                progress.advance(step, 0, total=value or None)

        def __iter__(self):
            return iter(self._iterable if self._iterable is not None else ())

        def update(self, n: float = 1) -> None:
            self.n += n or 0
            if self._bytes:
                progress.advance(step, n or 0)

        def refresh(self, *args, **kwargs) -> None: ...

        def set_description(self, *args, **kwargs) -> None: ...

        def close(self) -> None: ...

        # tqdm's thread_map shares a lock between its workers through these.
        @classmethod
        def get_lock(cls):
            import threading

            return threading.RLock()

        @classmethod
        def set_lock(cls, lock) -> None:
            cls._lock = lock

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None: ...

    return Bar


def reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers at all; offline machines answer no quickly or time out."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        urllib.request.urlopen(
            urllib.request.Request(endpoint() + "/api/models?limit=1", method="HEAD"), timeout=timeout
        ).close()
        return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False


def fetch_openvino(entry: catalog.CatalogEntry):
    """Download `entry`'s pre-converted OpenVINO int4 repository into the store, atomically; the stored variant."""
    from aipc.store import store

    repo = entry.openvino_repo
    target = store.variant_dir(entry.name, VARIANT)
    if repo is None or not reachable():
        raise ModelNotFoundError(offline_message(entry, f"{entry.name!r} is not in the store ({target.parent}) and"))
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise BackendUnavailableError(
            "downloading from the hub needs huggingface-hub: pip install 'aipc[hub]'"
        ) from None
    commit = HfApi(endpoint=endpoint()).model_info(repo).sha
    with staged(target) as tmp:
        if tmp is not None:
            download(repo, revision=commit, local_dir=tmp, allow_patterns=ALLOWED_FILES)
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
            store.write_manifest(
                tmp, _manifest(entry, {"kind": "hub", "repo": repo, "commit": commit, "endpoint": endpoint()})
            )
    return store.find(f"{entry.name}@{VARIANT}")[0]


VARIANT = "openvino-int4"


def offline_message(entry: catalog.CatalogEntry, what: str = "") -> str:
    """What to do without the hub, on one line: the repository to fetch elsewhere and how to import it here."""
    repo = entry.openvino_repo or entry.hub_id or "?"
    folder = repo.split("/")[-1]
    lead = f"{what} " if what else ""
    return (
        f"{lead}the hub ({endpoint()}) cannot be reached: on a connected machine run "
        f"`hf download {repo} --local-dir {folder}` (pip install huggingface_hub), copy {folder} here, then "
        f"`aipc pull {entry.name} --from {folder}`"
    )


def import_openvino(entry: catalog.CatalogEntry, folder: Path):
    """Publish a copied, pre-converted OpenVINO folder as `NAME@openvino-int4`, as `fetch_openvino` would have:
    only the files a download would take (no code, no pickle), hard-linked where the disk allows."""
    from aipc.store import store

    folder = Path(folder).expanduser()
    if not (folder / "openvino_model.xml").is_file():
        raise UsageError(
            f"{folder} is not an OpenVINO model folder (no openvino_model.xml): --from takes the folder that "
            f"`hf download {entry.openvino_repo or '<repo>'} --local-dir FOLDER` wrote"
        )
    for needed in ("openvino_tokenizer.xml", "openvino_detokenizer.xml"):
        if not (folder / needed).is_file():
            raise UsageError(f"{folder} has no {needed}: was the download complete?")
    target = store.variant_dir(entry.name, VARIANT)
    with staged(target) as tmp:
        if tmp is not None:
            allowed = [p for p in sorted(folder.iterdir()) if p.is_file()]
            files = [p for p in allowed if any(fnmatch.fnmatch(p.name, pat) for pat in ALLOWED_FILES)]
            with progress.step(f"importing {folder.name}", total=len(files), keep=True) as step:
                for p in files:
                    link_or_copy(p, tmp / p.name)
                    progress.advance(step)
            source = {"kind": "folder", "path": str(folder.resolve()), "repo": entry.openvino_repo or ""}
            store.write_manifest(tmp, _manifest(entry, source))
    return store.find(f"{entry.name}@{VARIANT}")[0]


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link when both are on one file system (no extra space, instant), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _manifest(entry: catalog.CatalogEntry, source: dict) -> dict:
    repo = entry.openvino_repo or ""
    return {
        "name": entry.name,
        "variant": VARIANT,
        "format": "openvino-ir",
        "backend": "openvino",
        "precision": "int4",
        "device_target": "cpu",
        "recipe": {"pre-converted": repo},
        "notes": [f"pre-converted by {repo.split('/')[0]}"] if repo else [],
        "source": source,
    }
