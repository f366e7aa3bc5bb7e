"""Checking a GGUF file's header, and reading its metadata, with the standard library alone.

Native GGUF readers (OpenVINO's, llama.cpp's, transformers' through numpy) trust the header: a count or an
offset from a damaged or hostile file made them allocate, loop or read out of bounds, and the process died
with SIGSEGV. So every GGUF file is checked here first, strictly and cheaply: the magic and version; every
count and length bounded by the bytes left in the file before anything loops or allocates; every key/value
type known; every tensor's name, rank, shape, ggml type, alignment and extent inside the file, without
overlaps. Tensor data is never read (the header of a 2 GB model is a few MB), so a check takes milliseconds,
and the result is cached per (path, size, mtime) for the life of the process.

Any problem is one `UsageError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aipc.errors import UsageError

VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME: a tensor name and its NUL must fit in 64 bytes
DEFAULT_ALIGNMENT = 32
_I64_MAX = (1 << 63) - 1

# GGUF value types -> struct format; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")

# ggml tensor types: id -> (name, elements per block, bytes per block), as ggml defines them.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}


@dataclass(frozen=True)
class Tensor:
    """One tensor's entry in the header: `offset` is absolute (from the file's start)."""

    name: str
    shape: tuple[int, ...]
    type: str
    offset: int
    nbytes: int


@dataclass(frozen=True)
class GGUFFile:
    """A checked GGUF header. `metadata` holds arrays only when they were asked for."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: tuple[Tensor, ...]
    alignment: int
    data_offset: int
    size: int


class _Bad(Exception):
    """What is wrong with the file (the message is completed with its path by `check`)."""


