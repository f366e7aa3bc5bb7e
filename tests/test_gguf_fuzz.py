"""A GGUF fuzzer: hundreds of deterministic mutations of a small real GGUF model (truncations, counts, lengths,
value and tensor types, ranks, shapes, offsets, versions, random bytes), each through the validator in this
process, and a subset through `aipc run` and `aipc serve` as a user runs them: every one ends in one error line
and exit 1 or 2 (or, where the damage leaves a well-formed file, a normal run), never a signal or a traceback.

The model is tiny but real: the llama architecture with the tiny Phi-3 shape's dimensions, random Q4_0
weights and SmolLM2's vocabulary, written by `synthetic_gguf.write_random_gguf`; unmutated, `aipc run` loads
and runs it (checked below), so a mutation that gets past the validator reaches the native readers.
"""

from __future__ import annotations

import random
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from aipc.errors import UsageError
from aipc.store import gguf_header
from tests.conftest import run_cli

HUGE = 0x7FFFFFFFFFFFFFFF
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1


@dataclass(frozen=True)
class Mutation:
    """One damaged file: `patch` bytes written at `at`, or the file cut to `length`, or `whole` bytes."""

    label: str
    kind: str
    at: int = 0
    patch: bytes = b""
    length: int | None = None
    whole: bytes | None = None
    refused: str | None = None  # a regex the validator's message must match; None: it may pass

    def bytes_of(self, original: bytes) -> bytes:
        if self.whole is not None:
            return self.whole
        if self.length is not None:
            return original[: self.length]
        return original[: self.at] + self.patch + original[self.at + len(self.patch) :]


@dataclass(frozen=True)
class Layout:
    """Where things are in the unmutated file, read with the `gguf` package's own reader (not aipc's)."""

    size: int
    n_tensors: int
    n_kv: int
    kv: dict[str, tuple[int, list[int]]]  # key -> (offset, byte sizes of its parts)
    tensors: list[tuple[str, int, list[int]]]  # (name, offset of its entry, byte sizes of its parts)
    data_offset: int


