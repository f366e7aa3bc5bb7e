"""GGUF -> OpenVINO IR, cached in the store, in a form every OpenVINO device compiles.

OpenVINO GenAI reads GGUF files directly (its GGUF reader) and can save the graph it builds as IR. Two flaws
in that graph (OpenVINO 2026.4) stop the NPU pipeline from compiling it, and are mended here:

1. Grouped-query attention repeats K/V heads with `Broadcast(kv[:, :, None], [B, kv_heads, rep, 0, head])`.
   The 0 is a sequence length taken from a dynamic dimension; once the NPU pipeline fixes shapes it no
   longer matches. A bidirectional broadcast to `[1, 1, rep, 1, 1]` is the same operation for every shape.
2. The KV-cache state of each value tensor is named `past_key_values.N.valuepresent.N.key`, the same
   output name as the key tensor's, so the NPU pipeline sees duplicate outputs. It becomes `...N.value`.

The NPU variant also folds the int4/int8 decompression into fp16 weights: the NPU partitioner (NPUW) cannot
share one compressed weight between the embedding and a tied LM head.

The reader rounds some quantization types (Q4_1's float minimum becomes an integer zero point); `gguf_exact`
puts the file's exact values back, or refuses a file the reader cannot read, and `ir_fusion` merges the
compressed matmuls that share an input (the compressed variant only).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

from aipc import progress
from aipc.convert.gguf_exact import RECIPE_VERSION
from aipc.convert.sources import sha256
from aipc.errors import ConversionError
from aipc.store import paths
from aipc.store.publish import staged

VARIANTS = ("compressed", "npu")
_VALUE_STATE = re.compile(rb"valuepresent\.(\d+)\.key")


def ir_for_gguf(gguf: Path, variant: str = "compressed") -> Path:
    """The IR folder for `gguf`, converting it once and caching it under the store."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|{RECIPE_VERSION}".encode()).hexdigest()[:16]
    target = paths.home() / "cache" / "gguf-openvino" / f"{gguf.stem}-{key}-{variant}"
    with staged(target) as tmp:
        if tmp is not None:
            what = "OpenVINO IR for the NPU" if variant == "npu" else "OpenVINO IR"
            with progress.step(f"converting {gguf.name} to {what} (first run only)", keep=True):
                _convert(gguf, tmp, fold_weights=variant == "npu")
    return target


def _convert(gguf: Path, out: Path, *, fold_weights: bool, exact: bool = True, merge: bool = True) -> None:
    """The reader's IR of `gguf`, mended, with exact weights and merged matmuls (compressed) or fp16 weights
    (NPU). `exact=False` keeps the reader's rounding and `merge=False` the reader's matmuls: the baselines
    benchmarks/gguf_exact.py measures against."""
    import openvino as ov
    import openvino_genai as ov_genai

    from aipc.convert import gguf_exact, ir_fusion

    started = time.perf_counter()
    if exact:
        gguf_exact.check_readable(gguf)
    raw = out / "raw"
    raw.mkdir()
    link = raw / gguf.name
    try:
        link.symlink_to(gguf.resolve())
    except OSError:
        shutil.copy2(gguf, link)
    try:
        # Building the pipeline makes the GGUF reader save the IR and tokenizers beside the file it read.
        ov_genai.LLMPipeline(str(link), "CPU", enable_save_ov_model=True)
    except RuntimeError as exc:
        raise ConversionError(f"OpenVINO could not read {gguf.name}: {str(exc).strip().splitlines()[-1]}") from None
    model = ov.Core().read_model(raw / "openvino_model.xml")
    repeats = _mend_kv_repeat(model)
    repaired = gguf_exact.repair(model, gguf) if exact else {}
    merged = 0
    if fold_weights:
        _fold_constants(model)
    elif merge:
        merged = ir_fusion.fuse_shared_inputs(model)
    ov.save_model(model, out / "openvino_model.xml", compress_to_fp16=fold_weights)
    xml = out / "openvino_model.xml"
    xml.write_bytes(_VALUE_STATE.sub(rb"valuepresent.\1.value", xml.read_bytes()))
    for f in raw.glob("openvino_*tokenizer.*"):
        shutil.move(str(f), out / f.name)
    shutil.rmtree(raw)
    manifest = {
        "source": str(gguf),
        "source_sha256": sha256(gguf),
        "format": "openvino-ir",
        "recipe": {
            "from": "gguf",
            "version": RECIPE_VERSION if exact else None,
            "weights": "fp16 (folded)" if fold_weights else "as in the GGUF file",
            "exact_scales_and_zero_points": repaired,
            "merged_matmuls": merged,
        },
        "mended": {"kv_repeat_broadcasts": repeats, "value_state_names": True},
        "openvino": ov.get_version(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / "aipc-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _mend_kv_repeat(model) -> int:
    import numpy as np
    from openvino import opset13 as ops

    mended = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Broadcast" or node.get_attributes().get("mode") != "bidirectional":
            continue
        data = node.input(0).get_source_output()
        target = node.input(1).get_source_output().get_node()
        if data.get_node().get_type_name() != "Unsqueeze" or target.get_type_name() != "Concat":
            continue
        if data.get_partial_shape().rank.get_length() != 5 or target.get_input_size() != 5:
            continue
        rep_node = target.input(2).get_source_output().get_node()
        if rep_node.get_type_name() != "Constant":
            continue
        rep = int(rep_node.get_data().reshape(-1)[0])
        fixed = ops.broadcast(
            data, ops.constant(np.array([1, 1, rep, 1, 1], dtype=np.int64)), broadcast_spec="BIDIRECTIONAL"
        )
        fixed.set_friendly_name(node.get_friendly_name())
        node.output(0).replace(fixed.output(0))
        mended += 1
    model.validate_nodes_and_infer_types()
    return mended


def _fold_constants(model) -> None:
    from openvino import passes

    for node in model.get_ordered_ops():
        rt = node.get_rt_info()
        for key in list(rt.keys()):
            if any(k in key.lower() for k in ("decompression", "keep_const_precision", "disable_const_folding")):
                del rt[key]
    manager = passes.Manager()
    manager.register_pass(passes.ConstantFolding())
    manager.run_passes(model)
