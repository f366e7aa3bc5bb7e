"""Reading a GGUF file's metadata (its key/value header) with the standard library alone.

Runtime code needs a few facts from GGUF files (architecture, context length, file type) without importing
a converter package; tensors are never read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aipc.errors import UsageError

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_metadata(path: Path, *, arrays: bool = False) -> dict[str, Any]:
    """The header's key/values. Arrays (vocabularies, merges) are skipped unless `arrays` is true."""
    with open(path, "rb") as fh:
        _, meta = _read_kv(fh, path, arrays=arrays)
        return meta


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header: `shape` in GGUF order (the fastest-varying dimension first), its GGML
    type id, and where its data starts in the file."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int


def tensor_infos(path: Path) -> list[TensorInfo]:
    """The file's tensors as its header lists them (names, shapes, types, absolute data offsets); no data read."""
    with open(path, "rb") as fh:
        n_tensors, meta = _read_kv(fh, path, arrays=False)
        entries = []
        for _ in range(n_tensors):
            name = _string(fh)
            dims = tuple(_unpack(fh, "Q") for _ in range(_unpack(fh, "I")))
            entries.append((name, dims, _unpack(fh, "I"), _unpack(fh, "Q")))
        alignment = meta.get("general.alignment", 32)
        alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
        start = -(-fh.tell() // alignment) * alignment
    return [TensorInfo(name, dims, kind, start + offset) for name, dims, kind, offset in entries]


def _read_kv(fh: BinaryIO, path: Path, *, arrays: bool) -> tuple[int, dict[str, Any]]:
    """(tensor count, key/values), leaving `fh` at the first tensor entry."""
    if fh.read(4) != b"GGUF":
        raise UsageError(f"{path} is not a GGUF file")
    version = _unpack(fh, "I")
    if version < 2:
        raise UsageError(f"{path} is GGUF version {version}; aipc reads version 2 and later")
    n_tensors = _unpack(fh, "Q")
    n_kv = _unpack(fh, "Q")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = _string(fh)
        meta[key] = _value(fh, _unpack(fh, "I"), keep=arrays)
    return n_tensors, {k: v for k, v in meta.items() if v is not _SKIPPED}


_SKIPPED = object()


def _unpack(fh: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = fh.read(size)
    if len(data) != size:
        raise UsageError(f"{getattr(fh, 'name', 'file')} ends inside its GGUF header")
    return struct.unpack("<" + fmt, data)[0]


def _string(fh: BinaryIO) -> str:
    return fh.read(_unpack(fh, "Q")).decode("utf-8", errors="replace")


def _value(fh: BinaryIO, kind: int, *, keep: bool) -> Any:
    if kind in _SCALARS:
        return _unpack(fh, _SCALARS[kind])
    if kind == _STRING:
        return _string(fh)
    if kind == _ARRAY:
        item, count = _unpack(fh, "I"), _unpack(fh, "Q")
        if not keep:
            if item in _SCALARS:
                fh.seek(struct.calcsize("<" + _SCALARS[item]) * count, 1)
            else:
                for _ in range(count):
                    _value(fh, item, keep=False)
            return _SKIPPED
        return [_value(fh, item, keep=True) for _ in range(count)]
    raise UsageError(f"unknown GGUF value type {kind} in {getattr(fh, 'name', 'file')}")


def context_length(meta: dict[str, Any]) -> int | None:
    value = meta.get(f"{meta.get('general.architecture')}.context_length")
    return int(value) if isinstance(value, int) and value > 0 else None


# llama.cpp's LLAMA_FTYPE values for the file types aipc meets.
FILE_TYPES = {
    0: "f32",
    1: "f16",
    2: "q4_0",
    3: "q4_1",
    7: "q8_0",
    8: "q5_0",
    9: "q5_1",
    10: "q2_k",
    12: "q3_k_m",
    15: "q4_k_m",
    17: "q5_k_m",
    18: "q6_k",
    32: "bf16",
}


def precision(meta: dict[str, Any]) -> str:
    """The GGUF file's quantization, as llama.cpp names it ("" when unknown)."""
    return FILE_TYPES.get(meta.get("general.file_type", -1), "")
