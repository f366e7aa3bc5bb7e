"""The GGUF -> OpenVINO IR conversion the embedded model goes through (run once per session by `model`)."""

import json

from aipc.convert.gguf_openvino import ir_for_gguf
from aipc.store.resolve import resolve


def test_conversion_is_cached_mended_and_recorded(model):
    gguf = resolve(None).path
    folder = ir_for_gguf(gguf, "compressed")
    assert folder == ir_for_gguf(gguf, "compressed")  # cached: the same folder, no second conversion
    manifest = json.loads((folder / "aipc-manifest.json").read_text())
    assert manifest["source_sha256"] and len(manifest["source_sha256"]) == 64
    assert manifest["mended"]["kv_repeat_broadcasts"] == 60  # 30 layers, K and V
    xml = (folder / "openvino_model.xml").read_text()
    assert "valuepresent.0.value" in xml and "valuepresent.0.key" not in xml
    for name in ("openvino_tokenizer.xml", "openvino_detokenizer.xml", ".complete"):
        assert (folder / name).is_file()
    assert not (folder / "raw").exists()
    # The IR is smaller than fp16 would be: the GGUF's 4-bit weights are kept.
    assert (folder / "openvino_model.bin").stat().st_size < 120e6


def test_q4_1_gets_its_exact_zero_points_and_the_cpu_still_runs_compressed_matmuls(model):
    """The reader's rounded Q4_1 zero points are replaced (all 210 tensors), q/k/v and gate/up are merged, and
    the CPU plugin still runs every weight as a compressed int4/int8 FullyConnected: none is unpacked to floats."""
    import openvino as ov

    from aipc.convert.gguf_exact import RECIPE_VERSION

    folder = ir_for_gguf(resolve(None).path, "compressed")
    recipe = json.loads((folder / "aipc-manifest.json").read_text())["recipe"]
    assert recipe["version"] == RECIPE_VERSION
    assert recipe["exact_scales_and_zero_points"] == {"Q4_1": 210}
    assert recipe["merged_matmuls"] == 60  # per layer: q/k/v and gate/up
    core = ov.Core()
    compiled = core.compile_model(core.read_model(folder / "openvino_model.xml"), "CPU")
    layers = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
    fc = [rt["runtimePrecision"].astype(str) for rt in layers if rt["layerType"].astype(str) == "FullyConnected"]
    assert len(fc) == 30 * 4 + 1  # four matmuls per layer (7 before merging) and the LM head
    assert sorted(set(fc)) == ["u4", "u8"]  # the layers' 4-bit weights, the Q8_0 embedding / LM head
