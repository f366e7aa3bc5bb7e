"""Every synthetic Phi-3 fixture into every format and precision, loaded by its backend, generating; and the
real SmolLM2 (in the Phi-3 layout) still answering after int4 conversions."""

from __future__ import annotations

import json

import pytest

import aipc
from aipc.convert.api import convert
from aipc.convert.recipes import PRECISIONS
from aipc.engine.events import Done
from aipc.store import store
from tests.conftest import PARIS_QUESTION

SHAPES = ("tiny", "tiny-longrope", "tiny-phi4")
CASES = [(shape, to, p) for shape in SHAPES for to, ps in PRECISIONS.items() for p in ps]


@pytest.mark.parametrize(("shape", "to", "precision"), CASES, ids=[f"{s}-{t}-{p}" for s, t, p in CASES])
def test_fixture_converts_loads_and_generates(phi3_fixtures, shape, to, precision):
    variant = convert(str(phi3_fixtures[shape]), to, precision, name=f"fx-{shape}")
    assert variant.precision == precision and variant.synthetic
    manifest = variant.manifest
    assert manifest["source"]["sha256"] and manifest["tools"] and manifest["size_bytes"] > 0
    assert all((variant.path / f["path"]).stat().st_size == f["size"] for f in manifest["files"])
    with aipc.load(variant.ref, device="cpu") as model:
        assert model.info.backend == manifest["backend"]
        *_, done = model.stream("Paris is", raw=True, max_tokens=8, temperature=0)
    assert isinstance(done, Done)
    assert done.usage.completion_tokens >= 1 and done.finish_reason in ("length", "stop")


def test_openvino_int4_follows_the_seed_recipe_or_says_why(phi3_fixtures):
    fits = convert(str(phi3_fixtures["tiny"]), "openvino", "int4", name="fx-tiny")  # widths 128/256: fits
    assert fits.manifest["recipe"] == {"weight_format": "int4", "sym": True, "group_size": 128, "ratio": 0.6}
    assert not any("group size" in n for n in fits.manifest["notes"])
    falls_back = convert(str(phi3_fixtures["tiny-longrope"]), "openvino", "int4", name="fx-tiny-longrope")  # 64
    assert falls_back.manifest["recipe"]["group_size"] == 64
    assert any("group size 128 does not divide" in n for n in falls_back.manifest["notes"])


@pytest.mark.npu
def test_npu_target_uses_the_npu_recipe_and_runs_on_the_emulated_npu(phi3_fixtures, monkeypatch):
    variant = convert(str(phi3_fixtures["tiny"]), "openvino", "int4", device_target="npu", name="fx-tiny")
    assert variant.variant == "openvino-int4-npu"
    assert variant.manifest["recipe"]["ratio"] == 1.0 and variant.manifest["recipe"]["sym"] is True
    assert any("NPU recipe" in n for n in variant.manifest["notes"])
    monkeypatch.setenv("AIPC_EMULATE_NPU", "1")
    with aipc.load("fx-tiny", device="npu") as model:
        assert model.info.path == str(variant.path)  # the NPU variant is preferred on the NPU
        assert model.generate("Paris is", raw=True, max_tokens=4, temperature=0) is not None


@pytest.mark.parametrize("provider", ["cuda", "dml"])
def test_gpu_onnx_builds_without_the_device(phi3_fixtures, provider):
    variant = convert(str(phi3_fixtures["tiny"]), "onnx", "int4", device_target=provider, name="fx-tiny")
    genai = json.loads((variant.path / "genai_config.json").read_text())
    assert provider in json.dumps(genai["model"]["decoder"]["session_options"]["provider_options"])
    assert variant.variant == f"onnx-int4-{provider}"


@pytest.mark.parametrize(("to", "precision"), [("openvino", "int4"), ("onnx", "int4"), ("gguf", "q4_0")])
def test_repacked_smollm2_answers_after_conversion(smollm2_phi3, to, precision):
    variant = convert(str(smollm2_phi3), to, precision, name="smollm2-repacked")
    assert variant.manifest["architecture"] == "Phi3ForCausalLM"
    with aipc.load(variant.ref, device="cpu") as model:
        answer = model.generate(PARIS_QUESTION, temperature=0, max_tokens=32)
    assert "Paris" in answer, answer


def test_list_show_and_rm_touch_only_their_model(phi3_fixtures):
    a = convert(str(phi3_fixtures["tiny"]), "onnx", "fp32", name="rm-a")
    b = convert(str(phi3_fixtures["tiny"]), "onnx", "fp32", name="rm-b")
    refs = {v.ref for v in store.list_variants()}
    assert {a.ref, b.ref} <= refs
    removed = store.remove("rm-a")
    assert [v.ref for v in removed] == [a.ref]
    assert not a.path.exists() and b.path.is_dir() and store.find("rm-b")
    assert a.ref not in {v.ref for v in store.list_variants()}
