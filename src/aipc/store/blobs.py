"""Uploaded files, as Ollama's clients send them before `/api/create` names them (`ollama create` with a
`FROM ./model.gguf` Modelfile, Open WebUI's GGUF upload): `HEAD /api/blobs/sha256:<hex>` asks whether the server
has one, `POST` sends it, and `create` turns a GGUF blob into a stored model (`aipc.store.create.from_blob`).

Uploads are untrusted: a blob is written to a hidden partial file while its SHA-256 is computed, kept under its
digest only when that digest is the one the client named, and refused before the disk fills (at least
`FREE_MARGIN` stays free). Blobs live in `$AIPC_HOME/blobs/sha256-<hex>` until a model is made from one: the
model then holds the file (hard-linked where the disk allows) and the blob goes. An upload no model was made from
within `UNUSED_AFTER_S` is litter that `aipc prune` removes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

from aipc.errors import UsageError
from aipc.store import paths

FREE_MARGIN = 1 << 30  # bytes an upload leaves free on the store's disk
UNUSED_AFTER_S = 3600  # an upload (or a partial one) untouched this long is litter
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")


class DiskFullError(UsageError):
    """An upload that would leave less than FREE_MARGIN free (HTTP 507)."""


def folder() -> Path:
    return paths.home() / "blobs"


def parse(digest: str) -> str:
    """`sha256:<64 hex>` (or Ollama's file form, `sha256-<hex>`) -> the hex, else a one-line error."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        shown = digest if len(digest) <= 80 else digest[:80] + "..."
        raise UsageError(f"invalid blob digest {shown!r}: a digest is sha256: and 64 lowercase hex digits")
    return match.group(1)


def path(digest: str) -> Path:
    return folder() / f"sha256-{parse(digest)}"


def has(digest: str) -> bool:
    return path(digest).is_file()


class Upload:
    """One blob being received: `write` each chunk, then `finish` (kept only when the digest matches) or
    `discard`."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.target = path(digest)
        self._partial = paths.make_dir(folder()) / f".partial-{uuid.uuid4().hex}"
        self._file = open(self._partial, "wb")  # noqa: SIM115 - closed by finish or discard
        self._hash = hashlib.sha256()
        self._size = 0
        self._room = shutil.disk_usage(folder()).free - FREE_MARGIN

    def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._room:
            self.discard()
            raise DiskFullError(
                f"the upload does not fit: the store's disk ({folder()}) must keep {FREE_MARGIN >> 30} GiB free"
            )
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> bool:
        """Keep the blob under its digest; False (and nothing kept) when the bytes have another digest."""
        self._file.close()
        if self._hash.hexdigest() != parse(self.digest):
            self._partial.unlink(missing_ok=True)
            return False
        os.replace(self._partial, self.target)
        return True

    def discard(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)
