"""Compressed matmuls that read the same input, merged into one: q/k/v become one matmul, gate/up another.

A decode step of a small model on a CPU spends much of its time per matmul rather than per weight; three
matmuls of 576 outputs cost more than one of 1728. Merging concatenates the weights, scales and zero points along
the output rows (lossless) and splits the result, so the rest of the graph is untouched. Measured on the embedded
SmolLM2 (docs/benchmarks.md): it speeds the reader's own IR by 21%, but not the IR with exact Q4_1 zero points.
"""

from __future__ import annotations

from aipc.convert.gguf_exact import Block, blocks, decompress, u4_constant


def fuse_shared_inputs(model) -> int:
    """Merge the compressed matmuls of `model` that share an input and a weight format; returns how many merged
    matmuls there are now."""
    by_output = {(b.out.get_node().get_instance_id(), b.out.get_index()): b for b in blocks(model)}
    groups: dict[tuple, list] = {}
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        attrs = node.get_attributes()
        if attrs.get("transpose_a") or not attrs.get("transpose_b"):
            continue
        weight = node.input(1).get_source_output()
        block = by_output.get((weight.get_node().get_instance_id(), weight.get_index()))
        if block is None or len(weight.get_target_inputs()) != 1:
            continue  # a weight read elsewhere too (a tied embedding) stays as it is
        x = node.input(0).get_source_output()
        key = (x.get_node().get_instance_id(), x.get_index(), *_format(block))
        groups.setdefault(key, []).append((node, block))
    merged = 0
    for members in groups.values():
        if len(members) > 1:
            _merge(members)
            merged += 1
    if merged:
        model.validate_nodes_and_infer_types()
    return merged


def _format(block: Block) -> tuple:
    """What must be equal for weights to be concatenated: element types, group size, kind of zero point."""
    _, groups, group = block.shape
    zero = "none" if block.zero is None else block.zero.get_output_element_type(0).get_type_name()
    return (
        block.weights.get_output_element_type(0).get_type_name(),
        groups,
        group,
        zero,
        block.out.get_element_type().get_type_name(),
    )


def _merge(members: list) -> None:
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    first_node, first = members[0]
    rows = [b.shape[0] for _, b in members]
    _, groups, group = first.shape
    shape = (sum(rows), groups, group)
    raw = np.concatenate([b.raw() for _, b in members])
    weights = u4_constant(raw, shape) if first.bits == 4 else ov.op.Constant(np.ascontiguousarray(raw.reshape(shape)))
    zero = None
    if first.zero is not None:
        values = np.concatenate([b.zero_values() for _, b in members])
        kind = first.zero.get_output_element_type(0)
        if kind == ov.Type.u4:
            zero = u4_constant(_pack_u4(values.astype(np.uint8).reshape(-1)), (shape[0], groups, 1))
        elif kind == ov.Type.u8:
            zero = ov.op.Constant(values.astype(np.uint8).reshape(shape[0], groups, 1))
        else:
            zero = values  # float zero points (exact Q4_1/Q4_K) stay float32
    scale = np.concatenate([b.scale_values() for _, b in members])
    weight = decompress(weights, zero, scale, like=first.out)
    x = first_node.input(0).get_source_output()
    matmul = ops.matmul(x, weight, transpose_a=False, transpose_b=True)
    matmul.set_friendly_name(first_node.get_friendly_name() + "/merged")
    split = ops.variadic_split(matmul, ops.constant(np.int64(-1)), ops.constant(np.array(rows, np.int64)))
    for i, (node, _) in enumerate(members):
        node.output(0).replace(split.output(i))


def _pack_u4(values):
    """One byte per value -> two per byte, low nibble first (an odd count leaves the last high nibble 0)."""
    import numpy as np

    if len(values) % 2:
        values = np.append(values, np.uint8(0))
    return values[0::2] | (values[1::2] << 4)
