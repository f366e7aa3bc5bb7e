"""Exact GGUF weights in the IR that OpenVINO's GGUF reader writes, or a refusal that says why there are none.

OpenVINO GenAI's GGUF reader (2026.4) turns each quantized tensor into a weight-decompression subgraph
(u4/u8 constant -> Convert -> Subtract zero point -> Multiply scale -> Reshape -> MatMul), which the CPU plugin
runs as one compressed matmul. F16, Q4_0 and Q8_0 come out exact. Three types do not:

- Q4_1 (w = d*q + m per 32 weights): the float minimum m becomes an integer zero point round(-m/d), clamped to
  0..15. On the embedded SmolLM2 this alone costs KL 0.25 against llama.cpp on the same file.
- Q4_K (w = d*sc*q - dmin*mn per 32 weights): the same rounding of the minimum, and the scale rounded to f16.
- Q6_K (w = d*sc*(q - 32) per 16 weights): the scale d*sc rounded to f16.

`repair` rebuilds each such subgraph from the file's own values: the reader's integers stay, and the scale and
zero point become f32 (z = -m/d), so s*(q - z) is llama.cpp's dequantization to f32 rounding. The CPU plugin
keeps scales and zero points in f32 itself, so this costs no memory; but its int8 dynamic-quantization kernel
takes only integer zero points, so Q4_1/Q4_K matmuls run on its bf16 decompression kernel instead.
Measured on the embedded Q4_1 model: 0.80-0.84x the reader's decode speed, even with `fuse_shared_inputs`.

Each repaired tensor is found by its integers (a digest per row; the reader reorders the rows of q and k), and
checked: the same integers and, within f16 rounding, the same scales as the reader stored, for every row. A
tensor of a repaired type that is not found this way fails the conversion rather than keeping a lossy weight.
Types the reader cannot read at all are named by `refusal` before it runs.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aipc.errors import ConversionError, UsageError
from aipc.store.gguf_header import TensorInfo, tensor_infos

# Bumped whenever the IR made from a GGUF file changes, so IR cached by an older aipc is converted again.
RECIPE_VERSION = 2

F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K = 0, 1, 2, 3, 8, 12, 14
TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K",
    12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip
READ_EXACTLY = (F16, Q4_0, Q8_0)  # the reader's own subgraphs are exact for these (tests/test_gguf_quality.py)
# type -> (weights per block, bytes per block, weights per IR group)
REPAIRED = {Q4_1: (32, 20, 32), Q4_K: (256, 144, 32), Q6_K: (256, 210, 16)}
HINT = (
    "run it with --backend llamacpp, or requantize it to a type OpenVINO reads exactly "
    "(aipc convert FILE --to gguf --precision q8_0, or q4_0)"
)


def type_name(ggml_type: int) -> str:
    return TYPE_NAMES.get(ggml_type, f"type {ggml_type}")


def refusal(gguf: Path) -> str | None:
    """Why OpenVINO cannot run `gguf` at the file's own quality, in one line; None when it can."""
    unreadable: Counter[str] = Counter()
    for t in tensor_infos(gguf):
        if t.ggml_type in READ_EXACTLY or t.ggml_type in REPAIRED or (t.ggml_type == F32 and len(t.shape) == 1):
            continue
        unreadable[type_name(t.ggml_type) + (" matrix" if t.ggml_type == F32 else "")] += 1
    if not unreadable:
        return None
    held = ", ".join(f"{n} {kind}" for kind, n in unreadable.most_common())
    return f"OpenVINO's GGUF reader cannot read {gguf.name} (it holds {held} tensors): {HINT}"


def check_readable(gguf: Path) -> None:
    """Raise a UsageError (so `load` falls back to the next backend) when OpenVINO cannot run `gguf` exactly."""
    why = refusal(gguf)
    if why:
        raise UsageError(why)


# --- the GGUF side: each repaired tensor's integers, exact scales and zero points, in the IR's group layout ----