def layout_of(path: Path) -> Layout:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    kv = {k: (f.offset, [p.nbytes for p in f.parts]) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = [(t.name, t.field.offset, [p.nbytes for p in t.field.parts]) for t in reader.tensors]
    return Layout(path.stat().st_size, len(tensors), len(kv), kv, tensors, reader.data_offset)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


CUT = r"cut short|past the end|more than|too short"


def mutations(lay: Layout, original: bytes) -> list[Mutation]:
    out: list[Mutation] = []
    add = out.append

    # Truncations: inside the fixed header, the key/values, the tensor entries, the data, and at the very end.
    cuts = {0, 1, 3, 4, 7, 8, 12, 16, 20, 24, 31, 32, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 100_000}
    cuts |= {1_000_000, 1 << 20, lay.size // 2, lay.size - 1, lay.size - 2, lay.size - 4096, lay.data_offset}
    cuts |= {lay.data_offset - 1, lay.data_offset + 1, lay.data_offset + 4096}
    for _, at, parts in lay.tensors[:4] + lay.tensors[-2:]:
        cuts |= {at + 1, at + 8, at + sum(parts) - 1}
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "general.architecture"):
        at, parts = lay.kv[key]
        cuts |= {at + 4, at + parts[0] + 2, at + sum(parts) // 2}
    for n in sorted(c for c in cuts if 0 <= c < lay.size):
        add(Mutation(f"truncate@{n}", "truncate", length=n, refused=CUT))

    for v in (0, 1, 4, 99, U32_MAX, 0x03000000):
        add(Mutation(f"version={v}", "version", at=4, patch=u32(v), refused="version"))
    add(Mutation("version=2", "version", at=4, patch=u32(2)))  # v2 and v3 share a layout: it must pass

    rng = random.Random(10)
    add(Mutation("magic=GGML", "magic", at=0, patch=b"GGML", refused="magic"))
    add(Mutation("magic=zero", "magic", at=0, patch=b"\0\0\0\0", refused="magic"))
    for n in (0, 4, 20, 24, 100, 4096, 1 << 20):
        add(Mutation(f"magic+random{n}", "magic", whole=b"GGUF" + rng.randbytes(n), refused="."))
    add(Mutation("random-file", "magic", whole=rng.randbytes(4096), refused="magic"))

    for v in (HUGE, U64_MAX, 1 << 32):
        add(Mutation(f"tensor_count={v:#x}", "counts", at=8, patch=u64(v), refused="claims"))
        add(Mutation(f"kv_count={v:#x}", "counts", at=16, patch=u64(v), refused="claims"))
    add(Mutation("tensor_count*1000", "counts", at=8, patch=u64(lay.n_tensors * 1000), refused="."))
    add(Mutation("kv_count+1000", "counts", at=16, patch=u64(lay.n_kv + 1000), refused="."))
    for v in (0, lay.n_tensors - 1, lay.n_tensors + 1):
        add(Mutation(f"tensor_count={v}", "counts", at=8, patch=u64(v)))
    for v in (0, lay.n_kv - 1, lay.n_kv + 1):
        add(Mutation(f"kv_count={v}", "counts", at=16, patch=u64(v)))

    keys = list(lay.kv)
    for key in (keys[0], keys[1], keys[5], keys[-1], "tokenizer.ggml.tokens"):
        at, parts = lay.kv[key]
        for v in (HUGE, U64_MAX, lay.size):
            add(Mutation(f"key_len[{key}]={v:#x}", "lengths", at=at, patch=u64(v), refused="bytes long"))
        for delta in (1, -1, 1000):
            add(Mutation(f"key_len[{key}]{delta:+}", "lengths", at=at, patch=u64(max(0, parts[1] + delta))))
    string_keys = [
        k for k in ("general.architecture", "general.name", "tokenizer.ggml.model", "tokenizer.chat_template")
    ]
    for key in (k for k in string_keys if k in lay.kv):
        at, parts = lay.kv[key]
        length_at = at + parts[0] + parts[1] + parts[2]
        for v in (HUGE, U64_MAX, lay.size):
            add(Mutation(f"str_len[{key}]={v:#x}", "lengths", at=length_at, patch=u64(v), refused="bytes long"))
        for delta in (1, -1, 100_000):
            add(Mutation(f"str_len[{key}]{delta:+}", "lengths", at=length_at, patch=u64(parts[4] + delta)))

    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
        at, parts = lay.kv[key]
        head = at + parts[0] + parts[1] + parts[2]  # the array's item type, then its count
        for v in (HUGE, U64_MAX, 1 << 32):
            add(
                Mutation(f"array_len[{key}]={v:#x}", "arrays", at=head + 4, patch=u64(v), refused="claims|past the end")
            )
        for v in (0, 1):
            add(Mutation(f"array_len[{key}]={v}", "arrays", at=head + 4, patch=u64(v)))
        for t in (9,):
            add(Mutation(f"array_type[{key}]=nested", "arrays", at=head, patch=u32(t), refused="array of arrays"))
        for t in (13, 255, U32_MAX):
            add(Mutation(f"array_type[{key}]={t}", "arrays", at=head, patch=u32(t), refused="not a GGUF type"))
        for t in (0, 10):
            add(Mutation(f"array_type[{key}]={t}", "arrays", at=head, patch=u32(t)))
    at, parts = lay.kv["tokenizer.ggml.tokens"]
    first_item = at + sum(parts[:5])
    for i, v in ((0, HUGE), (0, lay.size), (0, U64_MAX)):
        add(
            Mutation(f"token[{i}]_len={v:#x}", "arrays", at=first_item, patch=u64(v), refused="bytes long|past the end")
        )

    for key in (keys[0], "general.name", "llama.context_length", "tokenizer.ggml.tokens", keys[-1]):
        at, parts = lay.kv[key]
        type_at = at + parts[0] + parts[1]
        for t in (13, 255, U32_MAX, 0x80000000):
            add(Mutation(f"value_type[{key}]={t}", "types", at=type_at, patch=u32(t), refused="not a GGUF type"))
        for t in (0, 8, 9, 10, 12):
            add(Mutation(f"value_type[{key}]={t}", "types", at=type_at, patch=u32(t)))

    picks = [lay.tensors[0], lay.tensors[len(lay.tensors) // 2], lay.tensors[-1]]
    for name, at, parts in picks:
        name_at, ndims_at = at, at + parts[0] + parts[1]
        dims_at = ndims_at + 4
        n_dims = parts[3] // 8  # parts: name length, name, rank, dims, type, offset
        type_at = dims_at + 8 * n_dims
        offset_at = type_at + 4
        current_offset = struct.unpack_from("<Q", original, offset_at)[0]
        current_dim0 = struct.unpack_from("<Q", original, dims_at)[0]
        for v in (HUGE, lay.size):
            add(Mutation(f"name_len[{name}]={v:#x}", "names", at=name_at, patch=u64(v), refused="bytes long"))
        add(Mutation(f"name_len[{name}]=64", "names", at=name_at, patch=u64(64)))
        for v in (5, 16, U32_MAX):
            add(Mutation(f"n_dims[{name}]={v}", "shapes", at=ndims_at, patch=u32(v), refused="dimensions"))
        for v in (0, 1, 3):
            add(Mutation(f"n_dims[{name}]={v}", "shapes", at=ndims_at, patch=u32(v)))
        for v in (1 << 63, U64_MAX):
            add(Mutation(f"dim0[{name}]={v:#x}", "shapes", at=dims_at, patch=u64(v), refused="too many elements"))
        add(Mutation(f"dim0[{name}]=2^40", "shapes", at=dims_at, patch=u64(1 << 40), refused="past the end|too many"))
        add(Mutation(f"dim0[{name}]*64", "shapes", at=dims_at, patch=u64(current_dim0 * 64), refused="past|overlap"))
        for v in (0, current_dim0 + 1, current_dim0 + 32):
            add(Mutation(f"dim0[{name}]={v}", "shapes", at=dims_at, patch=u64(v)))
        for v in (4, 5, 31, 36, 99, U32_MAX):
            add(
                Mutation(
                    f"type[{name}]={v}", "tensor types", at=type_at, patch=u32(v), refused="not a ggml tensor type"
                )
            )
        for v in (0, 1, 8, 30):
            add(Mutation(f"type[{name}]={v}", "tensor types", at=type_at, patch=u32(v)))
        for v, why in ((current_offset + 1, "alignment"), (current_offset + 16, "alignment")):
            add(Mutation(f"offset[{name}]={v}", "offsets", at=offset_at, patch=u64(v), refused=why))
        for v in (lay.size, U64_MAX - 31, HUGE - 31, 1 << 40):
            add(Mutation(f"offset[{name}]={v:#x}", "offsets", at=offset_at, patch=u64(v), refused="past the end"))
        other = 0 if current_offset else 32
        add(Mutation(f"offset[{name}]={other}", "offsets", at=offset_at, patch=u64(other), refused="overlap"))

    # Model sizes native readers divide by or size arrays with (OpenVINO: SIGFPE; llama.cpp: SIGABRT).
    for key, values, refused in (
        ("llama.block_count", (0, 513, U32_MAX), "must be 1 to 512"),
        ("llama.attention.head_count", (0,), "must be a positive"),
        ("llama.embedding_length", (0,), "must be a positive"),
        ("llama.embedding_length", (1, 7), None),  # well-formed, but OpenVINO's reader dies on 1 (SIGFPE)
        ("llama.block_count", (1, 512), None),
    ):
        at, parts = lay.kv[key]
        value_at = at + parts[0] + parts[1] + parts[2]
        for v in values:
            add(Mutation(f"{key}={v}", "hyperparameters", at=value_at, patch=u32(v), refused=refused))

    # Random bytes where the embedded model crashed OpenVINO (offset 2000), elsewhere in the header, and bit
    # flips: these may or may not leave a well-formed file; either way nothing may crash.
    for seed in range(12):
        for n in (1, 8, 64, 512):
            add(Mutation(f"random@2000[{seed},{n}]", "random", at=2000, patch=random.Random(seed).randbytes(n)))
    rng = random.Random(2000)
    for i in range(40):
        at = rng.randrange(24, lay.data_offset - 64)
        add(Mutation(f"random-header@{at}[{i}]", "random", at=at, patch=rng.randbytes(rng.choice((1, 4, 8, 32)))))
    for i in range(60):
        at = rng.randrange(0, lay.data_offset)
        flipped = bytes([original[at] ^ (1 << rng.randrange(8))])
        add(Mutation(f"bitflip@{at}[{i}]", "bit flips", at=at, patch=flipped))
    return out


@pytest.fixture(scope="session")
def fuzz(tiny_gguf):
    original = tiny_gguf.read_bytes()
    return original, mutations(layout_of(tiny_gguf), original)


def test_the_unmutated_file_is_valid_and_runs(tiny_gguf):
    checked = gguf_header.check(tiny_gguf)
    lay = layout_of(tiny_gguf)
    assert len(checked.tensors) == lay.n_tensors and checked.data_offset == lay.data_offset
    assert checked.tensors[-1].offset + checked.tensors[-1].nbytes == lay.size
    result = run_cli("run", str(tiny_gguf), "hi", "--max-tokens", "3", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_every_mutation_is_refused_in_one_line_or_read_within_bounds(fuzz, tmp_path):
    original, muts = fuzz
    assert len(muts) >= 300
    work = tmp_path / "work.gguf"
    work.write_bytes(original)
    problems, refused_by_kind, slowest = [], {}, 0.0
    for m in muts:
        data = m.bytes_of(original)
        path = tmp_path / "m.gguf" if (m.length is not None or m.whole is not None) else work
        if path is work:
            with open(work, "r+b") as fh:
                fh.seek(m.at)
                fh.write(m.patch)
        else:
            path.write_bytes(data)
        gguf_header._check_cached.cache_clear()
        started = time.perf_counter()
        try:
            gguf_header.check(path)
            outcome = None
        except UsageError as exc:
            outcome = str(exc)
        except Exception as exc:  # anything but the one-line error is a bug
            problems.append(f"{m.label}: {type(exc).__name__}: {exc}")
            continue
        finally:
            slowest = max(slowest, time.perf_counter() - started)
            if path is work:
                with open(work, "r+b") as fh:
                    fh.seek(m.at)
                    fh.write(original[m.at : m.at + len(m.patch)])
        if outcome is not None:
            refused_by_kind[m.kind] = refused_by_kind.get(m.kind, 0) + 1
            if "\n" in outcome or not outcome.startswith(str(path)):
                problems.append(f"{m.label}: not one line naming the file: {outcome!r}")
        if m.refused is not None:
            if outcome is None:
                problems.append(f"{m.label}: accepted, but must be refused")
            elif not re.search(m.refused, outcome):
                problems.append(f"{m.label}: refused, but the message does not say /{m.refused}/: {outcome}")
    assert not problems, "\n".join(problems)
    kinds = {m.kind for m in muts}
    assert set(refused_by_kind) == kinds, f"classes never refused: {kinds - set(refused_by_kind)}"
    assert slowest < 5, f"a check took {slowest:.1f} s"


# A subset covering every class, through the CLI as a user runs it.
CLI_SUBSET = (
    "truncate@100",
    "truncate@1000000",
    "truncate@0",
    "version=99",
    "version=1",
    "magic+random4096",
    "magic=GGML",
    f"tensor_count={HUGE:#x}",
    "tensor_count=0",
    f"kv_count={HUGE:#x}",
    "kv_count=0",
    f"array_len[tokenizer.ggml.tokens]={HUGE:#x}",
    "array_type[tokenizer.ggml.merges]=nested",
    "value_type[general.name]=13",
    "value_type[llama.context_length]=8",
    "n_dims[token_embd.weight]=5",
    f"dim0[token_embd.weight]={1 << 63:#x}",
    "type[token_embd.weight]=99",
    f"offset[output.weight]={HUGE - 31:#x}",
    "offset[output.weight]=0",
    "llama.block_count=513",
    "llama.embedding_length=1",
    "random@2000[0,1]",
    "random@2000[0,64]",
    "random@2000[1,512]",
    "random@2000[2,8]",
    "random@2000[3,1]",
    "bitflip@",
    "random-header@",
)


def _pick(muts: list[Mutation], label: str) -> Mutation:
    found = [m for m in muts if m.label == label or (label.endswith("@") and m.label.startswith(label))]
    assert found, f"no mutation {label!r}"
    return found[0]


def assert_one_error_line(result, *, may_succeed: bool) -> None:
    assert result.returncode >= 0, f"killed by signal {-result.returncode}: {result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    if may_succeed and result.returncode == 0:
        return
    assert result.returncode in (1, 2), (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("aipc: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert all(ln.startswith("aipc: ") for ln in lines), result.stderr


@pytest.mark.parametrize("label", CLI_SUBSET)
def test_aipc_run_on_a_damaged_gguf_ends_in_one_line(fuzz, tmp_path, label):
    original, muts = fuzz
    m = _pick(muts, label)
    path = tmp_path / "damaged.gguf"
    path.write_bytes(m.bytes_of(original))
    gguf_header._check_cached.cache_clear()
    try:
        gguf_header.check(path)
        valid = True
    except UsageError:
        valid = False
    result = run_cli("run", str(path), "hi", "--max-tokens", "3", "--temperature", "0", timeout=300)
    assert_one_error_line(result, may_succeed=valid)
    if not valid:
        assert result.returncode == 2 and str(path) in result.stderr


@pytest.mark.parametrize("label", ["truncate@1000000", f"tensor_count={HUGE:#x}"])
def test_aipc_serve_on_a_damaged_gguf_fails_cleanly(fuzz, tmp_path, label):
    original, muts = fuzz
    path = tmp_path / "damaged.gguf"
    path.write_bytes(_pick(muts, label).bytes_of(original))
    result = run_cli("serve", str(path), "--port", "0", timeout=180)
    assert_one_error_line(result, may_succeed=False)
    assert result.returncode == 2 and "is not a valid GGUF file" in result.stderr
    assert result.stdout == ""


def test_a_crash_in_openvinos_reader_is_one_line_and_leaves_no_staging_folder(fuzz, tmp_path):
    from aipc.convert.gguf_openvino import ir_for_gguf
    from aipc.errors import ConversionError
    from aipc.store import paths

    original, muts = fuzz
    path = tmp_path / "fpe.gguf"
    path.write_bytes(_pick(muts, "llama.embedding_length=1").bytes_of(original))
    gguf_header.check(path)  # well-formed: only the native reader finds the problem, by dying
    cache = paths.home() / "cache" / "gguf-openvino"
    before = {p for p in cache.iterdir() if p.suffix != ".lock"} if cache.is_dir() else set()
    with pytest.raises(ConversionError, match=r"^OpenVINO's GGUF reader crashed \(SIGFPE\) reading fpe.gguf$"):
        ir_for_gguf(path)
    assert {p for p in cache.iterdir() if p.suffix != ".lock"} == before  # no staging folder, no half-made IR
    assert not list(cache.glob(".fpe-*"))  # nor its lock file
