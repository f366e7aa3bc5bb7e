"""Fetching catalog models from the Hugging Face hub, when it can be reached.

Only pre-converted OpenVINO repositories are fetched here (no code, no pickle: .xml/.bin/.json files only);
converting original checkpoints is the converter's job.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request

from aipc.errors import BackendUnavailableError, ModelNotFoundError
from aipc.store import catalog
from aipc.store.publish import staged

ALLOWED_FILES = ["*.xml", "*.bin", "*.json", "*.txt", "*.md"]


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def quiet_progress() -> None:
    """huggingface_hub's progress bars belong on a terminal, not in pipes or logs."""
    import sys

    if not sys.stderr.isatty():
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


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
    target = store.variant_dir(entry.name, "openvino-int4")
    if repo is None or not reachable():
        raise ModelNotFoundError(
            f"model {entry.name!r} is not in the store ({target.parent}) and the hub ({endpoint()}) cannot be "
            f"reached: pass a local path (a .gguf file or an OpenVINO IR folder), or pull it on a connected "
            f"machine and copy the store folder here"
        )
    try:
        from huggingface_hub import HfApi, snapshot_download
    except ImportError:
        raise BackendUnavailableError(
            "downloading from the hub needs huggingface-hub: pip install 'aipc[hub]'"
        ) from None
    quiet_progress()
    commit = HfApi(endpoint=endpoint()).model_info(repo).sha
    with staged(target) as tmp:
        if tmp is not None:
            snapshot_download(repo, revision=commit, local_dir=tmp, allow_patterns=ALLOWED_FILES, endpoint=endpoint())
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
            store.write_manifest(
                tmp,
                {
                    "name": entry.name,
                    "variant": "openvino-int4",
                    "format": "openvino-ir",
                    "backend": "openvino",
                    "precision": "int4",
                    "device_target": "cpu",
                    "recipe": {"pre-converted": repo},
                    "notes": [f"pre-converted by {repo.split('/')[0]}"],
                    "source": {"kind": "hub", "repo": repo, "commit": commit, "endpoint": endpoint()},
                },
            )
    return store.find(f"{entry.name}@openvino-int4")[0]