@dataclass
class Exact:
    """One tensor as llama.cpp dequantizes it, w = scale*q - offset, per IR group (Q6_K: w = scale*(q - 32))."""

    q: Any  # uint8 [rows, groups, group]: the file's integers
    scale: Any  # float32 [rows, groups]
    offset: Any  # float32 [rows, groups], or None for Q6_K, whose zero point (32) the reader keeps exactly

    def take(self, perm) -> Exact:
        return Exact(self.q[perm], self.scale[perm], None if self.offset is None else self.offset[perm])

    def as_zero_point(self):
        """(integers, scale, zero point) with scale*(q - zero) = scale*q - offset. A group with scale 0 is the
        constant -offset: its integers become 0 and its scale 1, so that it stays exact."""
        import numpy as np

        q, scale = self.q, self.scale
        flat = scale == 0
        if flat.any():
            q = q.copy()
            q[flat] = 0
            scale = np.where(flat, np.float32(1), scale)
        return q, scale, (self.offset / scale).astype(np.float32)


def _blocks(data, info: TensorInfo):
    import numpy as np

    per_block, size, _ = REPAIRED[info.ggml_type]
    rows, cols = _rows(info), info.shape[0]
    if cols % per_block:
        raise ConversionError(f"{info.name}: a row of {cols} weights is not whole {type_name(info.ggml_type)} blocks")
    raw = np.asarray(data[info.offset : info.offset + rows * cols // per_block * size])
    return raw.reshape(rows, cols // per_block, size)


def _rows(info: TensorInfo) -> int:
    rows = 1
    for d in info.shape[1:]:
        rows *= d
    return rows


def _f16(raw):
    import numpy as np

    return raw.copy().view(np.float16)[..., 0].astype(np.float32)


def exact_q4_1(raw) -> Exact:
    import numpy as np

    d, m, qs = _f16(raw[..., 0:2]), _f16(raw[..., 2:4]), raw[..., 4:]
    q = np.concatenate([qs & 15, qs >> 4], axis=-1)  # byte j holds weights j (low nibble) and j + 16
    return Exact(q, d, -m)


def exact_q4_k(raw) -> Exact:
    import numpy as np

    rows, blocks = raw.shape[:2]
    d, dmin = _f16(raw[..., 0:2]), _f16(raw[..., 2:4])
    s = raw[..., 4:16].reshape(rows, blocks, 3, 4)
    lo, mid, hi = s[:, :, 0], s[:, :, 1], s[:, :, 2]  # 6-bit scales and minimums, packed (llama.cpp's layout)
    sc = np.concatenate([lo & 0x3F, (hi & 0x0F) | ((lo >> 2) & 0x30)], axis=-1).astype(np.float32)
    mn = np.concatenate([mid & 0x3F, (hi >> 4) | ((mid >> 2) & 0x30)], axis=-1).astype(np.float32)
    qs = raw[..., 16:].reshape(rows, blocks, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)
    q = (qs & 15).reshape(rows, blocks * 8, 32)  # 32 bytes hold sub-blocks 2i (low nibbles) and 2i + 1
    return Exact(q, (d[..., None] * sc).reshape(rows, -1), (dmin[..., None] * mn).reshape(rows, -1))


def exact_q6_k(raw) -> Exact:
    import numpy as np

    rows, blocks = raw.shape[:2]
    ql, qh = raw[..., :128], raw[..., 128:192]
    sc = raw[..., 192:208].copy().view(np.int8).astype(np.float32)
    d = _f16(raw[..., 208:210])
    low = (ql.reshape(rows, blocks, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)) & 15
    high = (qh.reshape(rows, blocks, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 1, 4, 1)) & 3
    q = low.reshape(rows, blocks, 2, 4, 32) | (high.reshape(rows, blocks, 2, 4, 32) << 4)
    return Exact(q.reshape(rows, blocks * 16, 16), (d[..., None] * sc).reshape(rows, -1), None)


DECODE = {Q4_1: exact_q4_1, Q4_K: exact_q4_k, Q6_K: exact_q6_k}


def _row_digests(rows):
    """A 64-bit digest of each row of a uint8 matrix (wrapping integer arithmetic; equal rows, equal digests)."""
    import numpy as np

    weights = np.random.default_rng(0x41C).integers(1, 2**63, size=rows.shape[1], dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        return rows.astype(np.uint64) @ weights


def _pack(q, bits: int):
    """`q` [rows, groups, group] as the IR constant stores it: one byte per weight, or two (low nibble first)."""
    flat = q.reshape(q.shape[0], -1)
    return flat if bits == 8 else flat[:, 0::2] | (flat[:, 1::2] << 4)


# --- the IR side ------------------------------------------------------------------------------------------------


@dataclass
class Block:
    """A weight-decompression subgraph: `weights` (u4/u8 [rows, groups, group]) -> Convert -> [Subtract `zero`]
    -> Multiply `scale` -> Reshape [rows, groups*group] -> [Convert] -> `out`, which its consumers read."""

    weights: Any
    zero: Any  # the zero point's Constant (integer or float), or None
    scale: Any  # the scale's Constant
    out: Any  # Output

    @property
    def shape(self) -> tuple[int, int, int]:
        rows, groups, group = self.weights.get_output_shape(0)
        return rows, groups, group

    @property
    def bits(self) -> int:
        return 4 if self.weights.get_output_element_type(0).get_type_name() in ("u4", "i4") else 8

    def raw(self):
        """The weights as stored: [rows, bytes per row]."""
        return self.weights.get_data().reshape(self.shape[0], -1)

    def zero_values(self):
        """The zero point per group as float32 [rows, groups] (0 without one)."""
        import numpy as np

        rows, groups, _ = self.shape
        if self.zero is None:
            return np.zeros((rows, groups), np.float32)
        return _values(self.zero).astype(np.float32).reshape(rows, groups)

    def scale_values(self):
        return _values(self.scale).astype("float32").reshape(self.shape[:2])


def _values(const):
    """A Constant's values; u4 ones unpacked to one uint8 each."""
    import numpy as np

    data = const.get_data()
    if const.get_output_element_type(0).get_type_name() != "u4":
        return np.asarray(data)
    n = int(np.prod(const.get_output_shape(0)))
    return np.stack([data & 15, data >> 4], axis=-1).reshape(-1)[:n]


def blocks(model) -> list[Block]:
    """Every weight-decompression subgraph in `model`, as the reader (or `repair`) builds them."""
    found = []
    for mul in model.get_ordered_ops():
        if mul.get_type_name() == "Multiply" and (block := _block(mul)) is not None:
            found.append(block)
    return found


def _source(node, i: int):
    return node.input(i).get_source_output().get_node()


def _const(node):
    """`node` if it is a Constant, the Constant a Convert reads, or None."""
    if node.get_type_name() == "Convert":
        node = _source(node, 0)
    return node if node.get_type_name() == "Constant" else None


def _block(mul) -> Block | None:
    scale = _const(_source(mul, 1))
    head, zero = _source(mul, 0), None
    if head.get_type_name() == "Subtract":
        zero = _const(_source(head, 1))
        if zero is None:
            return None
        head = _source(head, 0)
    if scale is None or head.get_type_name() != "Convert":
        return None
    weights = _source(head, 0)
    if weights.get_type_name() != "Constant" or weights.get_output_element_type(0).get_type_name() not in ("u4", "u8"):
        return None
    if len(weights.get_output_shape(0)) != 3:
        return None
    targets = list(mul.output(0).get_target_inputs())
    if len(targets) != 1 or targets[0].get_node().get_type_name() != "Reshape":
        return None
    out = targets[0].get_node().output(0)
    after = list(out.get_target_inputs())
    if len(after) == 1 and after[0].get_node().get_type_name() == "Convert":
        out = after[0].get_node().output(0)
    return Block(weights, zero, scale, out)


def decompress(weights, zero, scale, *, like) -> Any:
    """The f32 decompression subgraph the CPU plugin runs as a compressed matmul: weights (a Constant) ->
    Convert f32 -> Subtract `zero` (an integer Constant, float32 values, or None) -> Multiply `scale` (float32
    [rows, groups]) -> Reshape [rows, groups*group]; converted to the element type of output `like`."""
    import numpy as np
    from openvino import Type
    from openvino import opset13 as ops

    rows, groups, group = weights.get_output_shape(0)
    node = ops.convert(weights, Type.f32)
    if zero is not None:
        if isinstance(zero, np.ndarray):
            zero_node = ops.constant(zero.astype(np.float32).reshape(rows, groups, 1))
        else:
            zero_node = ops.convert(zero, Type.f32)
        node = ops.subtract(node, zero_node)
    node = ops.multiply(node, ops.constant(np.asarray(scale, np.float32).reshape(rows, groups, 1)))
    node = ops.reshape(node, ops.constant(np.array([rows, groups * group], np.int64)), special_zero=False)
    if like.get_element_type() != Type.f32:
        node = ops.convert(node, like.get_element_type())
    return node.output(0)


def u4_constant(packed, shape):
    """A u4 Constant from bytes packed two weights each (low nibble first)."""
    import numpy as np
    import openvino as ov

    tensor = ov.Tensor(np.ascontiguousarray(packed).reshape(-1), list(shape), ov.Type.u4)
    return ov.op.Constant(tensor, shared_memory=False)


# --- the repair ---------------------------------------------------------------------------------------------------


def repair(model, gguf: Path) -> dict[str, int]:
    """Give every tensor of a type the reader rounds its exact scales and zero points (see the module's
    docstring); returns how many tensors of each type were repaired."""
    import numpy as np

    wanted = [t for t in tensor_infos(gguf) if t.ggml_type in REPAIRED]
    if not wanted:
        return {}
    data = np.memmap(gguf, dtype=np.uint8, mode="r")
    index = {_key(DECODE[t.ggml_type](_blocks(data, t)).q): t for t in wanted}
    layouts = {(4, 32), (8, 16)}  # how the reader stores Q4_1 and Q4_K, and Q6_K (bits, weights per group)
    done: dict[str, int] = {}
    for block in blocks(model):
        rows, groups, group = block.shape
        if (block.bits, group) not in layouts:
            continue
        raw = block.raw()
        ints = raw if block.bits == 8 else np.stack([raw & 15, raw >> 4], axis=-1)
        ints = ints.reshape(rows, groups, group)
        info = index.get(_key(ints))
        if info is None:
            continue
        exact = DECODE[info.ggml_type](_blocks(data, info))
        exact = exact.take(_row_order(ints, block.scale_values(), exact))
        _replace(block, ints, exact, info.name)
        done[info.name] = info.ggml_type
    missed = [t for t in wanted if t.name not in done]
    if missed:
        raise ConversionError(
            f"{len(missed)} {type_name(missed[0].ggml_type)} tensors of {gguf.name} (first: {missed[0].name}) were "
            f"not found in the graph OpenVINO's GGUF reader built, so their weights cannot be made exact: {HINT}"
        )
    return dict(Counter(type_name(t) for t in done.values()))


def _key(q) -> tuple:
    """A tensor's identity that survives a reordering of its rows: its shape and the multiset of row digests."""
    import numpy as np

    digests = np.sort(_row_digests(q.reshape(q.shape[0], -1)))
    return (*q.shape, hashlib.sha256(digests.tobytes()).hexdigest())


def _row_order(ir_q, ir_scale, exact: Exact):
    """perm with IR row i = GGUF row perm[i], checked: the same integers, and scales equal within f16 rounding
    (the reader rounds K-quant scales to f16). Rows with the same integers are told apart by their scales."""
    import numpy as np

    rows = ir_q.shape[0]
    ir_digest, digest = _row_digests(ir_q.reshape(rows, -1)), _row_digests(exact.q.reshape(rows, -1))
    perm = np.empty(rows, np.int64)
    perm[np.lexsort((ir_scale.sum(axis=1), ir_digest))] = np.lexsort((exact.scale.sum(axis=1), digest))
    if not np.array_equal(ir_q, exact.q[perm]):
        raise ConversionError("OpenVINO's GGUF reader laid out a tensor's integers in an unexpected order")
    if not np.allclose(ir_scale, exact.scale[perm], rtol=2**-10, atol=0):
        raise ConversionError("the scales OpenVINO's GGUF reader stored differ from the file's beyond f16 rounding")
    return perm


def _replace(block: Block, ints, exact: Exact, name: str) -> None:
    """Point the block's consumers at an exact decompression subgraph."""
    import numpy as np
    import openvino as ov

    if exact.offset is None:  # Q6_K: the reader's integers and zero point are exact, its scale is not
        if not np.all(block.zero_values() == 32):
            raise ConversionError(f"OpenVINO's GGUF reader gave {name} a zero point other than 32")
        weights, scale, zero = block.weights, exact.scale, block.zero
    else:
        q, scale, zero = exact.as_zero_point()
        if np.array_equal(q, ints):
            weights = block.weights
        elif block.bits == 4:
            weights = u4_constant(_pack(q, 4), block.shape)
        else:
            weights = ov.op.Constant(np.ascontiguousarray(q))
    new = decompress(weights, zero, scale, like=block.out)
    new.get_node().set_friendly_name(f"{name}/exact")
    for target in list(block.out.get_target_inputs()):
        target.replace_source_output(new)