def check(path: Path) -> GGUFFile:
    """Validate `path` as a GGUF model file, or raise one `UsageError`. The result (metadata arrays skipped)
    is cached for the process while the file's size, mtime and inode stay the same."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return _check_cached(str(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=32)
def _check_cached(path: str, size: int, mtime_ns: int, inode: int) -> GGUFFile:
    return _parse(Path(path), keep_arrays=False)


def read_metadata(path: Path, *, arrays: bool = False) -> dict[str, Any]:
    """The header's key/values, after the file passed `check`. Arrays (vocabularies, merges) are skipped
    unless `arrays` is true."""
    if arrays:
        return _parse(Path(path), keep_arrays=True).metadata
    return check(path).metadata


def _parse(path: Path, *, keep_arrays: bool) -> GGUFFile:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            return _Walk(fh, size, keep_arrays=keep_arrays).run(path)
    except _Bad as exc:
        raise UsageError(f"{path} is not a valid GGUF file: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


class _Walk:
    """One pass over the header, reading it in chunks; `pos` is the absolute position in the file."""

    _CHUNK = 1 << 20

    def __init__(self, fh: BinaryIO, size: int, *, keep_arrays: bool) -> None:
        self.fh = fh
        self.size = size
        self.keep = keep_arrays
        self.buf = b""
        self.base = 0  # the file offset of buf[0]
        self.pos = 0
        self.where = "its header"
        self.vocab: dict[str, list[str]] = {}  # the BPE vocabulary and merges, checked against each other

    # --- bounded reads ------------------------------------------------------------------------------------
    def _cut(self, needed_end: int) -> _Bad:
        return _Bad(f"it ends at byte {self.size}, inside {self.where} (which needs byte {needed_end}): cut short")

    def _fill(self, n: int) -> int:
        """Make bytes [pos, pos + n) available in `buf`; return pos's index in it."""
        if self.pos + n > self.size:
            raise self._cut(self.pos + n)
        rel = self.pos - self.base
        if rel + n <= len(self.buf):
            return rel
        keep = self.buf[rel:] if rel < len(self.buf) else b""
        self.fh.seek(self.pos + len(keep))
        more = self.fh.read(max(n - len(keep), self._CHUNK))
        self.buf, self.base = keep + more, self.pos
        if len(self.buf) < n:  # the file shrank while being read
            raise self._cut(self.pos + n)
        return 0

    def u32(self) -> int:
        rel = self._fill(4)
        self.pos += 4
        return _U32.unpack_from(self.buf, rel)[0]

    def u64(self) -> int:
        rel = self._fill(8)
        self.pos += 8
        return _U64.unpack_from(self.buf, rel)[0]

    def left(self) -> int:
        return self.size - self.pos

    def raw_string(self, what: str) -> bytes:
        n = self.u64()
        if n > self.left():
            raise _Bad(f"{what} is {n} bytes long, more than the {self.left()} bytes left in the file")
        rel = self._fill(n)
        self.pos += n
        return self.buf[rel : rel + n]

    def string(self, what: str) -> str:
        raw = self.raw_string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"{what} is not UTF-8 text") from None

    def check_strings(self, count: int, what: str, into: list[str] | None = None) -> None:
        """Walk `count` strings, checking each is UTF-8, keeping them only `into` a list (the hot loop: a
        vocabulary and its merges hold ~100k-500k strings, so it avoids every call it can)."""
        unpack = _U64.unpack_from
        keep = into.append if into is not None else None
        buf, base, pos = self.buf, self.base, self.pos
        end = len(buf)  # buf never reaches past the file's end: within it, a string is within the file
        i = 0
        try:
            for i in range(count):
                rel = pos - base
                if rel + 8 > end:
                    self.pos = pos
                    rel, buf, base, end = self._refill(8)
                n = unpack(buf, rel)[0]
                stop = rel + 8 + n
                if stop > end:
                    if pos + 8 + n > self.size:
                        raise _Bad(
                            f"string {i} of {what} is {n} bytes long, past the end of the file ({self.size} bytes)"
                        )
                    self.pos = pos
                    rel, buf, base, end = self._refill(8 + n)
                    stop = rel + 8 + n
                text = buf[rel + 8 : stop].decode()
                if keep is not None:
                    keep(text)
                pos += 8 + n
        except UnicodeDecodeError:
            raise _Bad(f"string {i} of {what} is not UTF-8 text") from None
        self.pos = pos

    def _refill(self, n: int) -> tuple[int, bytes, int, int]:
        rel = self._fill(n)
        return rel, self.buf, self.base, len(self.buf)

    def scalar(self, kind: int) -> Any:
        fmt = "<" + _SCALARS[kind]
        n = struct.calcsize(fmt)
        rel = self._fill(n)
        self.pos += n
        return struct.unpack_from(fmt, self.buf, rel)[0]

    # --- the header -----------------------------------------------------------------------------------------
    def run(self, path: Path) -> GGUFFile:
        self.where = "the GGUF magic and version"
        if self.size < 4:
            raise _Bad(f"it is {self.size} bytes long, too short for a GGUF header (24 bytes)")
        rel = self._fill(4)
        magic = self.buf[rel : rel + 4]
        if magic != b"GGUF":
            raise _Bad(f"it does not start with the GGUF magic bytes (it starts with {magic!r})")
        self.pos = 4
        version = self.u32()
        if version not in VERSIONS:
            hint = " (a big-endian file?)" if version & 0xFFFF == 0 and version else ""
            raise _Bad(f"it is GGUF version {version}{hint}; aipc reads versions {' and '.join(map(str, VERSIONS))}")
        self.where = "the tensor and key/value counts"
        n_tensors, n_kv = self.u64(), self.u64()
        # The smallest key/value is 13 bytes (empty key, type, a one-byte value); the smallest tensor entry 24.
        if n_kv * 13 > self.left():
            raise _Bad(f"it claims {n_kv} key/value pairs, more than its {self.size} bytes could hold")
        if n_tensors * 24 > self.left():
            raise _Bad(f"it claims {n_tensors} tensors, more than its {self.size} bytes could describe")
        metadata = self._metadata(n_kv)
        if self.keep:
            self.vocab = {k: metadata[k] for k in _VOCAB_KEYS if isinstance(metadata.get(k), list)}
        _check_merges(self.vocab)
        _check_hyperparameters(metadata)
        alignment = self._alignment(metadata)
        tensors = self._tensor_entries(n_tensors)
        data_offset = -(-self.pos // alignment) * alignment
        placed = self._place(tensors, data_offset, alignment)
        if not self.keep:
            metadata = {k: v for k, v in metadata.items() if v is not _SKIPPED}
        return GGUFFile(path, version, metadata, placed, alignment, data_offset, self.size)

    def _metadata(self, n_kv: int) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for i in range(n_kv):
            self.where = f"key/value pair {i} of {n_kv}"
            key = self.string(f"key {i}")
            if key in meta:
                raise _Bad(f"key {key!r} appears twice")
            self.where = f"the value of key {key!r}"
            meta[key] = self._value(key, self.u32())
        return meta

    def _value(self, key: str, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(kind)
        if kind == _STRING:
            return self.string(f"the value of key {key!r}")
        if kind != _ARRAY:
            raise _Bad(f"key {key!r} has value type {kind}, which is not a GGUF type (0-12)")
        item, count = self.u32(), self.u64()
        if item == _ARRAY:
            raise _Bad(f"key {key!r} is an array of arrays, which GGUF readers do not take")
        if item not in _SCALARS and item != _STRING:
            raise _Bad(f"key {key!r} is an array of type {item}, which is not a GGUF type (0-12)")
        width = struct.calcsize("<" + _SCALARS[item]) if item in _SCALARS else 8
        if count * width > self.left():
            raise _Bad(f"key {key!r} claims {count} items, more than the {self.left()} bytes left could hold")
        if item == _STRING:
            if not self.keep:
                vocab = self.vocab.setdefault(key, []) if key in _VOCAB_KEYS else None
                self.check_strings(count, f"key {key!r}", vocab)
                return _SKIPPED
            return [self.string(f"item {i} of key {key!r}") for i in range(count)]
        if not self.keep:
            self.pos += count * width
            return _SKIPPED
        fmt = f"<{count}{_SCALARS[item]}"
        rel = self._fill(count * width)
        self.pos += count * width
        return list(struct.unpack_from(fmt, self.buf, rel))

    def _alignment(self, meta: dict[str, Any]) -> int:
        if "general.alignment" not in meta:
            return DEFAULT_ALIGNMENT
        value = meta["general.alignment"]
        # ggml reads it as a uint32 and aborts the process when it is stored as anything else.
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 32 or value & (value - 1):
            raise _Bad(f"general.alignment is {value!r}; it must be a power of two stored as uint32")
        return value

    def _tensor_entries(self, n_tensors: int) -> list[tuple[str, tuple[int, ...], int, int]]:
        entries = []
        names: set[str] = set()
        for i in range(n_tensors):
            self.where = f"the entry of tensor {i} of {n_tensors}"
            raw = self.raw_string(f"the name of tensor {i}")
            if len(raw) >= MAX_NAME:
                raise _Bad(f"tensor {i}'s name is {len(raw)} bytes long; ggml allows at most {MAX_NAME - 1}")
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _Bad(f"the name of tensor {i} is not UTF-8 text") from None
            if name in names:
                raise _Bad(f"tensor name {name!r} appears twice")
            names.add(name)
            n_dims = self.u32()
            if n_dims > MAX_DIMS:
                raise _Bad(f"tensor {name!r} has {n_dims} dimensions; ggml allows at most {MAX_DIMS}")
            shape = tuple(self.u64() for _ in range(n_dims))
            elements = 1
            for d in shape:
                elements *= d
                if d > _I64_MAX or elements > _I64_MAX:
                    raise _Bad(f"tensor {name!r} has shape {list(shape)}, too many elements to address")
            kind = self.u32()
            if kind not in GGML_TYPES:
                raise _Bad(f"tensor {name!r} has type {kind}, which is not a ggml tensor type aipc knows")
            type_name, block, _ = GGML_TYPES[kind]
            if (shape[0] if shape else 1) % block:
                raise _Bad(
                    f"tensor {name!r} of type {type_name} has rows of {shape[0]} elements, not a multiple of "
                    f"its block size {block}"
                )
            entries.append((name, shape, kind, self.u64()))
        return entries

    def _place(self, entries, data_offset: int, alignment: int) -> tuple[Tensor, ...]:
        tensors = []
        for name, shape, kind, offset in entries:
            type_name, block, block_bytes = GGML_TYPES[kind]
            elements = 1
            for d in shape:
                elements *= d
            nbytes = elements // block * block_bytes
            if offset % alignment:
                raise _Bad(
                    f"tensor {name!r} starts at data offset {offset}, not a multiple of the alignment {alignment}"
                )
            end = data_offset + offset + nbytes
            if end > self.size:
                raise _Bad(f"tensor {name!r} ends at byte {end}, past the end of the file ({self.size} bytes)")
            tensors.append(Tensor(name, shape, type_name, data_offset + offset, nbytes))
        by_start = sorted(tensors, key=lambda t: t.offset)
        for a, b in itertools.pairwise(by_start):
            if b.offset < a.offset + a.nbytes:
                raise _Bad(f"tensors {a.name!r} and {b.name!r} overlap (at byte {b.offset})")
        return tuple(tensors)


_SKIPPED = object()
MAX_LAYERS = 512  # LLAMA_MAX_LAYERS: llama.cpp aborts the process on a block count of 0 or above it


def _check_hyperparameters(meta: dict[str, Any]) -> None:
    """The few model sizes a native reader divides by or sizes fixed arrays with, where a bad value crashed
    it (OpenVINO: SIGFPE on a head count of 0; llama.cpp: SIGABRT on a block count of 0 or 513)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return
    limits = {"block_count": MAX_LAYERS, "embedding_length": None, "attention.head_count": None}
    for name, most in limits.items():
        value = meta.get(f"{arch}.{name}", 1)
        if value is _SKIPPED or isinstance(value, list):  # per-layer values (hybrid models hold zeros)
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (most and value > most):
            valid = f"1 to {most}" if most else "a positive integer"
            raise _Bad(f"{arch}.{name} is {value!r}; it must be {valid}")


_VOCAB_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")


def _check_merges(vocab: dict[str, list[str]]) -> None:
    """Every BPE merge joins two tokens of the vocabulary into a third: OpenVINO's tokenizer looks each one up
    unchecked, and a merge naming a missing token failed every prompt with "unordered_map::at"."""
    tokens, merges = vocab.get("tokenizer.ggml.tokens"), vocab.get("tokenizer.ggml.merges")
    if not merges:
        return
    known = set(tokens or ())
    parts = " ".join(merges).split(" ")  # in C: byte-level BPE merges hold exactly one space each
    joined = map(operator.add, parts[0::2], parts[1::2])
    if len(parts) == 2 * len(merges) and known.issuperset(parts) and known.issuperset(joined):
        return
    for i, merge in enumerate(merges):  # something is wrong: find the first culprit to name it
        left, space, right = merge.partition(" ")
        if not (space and left in known and right in known and left + right in known):
            raise _Bad(f"merge {i} of tokenizer.ggml.merges ({merge!r}) names a token its vocabulary lacks")


def context_length(meta: dict[str, Any]) -> int | None:
    value = meta.get(f"{meta.get('general.architecture')}.context_length")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


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
    value = meta.get("general.file_type")
    return FILE_TYPES.get(value, "") if isinstance(value, int) else ""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header: `shape` in GGUF order (the fastest-varying dimension first), its GGML
    type id, and where its data starts in the file."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int


def tensor_infos(path: Path) -> list[TensorInfo]:
    """The file's tensors as its (checked) header lists them: names, shapes, type ids, absolute data offsets."""
    ids = {name: kind for kind, (name, _, _) in GGML_TYPES.items()}
    return [TensorInfo(t.name, t.shape, ids[t.type], t.offset) for t in check(path).tensors]
