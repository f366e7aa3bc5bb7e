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
